"""Image losses: RGB L1 + D-SSIM on composited colour, mask L1 on alpha.

Renders and targets are composited over the same background before comparison, so a wrong
alpha shows up in the colour loss too; the mask term supervises alpha directly. Per-camera
weights let the reference view count more than the (less reliable) generated views.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ssim import ssim_per_image


def composite(rgba_or_rgb: Tensor, alpha: Tensor, background: Tensor | float) -> Tensor:
    """rgb * a + bg * (1 - a) for [C, H, W, 3] colour (straight) and [C, H, W, 1] alpha."""
    return rgba_or_rgb * alpha + background * (1 - alpha)


def image_losses(
    pred_rgb: Tensor,
    pred_alpha: Tensor,
    target_rgba: Tensor,
    background: Tensor,
    weights: Tensor,
    ssim_weight: float = 0.2,
    mask_weight: float = 1.0,
    pixel_weights: Tensor | None = None,
) -> dict[str, Tensor]:
    """Weighted losses over C cameras.

    ``pred_rgb`` [C,H,W,3] is the render already composited over ``background`` (a [3] colour),
    ``pred_alpha`` [C,H,W,1], ``target_rgba`` [C,H,W,4] straight alpha, ``weights`` [C].
    ``pixel_weights`` [C,H,W,1] (optional) scales the L1 and mask terms per pixel.
    Returns {"l1", "dssim", "mask", "total"} (scalars).
    """
    target = composite(target_rgba[..., :3], target_rgba[..., 3:], background)
    wsum = weights.sum().clamp_min(1e-8)
    l1_px = (pred_rgb - target).abs()
    mask_px = (pred_alpha - target_rgba[..., 3:]).abs()
    if pixel_weights is not None:
        l1_px, mask_px = l1_px * pixel_weights, mask_px * pixel_weights
    l1 = (l1_px.mean((1, 2, 3)) * weights).sum() / wsum
    mask = (mask_px.mean((1, 2, 3)) * weights).sum() / wsum
    if ssim_weight > 0:
        s = ssim_per_image(pred_rgb.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2),
                           win_size=7 if min(pred_rgb.shape[1:3]) < 96 else 11)
        dssim = ((1 - s) * weights).sum() / wsum
    else:
        dssim = torch.zeros((), device=pred_rgb.device)
    total = (1 - ssim_weight) * l1 + ssim_weight * dssim + mask_weight * mask
    return {"l1": l1, "dssim": dssim, "mask": mask, "total": total}
