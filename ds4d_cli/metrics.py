"""Image-quality figures for ``ds4d eval``: PSNR, SSIM and PSNR restricted to moving pixels.

Images are float tensors in [0, 1], shaped [H, W, 3] or [N, H, W, 3] (channels last, like the
renderer's output). SSIM comes from ``pytorch_msssim`` (a maintained implementation, Gaussian
window 11 px, sigma 1.5, as in Wang et al. 2004) rather than being written here.

Why a *masked* PSNR: in a clip where most of the object is static, a model that never moves still
scores a high whole-image PSNR. Restricting the error to pixels whose ground truth changes over
time measures what the dynamic part of the method is for.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from pytorch_msssim import ssim as _ms_ssim
from torch import Tensor

#: A pixel "moves" when any channel of its ground truth spans more than this over the clip
#: (about 13/255: above compression/anti-aliasing noise, below any visible motion).
MOVING_THRESHOLD = 0.05

#: PSNR of a perfect match is infinite; report this cap instead so tables and JSON stay finite.
PSNR_CAP = 100.0


def _batched(x: Tensor) -> Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected [N,H,W,3] or [H,W,3] images, got {tuple(x.shape)}")
    return x


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for images in [0, 1]; capped at :data:`PSNR_CAP` for a perfect match."""
    if mse <= 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, -10.0 * math.log10(mse))


def mse_per_image(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean squared error of each image pair: [N]."""
    pred, gt = _batched(pred), _batched(gt)
    return ((pred - gt) ** 2).flatten(1).mean(dim=1)


def psnr(pred: Tensor, gt: Tensor) -> Tensor:
    """PSNR in dB of each image pair: [N] (one value per image, not of the pooled error)."""
    return torch.tensor([psnr_from_mse(float(m)) for m in mse_per_image(pred, gt)])


def ssim(pred: Tensor, gt: Tensor) -> Tensor:
    """SSIM of each image pair: [N] (pytorch_msssim, data range 1, 11 px Gaussian window)."""
    pred, gt = _batched(pred), _batched(gt)
    x = pred.permute(0, 3, 1, 2).contiguous().clamp(0.0, 1.0)
    y = gt.permute(0, 3, 1, 2).contiguous().clamp(0.0, 1.0)
    win = 11 if min(x.shape[-2:]) > 11 else (min(x.shape[-2:]) // 2) * 2 - 1
    return _ms_ssim(x, y, data_range=1.0, size_average=False, win_size=max(win, 3))


def moving_mask(gt_sequence: Tensor, threshold: float = MOVING_THRESHOLD) -> Tensor:
    """[H, W] bool: pixels whose ground truth changes over time (range of any channel > threshold).

    ``gt_sequence`` is one view's ground truth over the clip, [T, H, W, 3].
    """
    seq = _batched(gt_sequence)
    span = seq.amax(dim=0) - seq.amin(dim=0)
    return (span > threshold).any(dim=-1)


def masked_mse(pred: Tensor, gt: Tensor, mask: Tensor) -> tuple[float, int]:
    """Summed squared error over masked pixels (all channels, all images) and the pixel count.

    Returned as (sum, count) so callers can pool errors over frames and views before taking
    the PSNR: a per-frame masked PSNR is undefined where the mask is empty.
    """
    pred, gt = _batched(pred), _batched(gt)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.dim() == 2:
        mask = mask.expand(pred.shape[0], *mask.shape)
    sq = ((pred - gt) ** 2).sum(dim=-1)  # [N,H,W], summed over channels
    count = int(mask.sum()) * pred.shape[-1]
    return float(sq[mask].sum()), count


def gradient_energy(images: Tensor, mask: Tensor) -> tuple[float, int]:
    """Summed squared image gradient (finite differences of luminance) over masked pixels, and
    their count -- pooled like :func:`masked_mse` so a ratio can be taken over frames and views."""
    x = _batched(images)
    lum = x @ torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype)  # [N, H, W]
    gx = torch.zeros_like(lum)
    gy = torch.zeros_like(lum)
    gx[:, :, :-1] = lum[:, :, 1:] - lum[:, :, :-1]
    gy[:, :-1, :] = lum[:, 1:, :] - lum[:, :-1, :]
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.dim() == 2:
        mask = mask.expand(x.shape[0], *mask.shape)
    g2 = gx * gx + gy * gy
    return float(g2[mask].sum()), int(mask.sum())


def sharpness_ratio(pred_energy: float, gt_energy: float) -> Optional[float]:
    """sqrt(gradient energy of the render / that of the ground truth) on the same pixels: 1 = as
    sharp as the truth, below 1 = blurred or smeared, above 1 = noisier (e.g. shredded splats).
    LPIPS-free evidence of sharpness; None where the truth has no gradient there."""
    if gt_energy <= 0:
        return None
    return math.sqrt(pred_energy / gt_energy)


#: Alpha above which a pixel counts as covered by the object (rendered or ground truth).
SILHOUETTE_THRESHOLD = 0.5


def silhouette_iou(pred_alpha: Tensor, gt_alpha: Tensor, threshold: float = SILHOUETTE_THRESHOLD) -> Tensor:
    """IoU of the silhouettes (alpha > ``threshold``) of each image pair: [N]; 1 where both are empty.

    Alphas are [N, H, W] or [H, W] (a trailing channel of 1 is dropped).
    """
    p, g = _alpha_batch(pred_alpha) > threshold, _alpha_batch(gt_alpha) > threshold
    inter = (p & g).flatten(1).sum(1).double()
    union = (p | g).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).float()


def near_debris(alpha: Tensor, expected_depth: Tensor, near_limit: float,
                threshold: float = SILHOUETTE_THRESHOLD) -> Tensor:
    """Share of each image's pixels [N] that are covered (alpha > ``threshold``) at an expected depth
    nearer the camera than ``near_limit`` -- nearer than any point of the object can be.

    ``expected_depth`` is the render's accumulated depth divided by its alpha ([N, H, W] or [H, W]).
    """
    a, d = _alpha_batch(alpha), _alpha_batch(expected_depth)
    return ((a > threshold) & (d < near_limit)).flatten(1).float().mean(1)


def _alpha_batch(x: Tensor) -> Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() >= 3 and x.shape[-1] == 1:
        x = x[..., 0]
    return x[None] if x.dim() == 2 else x
