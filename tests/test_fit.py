"""`ds4d fit` on the windmill example imported as oracle views (input + az090 + az270 trained,
az180 and az045_el30 held out): measured PSNR, the ablation, resume after SIGKILL, and the
pieces the loop relies on (opacity reset, densification bookkeeping, init, encoder errors).

PSNR is over all frames of the fit, on RGB composited over white, at the fit resolution.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ds4d_cli.errors import MissingWeightsError
from ds4d_cli.metrics import moving_mask
from ds4d_cli.workspace import Workspace

sys.path.insert(0, str(Path(__file__).parent))
from fit_workspace import build_workspace, camera, ground_truth  # noqa: E402

FRAMES = list(range(0, 24, 3))  # 8 of the 24 frames
TRAIN_VIEWS = ["az090", "az270"]
HELD_OUT = ["az180", "az045_el30"]
RES = 64
STEPS = 500


def _opts(**kw):
    from ds4d_cli.stages.fit import FitOptions

    base = dict(steps=STEPS, resolution=RES, device="cpu", checkpoint_every=100, preview_every=250, seed=0)
    base.update(kw)
    return FitOptions(**base)


def _measure(ws: Workspace, case: Path) -> dict[str, dict[str, float]]:
    """PSNR (all pixels) and PSNR on moving pixels (pooled over frames) per view."""
    from ds4d_cli.fitted import load_fitted

    model = load_fitted(ws)
    assert model.num_frames == len(FRAMES)
    out = {}
    for view in ["input", *TRAIN_VIEWS, *HELD_OUT]:
        vm, K = camera(case, view, RES)
        gt = ground_truth(case, view, FRAMES, RES)
        pred = torch.stack([model.render(i, vm, K, RES, RES, background=torch.ones(3)).rgb[0] for i in range(len(FRAMES))])
        err = (pred.clamp(0, 1) - gt).pow(2)
        mov = moving_mask(gt)
        out[view] = {"psnr": -10 * math.log10(float(err.mean())),
                     "moving": -10 * math.log10(float(err[:, mov].mean())) if mov.any() else float("nan")}
    return out


def _fit(root: Path, case: Path, **kw):
    from ds4d_cli.stages import fit

    ws = build_workspace(root, case, TRAIN_VIEWS, FRAMES)
    t0 = time.perf_counter()
    result = fit.run(ws, _opts(**kw))
    return ws, result, time.perf_counter() - t0


@pytest.fixture(scope="module")
def full_fit(tmp_path_factory, windmill_dir):
    ws, result, secs = _fit(tmp_path_factory.mktemp("fit_full"), windmill_dir)
    return ws, result, _measure(ws, windmill_dir), secs


@pytest.fixture(scope="module")
def ablation_fit(tmp_path_factory, windmill_dir):
    ws, result, secs = _fit(tmp_path_factory.mktemp("fit_ablation"), windmill_dir, no_dsfd=True, no_tssf=True)
    return ws, result, _measure(ws, windmill_dir), secs


@pytest.mark.slow
def test_input_and_held_out_views_reach_quality_bar(full_fit):
    ws, result, m, secs = full_fit
    print(f"\nfull fit ({secs:.0f}s, {result.summary['seconds_per_step']}s/step, {result.summary['gaussians']} Gaussians):",
          json.dumps({k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in m.items()}))
    assert m["input"]["psnr"] >= 24.0
    for view in HELD_OUT:
        assert m[view]["psnr"] >= 20.0, view
    # the training-view figures the stage reports match an independent render through load_fitted
    assert abs(result.summary["psnr"]["input"] - m["input"]["psnr"]) < 0.5


def _frozen_reference(case: Path) -> dict[str, dict[str, float]]:
    """Each view's middle ground-truth frame shown at every time: perfect shape, no motion at all."""
    out = {}
    for view in ["input", *TRAIN_VIEWS, *HELD_OUT]:
        gt = ground_truth(case, view, FRAMES, RES)
        err = (gt[len(FRAMES) // 2].expand_as(gt) - gt).pow(2)
        mov = moving_mask(gt)
        out[view] = {"psnr": -10 * math.log10(float(err.mean())), "moving": -10 * math.log10(float(err[:, mov].mean()))}
    return out


@pytest.mark.slow
def test_fit_moves_clearly_above_the_frozen_ground_truth(full_fit, windmill_dir):
    """A fit that learnt the shape but not the motion would score like the frozen truth on moving
    pixels; the fitted motion must be clearly better there, on the input and the held-out views."""
    _, _, m, _ = full_fit
    frozen = _frozen_reference(windmill_dir)
    print("\nmoving-pixel PSNR fit vs frozen truth:",
          {v: (round(m[v]["moving"], 2), round(frozen[v]["moving"], 2)) for v in m})
    assert m["input"]["moving"] >= frozen["input"]["moving"] + 6.0  # measured: 30.1 vs 14.0
    # Held out, measured: az180 16.5 vs 12.5, but az045_el30 16.6 vs 16.4 -- from above, with only
    # two side views to learn from, the blades' motion is no better than none (README, sharp motion).
    assert m["az180"]["moving"] >= frozen["az180"]["moving"] + 2.5
    held = lambda r: sum(r[v]["moving"] for v in HELD_OUT) / len(HELD_OUT)  # noqa: E731
    assert held(m) >= held(frozen) + 1.5


@pytest.mark.slow
def test_eval_ranks_training_above_held_out_and_matches_direct_psnr(full_fit, windmill_dir):
    """`ds4d eval` on a model fitted to oracle views: train > held-out, and its figures are a plain PSNR."""
    from ds4d_cli.stages import evaluate

    ws, _, _, _ = full_fit
    results = evaluate.run(ws, evaluate.EvalOptions(gt=str(windmill_dir), views=["input", *TRAIN_VIEWS, *HELD_OUT]))
    roles = {r["view"]: r["role"] for r in results["views"]}
    assert roles == {"input": "train", "az090": "train", "az270": "train", "az180": "held-out", "az045_el30": "held-out"}
    # rendered at the ground truth's 256 px from a 64 px fit, so both are lower than at the fit resolution
    assert results["train"]["psnr"] > results["held_out"]["psnr"] + 1.0

    from ds4d_cli.fitted import load_fitted

    model, size = load_fitted(ws), 256
    for row in results["views"]:
        vm, K = camera(windmill_dir, row["view"], size)
        gt = ground_truth(windmill_dir, row["view"], FRAMES, size)
        per_frame = [
            -10 * math.log10(float((model.render(i, vm, K, size, size, background=torch.ones(3)).rgb[0].clamp(0, 1)
                                     - gt[i]).pow(2).mean()))
            for i in range(len(FRAMES))
        ]
        assert row["frames"] == len(FRAMES)
        assert abs(row["psnr"] - sum(per_frame) / len(per_frame)) < 0.05, row["view"]


@pytest.mark.slow
def test_dsfd_tssf_not_worse_than_ablation_on_moving_pixels(full_fit, ablation_fit):
    _, _, full, _ = full_fit
    ws_a, result_a, abl, _ = ablation_fit
    print(f"\nmoving-pixel PSNR full vs ablation: input {full['input']['moving']:.2f} vs {abl['input']['moving']:.2f}; "
          f"held-out {[round(full[v]['moving'], 2) for v in HELD_OUT]} vs {[round(abl[v]['moving'], 2) for v in HELD_OUT]}")
    manifest = ws_a.read_manifest("fit")
    assert manifest["options"]["no_dsfd"] is True and manifest["options"]["no_tssf"] is True
    assert result_a.summary["ablations"] == {"dsfd": False, "tssf": False, "fusion": "mean"}
    # "Not worse" within run-to-run noise. Measured spread between seeds of one variant at this
    # budget: about 1 dB on the input view's moving pixels, about 0.5 dB pooled over the 5 views.
    # Pooled (mean of the per-view moving-pixel PSNRs over input, training and held-out views) is
    # the primary figure; the input view alone gets the wider band.
    views = ["input", *TRAIN_VIEWS, *HELD_OUT]
    pooled = lambda m: sum(m[v]["moving"] for v in views) / len(views)  # noqa: E731
    print(f"pooled moving-pixel PSNR: full {pooled(full):.2f} vs ablation {pooled(abl):.2f}")
    assert pooled(full) >= pooled(abl) - 0.5
    assert full["input"]["moving"] >= abl["input"]["moving"] - 1.0


@pytest.mark.slow
def test_outputs_manifest_and_cache(full_fit):
    from ds4d_cli.stages import fit

    ws, result, _, _ = full_fit
    d = ws.stage_dir("fit")
    manifest = ws.read_manifest("fit")
    assert manifest["options"]["no_dsfd"] is False and manifest["options"]["fusion"] == "da"
    assert result.summary["ablations"] == {"dsfd": True, "tssf": True, "fusion": "da"}
    assert result.summary["steps"] == STEPS and result.summary["init"] == "visual_hull"
    lines = [json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == STEPS and all(math.isfinite(x["loss"]) for x in lines)
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert sorted(p.name for p in (d / "previews").glob("*.png")) == ["step_000250.png", "step_000500.png"]
    assert (d / "checkpoints" / "latest.pt").is_file()
    # same command again: cached, nothing recomputed
    again = fit.run(ws, _opts())
    assert again.cached and again.summary == result.summary
    # the loaded model's raw layout, as export expects it
    from ds4d_cli.fitted import load_fitted

    g = load_fitted(ws).gaussians_at(0)
    n = g["means"].shape[0]
    assert g["quats"].shape == (n, 4) and g["scales"].shape == (n, 3) and g["opacities"].shape == (n,)
    assert g["sh0"].shape == (n, 1, 3) and torch.isfinite(g["means"]).all()
    assert torch.allclose(g["quats"].norm(dim=-1), torch.ones(n), atol=1e-4)


_CHILD = """
import sys
sys.path.insert(0, {repo!r})
from ds4d_cli.stages import fit
from ds4d_cli.workspace import Workspace
fit.run(Workspace.open({ws!r}), fit.FitOptions(steps={steps}, resolution=32, device="cpu", checkpoint_every=10,
        preview_every=0, num_gaussians=500, seed=1))
"""


@pytest.mark.slow
def test_sigkilled_fit_resumes_from_last_checkpoint(tmp_path, windmill_dir):
    from ds4d_cli.stages import fit

    steps = 60
    ws = build_workspace(tmp_path / "ws", windmill_dir, TRAIN_VIEWS, FRAMES[:4])
    from ds4d_cli.checkpoints import Checkpoints

    store = Checkpoints(ws.stage_dir("fit") / "checkpoints")

    def newest_step() -> int:
        """The step the fit would resume from (latest.pt, or previous.pt when the kill landed between
        a save's two renames), -1 for none yet; the polling may race a save too."""
        try:
            state = store.load()
        except (FileNotFoundError, EOFError, RuntimeError):
            return -1
        return -1 if state is None else int(state["step"])

    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", _CHILD.format(repo=repo, ws=str(ws.root), steps=steps)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if newest_step() >= 20:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = newest_step()
    assert 20 <= killed_at < steps
    assert ws.read_manifest("fit") is None  # a killed fit never looks done
    result = fit.run(ws, fit.FitOptions(steps=steps, resolution=32, device="cpu", checkpoint_every=10,
                                        preview_every=0, num_gaussians=500, seed=1))
    assert result.summary["resumed_from"] == killed_at
    assert result.summary["steps"] == steps
    assert ws.read_manifest("fit") is not None
    log = [json.loads(x)["step"] for x in (ws.stage_dir("fit") / "log.jsonl").read_text().splitlines()]
    assert log[-1] == steps
    # restart=True ignores the checkpoint
    again = fit.run(ws, fit.FitOptions(steps=steps, resolution=32, device="cpu", checkpoint_every=0,
                                       preview_every=0, num_gaussians=500, seed=1, restart=True, log_every=1000))
    assert again.summary["resumed_from"] == 0 and not again.cached


# ----------------------------------------------------------------------------- loop pieces
def _small_trainer(windmill_dir, tmp_path, backbone=None, **cfg):
    from ds4d_cli.model.trainer import Trainer
    from ds4d_cli.stages.fit import FitOptions, load_fit_data, resolve_options, train_config

    ws = build_workspace(tmp_path / "ws", windmill_dir, TRAIN_VIEWS, FRAMES[:3], size=64)
    o = resolve_options(FitOptions(resolution=32, device="cpu", num_gaussians=400, steps=cfg.pop("steps", 20)))
    data, _ = load_fit_data(ws, o)
    c = train_config(o)
    for k, v in cfg.items():
        setattr(c, k, v)
    return Trainer(data, c, backbone=backbone)


def test_opacity_reset_happens(windmill_dir, tmp_path):
    """gsplat 1.5.3's DefaultStrategy never resets opacities; our loop must."""
    tr = _small_trainer(windmill_dir, tmp_path, opacity_reset_every=5, densify=False, steps=12)
    for _ in range(4):
        tr.step()
    assert torch.sigmoid(tr.gaussians.params["opacities"]).max() > 0.1
    tr.step()  # step 5
    assert tr.opacity_resets == [5]
    assert torch.sigmoid(tr.gaussians.params["opacities"]).max() <= tr.cfg.prune_opacity * 2 + 1e-6
    assert tr.optimizers["opacities"].state[tr.gaussians.params["opacities"]]["exp_avg"].abs().max() == 0


def test_densify_keeps_parameters_optimizers_and_caches_in_step(windmill_dir, tmp_path):
    tr = _small_trainer(windmill_dir, tmp_path, grow_grad2d=1e-9, densify_from=3, densify_every=3, steps=10)
    n0 = tr.gaussians.num_gaussians
    for _ in range(3):
        tr.step()
    n1 = tr.gaussians.num_gaussians
    assert n1 > n0
    for k, p in tr.gaussians.params.items():
        assert p.shape[0] == n1
        assert tr.optimizers[k].param_groups[0]["params"][0] is p
        if p.numel():  # shN is [N, 0, 3] at SH degree 0: never has optimizer state
            assert tr.optimizers[k].state[p]["exp_avg"].shape == p.shape
    tr.step()  # per-Gaussian caches (visibility) follow the new count
    assert tr._vis.shape[1] == tr.gaussians.num_gaussians
    bake = tr.bake()
    assert bake["means"].shape == (3, tr.gaussians.num_gaussians, 3)


def test_visual_hull_init_and_fallback(windmill_dir, tmp_path):
    from ds4d_cli.model.init import init_points
    from ds4d_cli.stages.fit import FitOptions, load_fit_data, resolve_options

    ws = build_workspace(tmp_path / "ws", windmill_dir, TRAIN_VIEWS, FRAMES[:1], size=128)
    data, _ = load_fit_data(ws, resolve_options(FitOptions(resolution=64)))
    pts = init_points(data.images[0], data.viewmats, data.Ks, 1000)
    assert pts.method == "visual_hull"
    # the windmill fits in a 1.1 box centred at the origin; the hull is a superset but close
    assert pts.means.abs().max() < 0.75 and pts.means[:, 2].max() - pts.means[:, 2].min() > 0.8
    empty = data.images[0].clone()
    empty[..., 3] = 0
    ball = init_points(empty, data.viewmats, data.Ks, 1000)
    assert ball.method == "random_ball" and ball.means.norm(dim=-1).max() <= 0.5 + 1e-6


def test_missing_encoder_weights_is_a_user_error(tmp_path):
    from ds4d_cli.encoder_weights import load_dinov2
    from ds4d_cli.model.features import ConvEncoder, build_encoder

    with pytest.raises(MissingWeightsError, match="no DINOv2 weights"):
        load_dinov2(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match="could not load the encoder weights"):
        load_dinov2(tmp_path / "broken")
    enc = build_encoder(None, out_dim=8)
    assert isinstance(enc, ConvEncoder) and enc(torch.rand(2, 32, 32, 4)).shape == (2, 8, 8, 8)


def test_pretrained_encoder_path_is_frozen_and_cached(windmill_dir, tmp_path):
    """A local DINOv2 folder (here a tiny random one saved with save_pretrained) drives the features."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=56)
    from ds4d_cli.encoder_weights import load_dinov2

    Dinov2Model(cfg).save_pretrained(tmp_path / "dino")
    tr = _small_trainer(windmill_dir, tmp_path, backbone=load_dinov2(tmp_path / "dino"), densify=False, steps=3)
    assert not any(g["name"] == "encoder" for g in tr.net_opt.param_groups)
    tr.step()
    T, V = tr.data.num_frames, tr.data.num_views
    assert tr._feat_cache.shape[:3] == (T, V, 32)
    cache = tr._feat_cache
    tr.step()
    assert tr._feat_cache is cache  # computed once per clip
    assert tr.deform.join.in_features == 2 * 32 + tr.deform.hexplane.out_dim  # concat(f, D) + HexPlane


def test_stage_refuses_missing_encoder_and_bad_options(tmp_path, windmill_dir):
    from ds4d_cli.errors import Ds4dError
    from ds4d_cli.stages import fit
    from ds4d_cli.stages.fit import DEVICE_DEFAULTS, FitOptions, resolve_options

    ws = build_workspace(tmp_path / "ws", windmill_dir, TRAIN_VIEWS, FRAMES[:1], size=32)
    with pytest.raises(MissingWeightsError, match="no DINOv2 weights"):
        fit.run(ws, FitOptions(encoder=str(tmp_path / "dinov2-small"), device="cpu"))
    assert not ws.stage_dir("fit").exists()  # refused before the workspace was touched
    with pytest.raises(Ds4dError, match="unknown fusion"):
        resolve_options(FitOptions(fusion="max"))
    with pytest.raises(Ds4dError, match="steps"):
        resolve_options(FitOptions(steps=0))
    o = resolve_options(FitOptions(device="cpu"))
    assert (o.steps, o.resolution, o.batch_frames, o.views_per_step, o.num_gaussians) == (1500, 256, 4, 4, 2000)
    assert all(getattr(o, k) == cpu for k, (cpu, _) in DEVICE_DEFAULTS.items())
    # the default resolution never upsamples the frames (here 32 px); a resolution asked for is kept
    assert fit.fit_resolution(ws, FitOptions(device="cpu")).resolution == 32
    assert fit.fit_resolution(ws, FitOptions(device="cpu", resolution=64)).resolution == 64
    assert resolve_options(FitOptions(no_tssf=True)).fusion == "mean"


def test_single_view_hull_is_bounded(windmill_dir, tmp_path):
    from ds4d_cli.model.init import init_points
    from ds4d_cli.stages.fit import FitOptions, load_fit_data, resolve_options

    ws = build_workspace(tmp_path / "ws", windmill_dir, [], FRAMES[:1], size=64)
    data, names = load_fit_data(ws, resolve_options(FitOptions(resolution=64)))
    assert names == ["input"] and data.num_views == 1
    pts = init_points(data.images[0], data.viewmats, data.Ks, 500)
    assert pts.method == "visual_hull" and pts.means.norm(dim=-1).max() < 0.65


def test_hull_tolerates_one_inconsistent_generated_view(windmill_dir, tmp_path):
    """Six generated views, one of them wrong (empty mask): carving must not collapse to the ball."""
    from ds4d_cli.model.init import carve

    views = ["az090", "az180", "az270", "az045_el30", "az090", "az270"]
    from ds4d_cli.stages.fit import FitOptions, load_fit_data, resolve_options

    ws = build_workspace(tmp_path / "ws", windmill_dir, views, FRAMES[:1], size=64)
    data, _ = load_fit_data(ws, resolve_options(FitOptions(resolution=64)))
    alphas = data.images[0][..., 3].clone()
    good = carve(alphas, data.viewmats, data.Ks).sum()
    alphas[3] = 0  # one generated view lost the object
    bad = carve(alphas, data.viewmats, data.Ks).sum()
    assert good > 500 and bad > 0.8 * good  # strict carving would leave nothing
    alphas[0] = 0  # but the input view is always trusted
    assert carve(alphas, data.viewmats, data.Ks).sum() == 0


def test_gaussians_outside_the_input_crop_are_pruned(windmill_dir, tmp_path):
    """The input view holds every silhouette: a Gaussian whose centre projects outside it (or
    behind its camera) is a floater that eval's full-frame input view would show. The loop removes
    it at the next densification point, keeping parameters and optimiser state in step."""
    from torch import nn

    tr = _small_trainer(windmill_dir, tmp_path, densify=False, densify_every=3, steps=10)
    assert not tr.outside_input().any()  # the hull init lies inside the input view
    floaters = torch.tensor([[1.5, 0.0, 0.0], [0.0, -2.6, 0.0]])  # off to the side; behind the camera
    g = tr.gaussians.params
    extra = {"means": floaters}
    for k, p in list(g.items()):
        new = nn.Parameter(torch.cat([p.detach(), extra.get(k, p.detach()[:2])]))
        g[k] = new
        tr.optimizers[k].param_groups[0]["params"] = [new]
    n0 = tr.gaussians.num_gaussians
    assert tr.outside_input()[-2:].all()
    for _ in range(3):
        tr.step()
    n = tr.gaussians.num_gaussians
    assert n <= n0 - 2 and n >= 0.9 * n0
    assert torch.cdist(floaters, tr.gaussians.params["means"].detach()).min() > 0.3
    assert not tr.outside_input().any()
    for k, p in tr.gaussians.params.items():
        assert p.shape[0] == n and tr.optimizers[k].param_groups[0]["params"][0] is p
        if p.numel():
            assert tr.optimizers[k].state[p]["exp_avg"].shape == p.shape
    tr.step()
    assert tr._vis.shape[1] == n
