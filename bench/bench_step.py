"""The default fit step, split into its parts, against the cost of its own batched renders.

Builds the workspace a user gets from ``preprocess`` + ``generate --prior import CASE --views
<the six zpp views>`` (24 frames x 7 views, written directly from the example's frames), creates
the trainer at the CPU defaults and times the steps of the fit's middle (after the static stage
and the first densifications, so the Gaussian count is what most steps see). Each part is
the wall time between stamps in ``Trainer.step`` (``StepTimer``). Then the same step's renders
alone -- one batched call over (frames x views) cameras with the trainer's current Gaussians,
forward and backward of a sum over rgb and alpha -- are timed, and the ratio step / renders is
printed: what the step costs beyond the rasterizer.

    python bench/bench_step.py            # windmill
    python bench/bench_step.py --case flapper --steps 60
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from example_views import ZPP  # noqa: E402


def build_trainer(case: str, work: Path):
    import torch

    from fit_workspace import build_workspace
    from ds4d_cli.model.trainer import Trainer
    from ds4d_cli.stages.fit import FitOptions, load_fit_data, resolve_options, train_config

    from ds4d_cli.allocator import retain_freed_memory

    torch.set_num_threads(1)  # as the fit stage runs on the CPU
    retain_freed_memory()  # as the fit stage does
    ws = build_workspace(work / "ws", REPO.parent / "shared" / "examples" / case, ZPP, list(range(24)))
    opts = resolve_options(FitOptions(device="cpu"))
    data, _ = load_fit_data(ws, opts)
    return Trainer(data, train_config(opts)), opts


def render_only_seconds(trainer, repeats: int = 10) -> float:
    """Median seconds of forward+backward of one batched render shaped like a step's."""
    import torch

    frames = trainer._pick_frames()
    views, _ = trainer._pick_views()
    with torch.no_grad():
        d = trainer._canonical() if trainer.in_static_stage else trainer.deformed(frames)
    means = d.means.detach().requires_grad_(True)
    quats = d.quats.detach().requires_grad_(True)
    scales = d.scales.detach().requires_grad_(True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = trainer.render_batch(means, quats, scales, trainer.data.viewmats[views], trainer.data.Ks[views])
        (out.rgb.sum() + out.alpha.sum()).backward()
        times.append(time.perf_counter() - t0)
        for p in (means, quats, scales, *trainer.gaussians.params.values()):
            p.grad = None
    return statistics.median(times)


def measure(case: str = "windmill", steps: int = 40) -> dict[str, Any]:
    from ds4d_cli.model.trainer import StepTimer

    with tempfile.TemporaryDirectory(prefix="ds4d-step-") as tmp:
        trainer, opts = build_trainer(case, Path(tmp))
        # skip to the middle of the fit: past the static stage and the first densifications
        start = max(int(trainer.cfg.static_fraction * trainer.cfg.steps) + 1, 2 * trainer.cfg.densify_every + 1)
        while trainer.step_count < start:
            trainer.step()
        trainer.timer = StepTimer()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        step_s = (time.perf_counter() - t0) / steps
        parts = trainer.timer.per_step_ms()
        renders = render_only_seconds(trainer)
        return {"case": case, "step_s": step_s, "render_fb_s": renders, "ratio": step_s / renders, "parts_ms": parts,
                "gaussians": trainer.gaussians.num_gaussians, "cameras": trainer.cfg.batch_frames * trainer.views_per_step,
                "resolution": opts.resolution}


def table(m: dict[str, Any]) -> str:
    lines = [f"default fit step ({m['case']}, {m['cameras']} cameras x {m['resolution']} px, "
             f"{m['gaussians']} Gaussians)", "| part | ms/step | share |", "|---|---|---|"]
    total = sum(m["parts_ms"].values())
    for k, v in sorted(m["parts_ms"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v:.1f} | {100 * v / total:.0f}% |")
    lines.append(f"| **step** | **{1000 * m['step_s']:.1f}** | |")
    lines.append(f"| its renders alone, forward+backward | {1000 * m['render_fb_s']:.1f} | |")
    lines.append(f"| **step / renders** | **{m['ratio']:.2f}x** | |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="windmill")
    ap.add_argument("--steps", type=int, default=40)
    a = ap.parse_args()
    print(table(measure(a.case, a.steps)))
