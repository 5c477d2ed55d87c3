"""Per-Gaussian feature sampling by projection, with a visibility weight.

Each Gaussian centre is projected into every view (pinhole, OpenCV camera, ``viewmats``
world-to-camera, pixel ``Ks``; pixel centres at integer + 0.5 as in gsplat) and samples that
view's feature map bilinearly. Whether the Gaussian is actually seen there comes from a render of
the canonical Gaussians: the point is visible if the rendered alpha at its pixel is high and its
depth is not behind the rendered (expected) depth by more than a tolerance. Hidden or off-screen
points get weight 0, so their features are zeros downstream (TSSF leaves them out).

On the CPU the sampling and its backward run in the C++ kernel library
(``render/csrc/sample.cpp``), equal to ``grid_sample`` (tests/test_sampling.py), which stays the
path on CUDA, for gradients to the grid and without the library.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def project(points: Tensor, viewmats: Tensor, Ks: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel coordinates [V, N, 2] and camera depth [V, N] of ``points`` [N, 3]."""
    cam = torch.einsum("vij,nj->vni", viewmats[:, :3, :3], points) + viewmats[:, None, :3, 3]
    z = cam[..., 2]
    zc = z.clamp_min(1e-6).unsqueeze(-1)
    uv = torch.einsum("vij,vnj->vni", Ks[:, :2, :2], cam[..., :2] / zc) + Ks[:, None, :2, 2]
    return uv, z


def to_grid(uv: Tensor, width: int, height: int) -> Tensor:
    """Pixel coordinates -> grid_sample's [-1, 1] (align_corners=False)."""
    scale = torch.tensor([2.0 / width, 2.0 / height], device=uv.device, dtype=uv.dtype)
    return uv * scale - 1.0


def sample_maps(maps: Tensor, grid: Tensor) -> Tensor:
    """Bilinear samples of ``maps`` [B, V, C, h, w] at ``grid`` [V, N, 2] -> [B, V, N, C].

    The grid is in normalised image coordinates, so maps of any resolution (the encoder's
    stride) are sampled at the same places. Off-image points read zeros.
    """
    b, v, c, h, w = maps.shape
    lib = _kernel_for(maps, grid)
    if lib is not None:
        return _FusedSample.apply(maps, grid, lib).view(b, v, -1, c)
    return sample_maps_torch(maps, grid)


def sample_maps_torch(maps: Tensor, grid: Tensor) -> Tensor:
    """:func:`sample_maps` with torch's ``grid_sample``."""
    b, v, c, h, w = maps.shape
    g = grid.unsqueeze(0).expand(b, -1, -1, -1).reshape(b * v, 1, -1, 2)
    s = F.grid_sample(maps.reshape(b * v, c, h, w), g, mode="bilinear", padding_mode="zeros", align_corners=False)
    return s.view(b, v, c, -1).permute(0, 1, 3, 2)


def _kernel_for(maps: Tensor, grid: Tensor):
    """The loaded C++ library when the fused sampling applies, else None."""
    if maps.device.type != "cpu" or maps.dtype not in (torch.float32, torch.float64) or grid.dtype != maps.dtype:
        return None
    if grid.requires_grad or grid.dim() != 3 or grid.shape[0] != maps.shape[1]:
        return None
    from ..render import build

    return build.load()


class _FusedSample(torch.autograd.Function):
    """``sample_maps`` in the C++ library: [B, V, C, h, w] maps at [V, N, 2] -> [B*V, N, C]."""

    @staticmethod
    def forward(ctx, maps: Tensor, grid: Tensor, lib) -> Tensor:  # type: ignore[override]
        from ..render.cpu import _sfx, kernel_threads

        b, v, c, h, w = maps.shape
        m, g = maps.detach().contiguous(), grid.detach().contiguous()
        n = g.shape[1]
        out = torch.empty(b * v, n, c, dtype=m.dtype)
        sfx, nt = _sfx(m.dtype), kernel_threads()
        getattr(lib, f"ds4d_sample_maps_{sfx}")(b * v, v, c, h, w, n, m.data_ptr(), g.data_ptr(), out.data_ptr(), nt)
        ctx.save_for_backward(g)
        ctx.meta = (lib, sfx, nt, tuple(maps.shape))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (g,) = ctx.saved_tensors
        lib, sfx, nt, shape = ctx.meta
        b, v, c, h, w = shape
        go = grad.to(g.dtype).contiguous()
        gm = torch.empty(shape, dtype=g.dtype)
        getattr(lib, f"ds4d_sample_maps_backward_{sfx}")(b * v, v, c, h, w, g.shape[1], g.data_ptr(), go.data_ptr(),
                                                         gm.data_ptr(), nt)
        return gm, None, None


@torch.no_grad()
def visibility(
    z: Tensor,
    grid: Tensor,
    alpha: Tensor,
    depth: Tensor,
    tol: float = 0.05,
    min_alpha: float = 0.5,
) -> Tensor:
    """Soft visibility [V, N] in [0, 1].

    ``alpha``, ``depth`` [V, H, W, 1]: the render of the canonical Gaussians (depth accumulated,
    i.e. sum of weight * z; divided by alpha here to get the expected surface depth).
    """
    a = F.grid_sample(alpha.permute(0, 3, 1, 2), grid.unsqueeze(1), align_corners=False)[:, 0, 0]
    d = F.grid_sample(depth.permute(0, 3, 1, 2), grid.unsqueeze(1), align_corners=False)[:, 0, 0]
    surface = d / a.clamp_min(1e-6)
    inside = (grid.abs() <= 1).all(-1) & (z > 1e-3)
    front = torch.sigmoid((surface + tol - z) / (0.25 * tol))
    seen = ((a - min_alpha) * 10).clamp(0, 1)
    return (front * seen * inside).to(z.dtype)
