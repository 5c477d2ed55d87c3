"""Image losses: RGB L1 + D-SSIM on composited colour, mask L1 on alpha.

Renders and targets are composited over the same background before comparison, so a wrong
alpha shows up in the colour loss too; the mask term supervises alpha directly. Per-camera
weights let the reference view count more than the (less reliable) generated views.

``render_losses`` is what the fit calls: the same losses from the premultiplied render, fused in
the C++ kernel library on the CPU (``render/csrc/ssim.cpp``); ``image_losses`` is the torch
definition it must equal (tests/test_ssim.py) and its path on CUDA or without the library.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ssim import gaussian_window, ssim_per_image


def ssim_window(height: int, width: int) -> int:
    """SSIM window side for an image: 11 (the standard), 7 below 96 px."""
    return 7 if min(height, width) < 96 else 11


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
    """Weighted losses over C cameras (the torch definition).

    ``pred_rgb`` [C,H,W,3] is the render already composited over ``background`` (a [3] colour),
    ``pred_alpha`` [C,H,W,1], ``target_rgba`` [C,H,W,4] straight alpha, ``weights`` [C].
    ``pixel_weights`` [C,H,W,1] (optional) scales the L1 and mask terms per pixel.
    Returns {"l1", "dssim", "mask", "total"} (scalars).
    """
    target = composite(target_rgba[..., :3], target_rgba[..., 3:], background)
    l1_px = (pred_rgb - target).abs()
    mask_px = (pred_alpha - target_rgba[..., 3:]).abs()
    if pixel_weights is not None:
        l1_px, mask_px = l1_px * pixel_weights, mask_px * pixel_weights
    if ssim_weight > 0:
        s = ssim_per_image(pred_rgb.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2),
                           win_size=ssim_window(pred_rgb.shape[1], pred_rgb.shape[2]))
    else:  # D-SSIM 0
        s = torch.ones(pred_rgb.shape[0], device=pred_rgb.device, dtype=pred_rgb.dtype)
    per_image = {"l1": l1_px.mean((1, 2, 3)), "mask": mask_px.mean((1, 2, 3)), "ssim": s}
    return _weighted(per_image, weights, ssim_weight, mask_weight)


def _weighted(per_image: dict[str, Tensor], weights: Tensor, ssim_weight: float, mask_weight: float) -> dict[str, Tensor]:
    """The camera-weighted means of per-image ``l1``, ``mask``, ``ssim`` [C] and their total."""
    wsum = weights.sum().clamp_min(1e-8)
    l1 = (per_image["l1"] * weights).sum() / wsum
    mask = (per_image["mask"] * weights).sum() / wsum
    dssim = ((1 - per_image["ssim"]) * weights).sum() / wsum
    total = (1 - ssim_weight) * l1 + ssim_weight * dssim + mask_weight * mask
    return {"l1": l1, "dssim": dssim, "mask": mask, "total": total}


class _FusedRenderLosses(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rgb: Tensor, alpha: Tensor, target: Tensor, background: Tensor, pixel_weights: Tensor | None,
                lib, n_threads: int, win_size: int):  # type: ignore[override]
        from ..render.cpu import _sfx

        C, H, W, rs = rgb.shape
        dt, sfx = rgb.dtype, _sfx(rgb.dtype)
        r, a = rgb.detach().contiguous(), alpha.detach().contiguous()
        t, bg = target.detach().to(dt).contiguous(), background.detach().to(dt).reshape(3).contiguous()
        pw = None if pixel_weights is None else pixel_weights.detach().to(dt).expand(C, H, W, 1).contiguous()
        win = gaussian_window(win_size, dtype=dt)
        l1, mask, ssim = (torch.empty(C, dtype=dt) for _ in range(3))
        xs, ys = torch.empty(C, 3, H, W, dtype=dt), torch.empty(C, 3, H, W, dtype=dt)
        maps = torch.empty(3, C * 3, H - win_size + 1, W - win_size + 1, dtype=dt)
        getattr(lib, f"ds4d_render_losses_{sfx}")(
            C, H, W, r.data_ptr(), a.data_ptr(), t.data_ptr(), bg.data_ptr(), 0 if pw is None else pw.data_ptr(),
            win.data_ptr(), win_size, l1.data_ptr(), mask.data_ptr(), ssim.data_ptr(), xs.data_ptr(), ys.data_ptr(),
            maps[0].data_ptr(), maps[1].data_ptr(), maps[2].data_ptr(), rs, n_threads,
        )
        ctx.keep = (a, t, bg, pw, win, xs, ys, maps)
        ctx.meta = (lib, n_threads, sfx, win_size, rs)
        return l1, mask, ssim

    @staticmethod
    def backward(ctx, g_l1: Tensor, g_mask: Tensor, g_ssim: Tensor):  # type: ignore[override]
        a, t, bg, pw, win, xs, ys, maps = ctx.keep
        lib, n_threads, sfx, win_size, rs = ctx.meta
        C, H, W = a.shape[:3]
        gs = [torch.zeros(C, dtype=a.dtype) if g is None else g.to(a.dtype).contiguous() for g in (g_l1, g_mask, g_ssim)]
        grad_rgb, grad_alpha = torch.empty(C, H, W, rs, dtype=a.dtype), torch.empty(C, H, W, 1, dtype=a.dtype)
        scratch = torch.empty(C, 3, H, W, dtype=a.dtype)
        getattr(lib, f"ds4d_render_losses_backward_{sfx}")(
            C, H, W, a.data_ptr(), t.data_ptr(), bg.data_ptr(), 0 if pw is None else pw.data_ptr(), win.data_ptr(),
            win_size, xs.data_ptr(), ys.data_ptr(), maps[0].data_ptr(), maps[1].data_ptr(), maps[2].data_ptr(),
            gs[0].data_ptr(), gs[1].data_ptr(), gs[2].data_ptr(), grad_rgb.data_ptr(), grad_alpha.data_ptr(),
            scratch.data_ptr(), rs, n_threads,
        )
        return grad_rgb, grad_alpha, None, None, None, None, None, None


def _loss_kernel(rgb: Tensor, alpha: Tensor, target: Tensor, win_size: int, ssim_weight: float):
    """The loaded library when the fused path applies to these inputs, else None."""
    if rgb.device.type != "cpu" or rgb.dtype not in (torch.float32, torch.float64) or alpha.dtype != rgb.dtype:
        return None
    if ssim_weight <= 0 or rgb.dim() != 4 or rgb.shape[-1] not in (3, 4) or min(rgb.shape[1:3]) < win_size:
        return None
    if target.requires_grad or tuple(target.shape) != (*rgb.shape[:3], 4) or tuple(alpha.shape) != (*rgb.shape[:3], 1):
        return None
    from ..render import build

    return build.load()


def render_losses(
    rgb: Tensor,
    alpha: Tensor,
    target_rgba: Tensor,
    background: Tensor,
    weights: Tensor,
    ssim_weight: float = 0.2,
    mask_weight: float = 1.0,
    pixel_weights: Tensor | None = None,
) -> dict[str, Tensor]:
    """:func:`image_losses` of a render given premultiplied: ``rgb`` [C,H,W,3] (over black) and
    ``alpha`` [C,H,W,1], composited over ``background`` here. ``pixel_weights`` [C,H,W,1].

    ``rgb`` may also be the render's whole composited tensor [C,H,W,4] (rgb + depth,
    ``RenderOutput.features``): the fused path reads its rgb in place and its gradient reaches
    the render without the slice's copies (about 11 ms a default step); depth gets none from here."""
    win_size = ssim_window(rgb.shape[1], rgb.shape[2])
    lib = _loss_kernel(rgb, alpha, target_rgba, win_size, ssim_weight)
    if lib is None:
        rgb = rgb[..., :3]
        return image_losses(rgb + (1 - alpha) * background, alpha, target_rgba, background, weights, ssim_weight,
                            mask_weight, pixel_weights)
    from ..render.cpu import kernel_threads

    l1, mask, ssim = _FusedRenderLosses.apply(rgb, alpha, target_rgba, background, pixel_weights, lib,
                                              kernel_threads(), win_size)
    return _weighted({"l1": l1, "mask": mask, "ssim": ssim}, weights.to(l1.dtype), ssim_weight, mask_weight)
