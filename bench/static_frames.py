"""What the views allow without motion: single frames of a workspace, each fitted alone, scored.

For a workspace after ``preprocess`` and ``generate`` (the quality table's), each chosen frame is
fitted on its own -- the same views, cameras, losses and settings as ``ds4d fit`` (the CPU
defaults), but one frame, so there is no motion to learn -- and scored like ``ds4d eval``
against the ground truth at that instant (the moving-pixel mask still comes from the whole
clip). Pooled over the frames, this is the ceiling the views themselves put on a figure: a
dynamic fit cannot be expected to beat, on novel views, a static fit of each of its frames.

Measured for the README (windmill, frame 6, six zpp views): the training views reach about
40 dB, the held-out ring 29.5 dB (20.6 dB on its moving pixels); 3000 steps instead of 1000
raise the training views to 42 dB and lower the held-out ring to 29.1 -- seven views of a thin,
textured object are fitted, not generalised from.

    python bench/static_frames.py WORKSPACE --gt ../shared/examples/windmill [--frames 2,8,14,20]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from example_views import HO  # noqa: E402

FRAMES = "2,8,14,20"  # spread over a 24-frame clip, away from its ends


def fit_frame(data: Any, opts: Any, frame: int, seed: int = 0) -> Any:
    """A FittedModel of one frame of the fit ``data``, fitted alone with the resolved fit ``opts``."""
    import torch

    from ds4d_cli.fitted import FittedModel
    from ds4d_cli.model.trainer import FitData, Trainer
    from ds4d_cli.stages.fit import train_config

    one = FitData(data.images[frame : frame + 1], data.viewmats, data.Ks, data.frame_times[frame : frame + 1],
                  data.view_weights)
    torch.manual_seed(seed)
    trainer = Trainer(one, train_config(opts), device="cpu")
    trainer.train()
    return FittedModel(dict(trainer.bake(), sh_degree=trainer.cfg.sh_degree, resolution=int(opts.resolution)))


def pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-frame ``evaluate_model`` results pooled like ``ds4d eval`` pools frames: PSNR/SSIM means
    over frames and views, moving-pixel error summed over frames (each view's mask is the clip's)."""
    from ds4d_cli.metrics import psnr_from_mse

    def role(name: str) -> dict[str, Any]:
        rows = [r for res in results for r in res["views"] if (r["view"] == "input") == (name == "input")]
        sq = sum(10 ** (-r["masked_psnr"] / 10) * r["moving_fraction"] for r in rows if r["masked_psnr"] is not None)
        count = sum(r["moving_fraction"] for r in rows if r["masked_psnr"] is not None)
        return {"psnr": float(np.mean([r["psnr"] for r in rows])), "ssim": float(np.mean([r["ssim"] for r in rows])),
                "moving": psnr_from_mse(sq / count) if count else None}

    inp, held = role("input"), role("held-out")
    return {"input_psnr": inp["psnr"], "input_moving": inp["moving"], "held_psnr": held["psnr"],
            "held_ssim": held["ssim"], "held_moving": held["moving"]}


def static_reference(ws_path: Path, gt: Path, frames: list[int], seed: int = 0,
                     held_out: Optional[list[str]] = None) -> dict[str, Any]:
    """Every chosen frame fitted alone and scored on the input view and ``held_out`` (the ring)."""
    import torch

    from ds4d_cli.stages.evaluate import load_gt, evaluate_model, object_sphere
    from ds4d_cli.stages.fit import FitOptions, fit_resolution, load_fit_data, resolve_options
    from ds4d_cli.workspace import Workspace

    torch.set_num_threads(1)  # as the fit stage runs on the CPU
    ws = Workspace(ws_path)
    opts = resolve_options(fit_resolution(ws, FitOptions(seed=seed, device="cpu")))
    data, _ = load_fit_data(ws, opts)  # once: every frame is a slice of it
    views, times = load_gt(gt, ["input", *(held_out or HO)])
    sphere = object_sphere(load_gt(gt, None)[0])
    results = []
    for k in frames:
        model = fit_frame(data, opts, k, seed)
        results.append(evaluate_model(model, views, times, (1.0, 1.0, 1.0), {"input"}, sphere))
    return {**pooled(results), "frames": frames}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace")
    ap.add_argument("--gt", required=True, help="the clean case folder (cameras.json, gt/<view>/, input/)")
    ap.add_argument("--frames", default=FRAMES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--views", default=",".join(HO), help="held-out views to score (default the ho_* ring)")
    args = ap.parse_args(argv)
    frames = [int(f) for f in args.frames.split(",") if f]
    held_out = [v for v in args.views.split(",") if v]
    print(json.dumps(static_reference(Path(args.workspace), Path(args.gt), frames, args.seed, held_out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
