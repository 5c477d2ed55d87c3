"""Per-image SSIM for the D-SSIM loss, fused in the C++ kernel library on the CPU.

Same definition as ``pytorch_msssim.ssim(..., size_average=False)`` (Gaussian window, sigma
1.5, valid correlation, K1 = 0.01, K2 = 0.03, data range 1), which stays the path on CUDA, for
inputs the kernel does not take, and when the library does not build. Why a kernel: in torch
the loss took about 370 ms of a 600 ms default step (14 images at 256 px on one core) --
five grouped convolutions and dozens of full-size elementwise passes; the fused version filters
each plane's moments in cache and computes the formula and its gradient in one sweep.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..render.cpu import _sfx, kernel_threads

SIGMA = 1.5


def gaussian_window(size: int, sigma: float = SIGMA, dtype: torch.dtype = torch.float32) -> Tensor:
    """The normalised 1D Gaussian window [size] (pytorch_msssim's ``_fspecial_gauss_1d``)."""
    coords = torch.arange(size, dtype=dtype) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


class _FusedSSIM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, win_size: int, lib, n_threads: int) -> Tensor:  # type: ignore[override]
        N, C, H, W = x.shape
        sfx = _sfx(x.dtype)
        xc, yc = x.detach().contiguous(), y.detach().contiguous()
        win = gaussian_window(win_size, dtype=x.dtype)
        P, Ho, Wo = N * C, H - win_size + 1, W - win_size + 1
        out = torch.empty(P, dtype=x.dtype)
        maps = torch.empty(3, P, Ho, Wo, dtype=x.dtype)
        getattr(lib, f"ds4d_ssim_{sfx}")(
            P, H, W, xc.data_ptr(), yc.data_ptr(), win.data_ptr(), win_size, out.data_ptr(),
            maps[0].data_ptr(), maps[1].data_ptr(), maps[2].data_ptr(), n_threads,
        )
        ctx.save_for_backward(xc, yc, win, maps)
        ctx.meta = (lib, n_threads, sfx, win_size)
        return out.view(N, C).mean(1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        xc, yc, win, maps = ctx.saved_tensors
        lib, n_threads, sfx, win_size = ctx.meta
        N, C, H, W = xc.shape
        g = (grad.to(xc.dtype) / C).repeat_interleave(C).contiguous()
        gx = torch.empty_like(xc)
        getattr(lib, f"ds4d_ssim_backward_{sfx}")(
            N * C, H, W, xc.data_ptr(), yc.data_ptr(), win.data_ptr(), win_size, maps[0].data_ptr(),
            maps[1].data_ptr(), maps[2].data_ptr(), g.data_ptr(), gx.data_ptr(), n_threads,
        )
        return gx, None, None, None, None


def _kernel_for(x: Tensor, y: Tensor, win_size: int):
    """The loaded library when the fused path applies to these inputs, else None."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or y.dtype != x.dtype:
        return None
    if y.requires_grad or x.dim() != 4 or min(x.shape[-2:]) < win_size or x.shape != y.shape:
        return None
    from ..render import build

    return build.load()


def ssim_per_image(x: Tensor, y: Tensor, win_size: int = 11) -> Tensor:
    """SSIM [N] of images ``x`` [N,C,H,W] against targets ``y`` (no gradient to ``y``)."""
    if win_size % 2 == 0 or win_size < 1:
        raise ValueError(f"SSIM window size must be odd and positive, got {win_size}")
    lib = _kernel_for(x, y, win_size)
    if lib is None:
        from pytorch_msssim import ssim

        return ssim(x, y, data_range=1.0, size_average=False, win_size=win_size)
    return _FusedSSIM.apply(x, y, win_size, lib, kernel_threads())
