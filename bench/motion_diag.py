"""Where a fit loses motion: per-frame error of the input view, overall and on moving pixels.

For a fitted workspace, renders the input camera at every frame with the fitted model and compares
it with the preprocessed frame the fit trained on (over white, at the fit's resolution). Prints one
row per frame (PSNR, moving-pixel PSNR, moving sharpness) and writes an error strip image: for the
best, the median and the worst frame, [truth | render | 3x absolute error].

    python bench/motion_diag.py WORKSPACE [--out strip.png]

It also says whether the Gaussians follow the motion or fade: for the Gaussians that move
(largest distance from their middle-frame position > 5% of the object's size) against the
others, the median largest travel and the median largest change of log-volume (sum of the three
log-scales) from the middle frame. A part that is followed travels with little volume change; a
faded one shows a large volume change (Gaussians shrunk to nothing where the part is not).

Used for the sharp-motion diagnosis in the README: on the windmill the fit is good at the middle
frame and at multiples of the rotor's quarter turn, and loses the blades in between.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def per_frame(ws: Any, model: Any) -> tuple[list[dict[str, Any]], list[torch.Tensor]]:
    """Figures per frame and the [truth | render | error] rows of every frame, for the fitted
    ``model`` of workspace ``ws``."""
    from ds4d_cli import metrics
    from ds4d_cli.model.losses import composite
    from ds4d_cli.stages.fit import FitOptions, load_fit_data, resolve_options

    opts = resolve_options(FitOptions(device="cpu", resolution=int(model.resolution)))
    data, _ = load_fit_data(ws, opts)
    gts = composite(data.images[:, 0, ..., :3], data.images[:, 0, ..., 3:], 1.0)  # [T, H, W, 3]
    moving = metrics.moving_mask(gts)
    rows, strips = [], []
    H, W = gts.shape[1:3]
    for t in range(data.num_frames):
        with torch.no_grad():
            out = model.render(t, data.viewmats[:1], data.Ks[:1], W, H, torch.ones(3))
        pred = out.rgb[0].float().clamp(0, 1)
        sq, count = metrics.masked_mse(pred[None], gts[t:t + 1], moving)
        e_pred, _ = metrics.gradient_energy(pred[None], moving)
        e_gt, _ = metrics.gradient_energy(gts[t:t + 1], moving)
        rows.append({"frame": t, "psnr": float(metrics.psnr(pred[None], gts[t:t + 1])[0]),
                     "moving_psnr": metrics.psnr_from_mse(sq / count) if count else None,
                     "moving_sharpness": metrics.sharpness_ratio(e_pred, e_gt) if count else None})
        err = (pred - gts[t]).abs().mean(-1, keepdim=True).expand(-1, -1, 3)
        strips.append(torch.cat([gts[t], pred, (3 * err).clamp(0, 1)], dim=1))
    return rows, strips


def follow_or_fade(means: torch.Tensor, log_scales: torch.Tensor) -> dict[str, float]:
    """Travel and log-volume change of moving vs static Gaussians, from [T, N, 3] per-frame
    means and log-scales (see the module docstring)."""
    mid = means.shape[0] // 2
    size = float((means[mid].max(0).values - means[mid].min(0).values).max())
    travel = (means - means[mid : mid + 1]).norm(dim=-1).max(0).values
    vol = log_scales.sum(-1)
    dvol = (vol - vol[mid : mid + 1]).abs().max(0).values
    moving = travel > 0.05 * size
    out = {"gaussians": float(means.shape[1]), "moving": float(moving.sum()), "object_size": size}
    for name, sel in (("moving", moving), ("static", ~moving)):
        if sel.any():
            out[f"{name}_travel"] = float(travel[sel].median())
            out[f"{name}_dlogvol"] = float(dvol[sel].median())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="error strip PNG (default WORKSPACE/motion_diag.png)")
    args = ap.parse_args()
    from ds4d_cli.fitted import load_fitted
    from ds4d_cli.workspace import Workspace

    ws = Workspace.open(args.workspace)
    model = load_fitted(ws)
    rows, strips = per_frame(ws, model)
    frames = [model.gaussians_at(t) for t in range(model.num_frames)]
    f = follow_or_fade(torch.stack([g["means"] for g in frames]), torch.stack([g["scales"] for g in frames]))
    print(f"follow or fade: {f['moving']:.0f} of {f['gaussians']:.0f} Gaussians move; median travel moving "
          f"{f.get('moving_travel', 0):.3f} / static {f.get('static_travel', 0):.3f}, median log-volume change "
          f"moving {f.get('moving_dlogvol', 0):.2f} / static {f.get('static_dlogvol', 0):.2f} "
          f"(object size {f['object_size']:.2f})")
    print("| frame | PSNR | moving PSNR | moving sharpness |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['frame']} | {r['psnr']:.2f} | {r['moving_psnr'] or float('nan'):.2f} | "
              f"{r['moving_sharpness'] or float('nan'):.3f} |")
    order = sorted(range(len(rows)), key=lambda i: rows[i]["moving_psnr"] or 0.0)
    pick = [order[-1], order[len(order) // 2], order[0]]  # best, median, worst
    from PIL import Image

    image = torch.cat([strips[i] for i in pick], dim=0).numpy()
    out = args.out or args.workspace / "motion_diag.png"
    Image.fromarray((image * 255).round().astype(np.uint8)).save(out)
    print(f"best / median / worst frames {pick}: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
