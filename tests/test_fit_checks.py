"""The fit stage's safety nets: a corrupt latest checkpoint falls back to the previous one, a fit
that learnt nothing says so, and the summary records what the trainer ran."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ds4d_cli import report
from ds4d_cli.stages import fit
from ds4d_cli.stages.fit import FitOptions

sys.path.insert(0, str(Path(__file__).parent))
from fit_workspace import build_workspace  # noqa: E402

TINY = dict(resolution=32, device="cpu", num_gaussians=300, preview_every=0, seed=3)


def _ws(tmp_path: Path, windmill_dir: Path):
    return build_workspace(tmp_path / "ws", windmill_dir, ["az090"], [0, 6, 12], size=32)


def test_truncated_latest_checkpoint_resumes_from_the_previous_one(tmp_path: Path, windmill_dir: Path) -> None:
    ws = _ws(tmp_path, windmill_dir)
    opts = FitOptions(steps=12, checkpoint_every=4, **TINY)
    first = fit.run(ws, opts)
    ckpt = ws.stage_dir("fit") / "checkpoints"
    assert torch.load(ckpt / "latest.pt", weights_only=False)["step"] == 12
    assert torch.load(ckpt / "previous.pt", weights_only=False)["step"] == 8  # the one saved before it
    # as if the process died right after the last save and the file was then cut short
    ws.invalidate("fit")
    data = (ckpt / "latest.pt").read_bytes()
    (ckpt / "latest.pt").write_bytes(data[: len(data) // 3])
    rec = report.Recorder()
    with report.using(rec):
        again = fit.run(ws, opts)
    assert [w for w in rec.warnings() if "latest.pt is unreadable" in w and "falling back to previous.pt" in w]
    assert again.summary["resumed_from"] == 8 and again.summary["steps"] == 12  # lost one interval only
    assert first.summary["resumed_from"] == 0
    assert torch.load(ckpt / "latest.pt", weights_only=False)["step"] == 12


def test_both_checkpoints_unreadable_starts_over(tmp_path: Path, windmill_dir: Path) -> None:
    ws = _ws(tmp_path, windmill_dir)
    opts = FitOptions(steps=4, checkpoint_every=2, **TINY)
    fit.run(ws, opts)
    ws.invalidate("fit")
    for name in ("latest.pt", "previous.pt"):
        (ws.stage_dir("fit") / "checkpoints" / name).write_bytes(b"garbage")
    rec = report.Recorder()
    with report.using(rec):
        again = fit.run(ws, opts)
    assert again.summary["resumed_from"] == 0 and len(rec.warnings()) >= 2


def test_a_fit_that_learnt_nothing_says_so(tmp_path: Path, windmill_dir: Path) -> None:
    """Learning rates x1e-3: the input view stays near its start, below an empty render + 6 dB."""
    ws = _ws(tmp_path, windmill_dir)
    rec = report.Recorder()
    with report.using(rec):
        result = fit.run(ws, FitOptions(steps=3, lr=1e-3, checkpoint_every=0, **TINY))
    s = result.summary
    assert s["psnr"]["input"] < s["psnr_input_blank"] + fit.MIN_GAIN_OVER_BLANK_DB
    assert len(s["warnings"]) == 1 and "learnt (almost) nothing" in s["warnings"][0]
    done = [e for e in rec.events if isinstance(e, report.StageDone)]
    assert done[-1].summary["warnings"] == s["warnings"]  # renderers show it with the result
    cached = fit.run(ws, FitOptions(steps=3, lr=1e-3, checkpoint_every=0, **TINY))
    assert cached.cached and cached.summary == s  # the same summary (warnings included) on a cached rerun


def test_learnt_nothing_threshold() -> None:
    assert fit.learnt_nothing(29.3, 14.2) is None  # the windmill after 300 steps
    assert fit.learnt_nothing(22.7, 14.2) is None  # after 50 steps
    assert "learnt (almost) nothing" in fit.learnt_nothing(12.4, 14.2)  # after 1 step
    assert fit.learnt_nothing(14.2 + fit.MIN_GAIN_OVER_BLANK_DB - 0.1, 14.2) is not None


def test_summary_records_what_the_trainer_ran(tmp_path: Path, windmill_dir: Path, monkeypatch) -> None:
    """Options say DSFD on and fusion da; the trainer is built with DSFD off and mean fusion: the
    summary must say what ran."""
    real = fit.train_config

    def altered(o):
        cfg = real(o)
        cfg.use_dsfd, cfg.fusion = False, "mean"
        return cfg

    monkeypatch.setattr(fit, "train_config", altered)
    ws = _ws(tmp_path, windmill_dir)
    s = fit.run(ws, FitOptions(steps=2, checkpoint_every=0, **TINY)).summary
    assert s["ablations"] == {"dsfd": False, "tssf": False, "fusion": "mean"}
    assert s["train_config"]["use_dsfd"] is False and s["train_config"]["steps"] == 2
    assert s["encoder"] == "conv (joint)"
    assert ws.read_manifest("fit")["options"]["no_dsfd"] is False  # the options as given stay in "options"
