"""Per-Gaussian feature sampling by projection, with a visibility weight.

Each Gaussian centre is projected into every view (pinhole, OpenCV camera, ``viewmats``
world-to-camera, pixel ``Ks``; pixel centres at integer + 0.5 as in gsplat) and samples that
view's feature map bilinearly. Whether the Gaussian is actually seen there comes from a render of
the canonical Gaussians: the point is visible if the rendered alpha at its pixel is high and its
depth is not behind the rendered (expected) depth by more than a tolerance. Hidden or off-screen
points get weight 0, so their features are zeros downstream (TSSF leaves them out).
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
    g = grid.unsqueeze(0).expand(b, -1, -1, -1).reshape(b * v, 1, -1, 2)
    s = F.grid_sample(maps.reshape(b * v, c, h, w), g, mode="bilinear", padding_mode="zeros", align_corners=False)
    return s.view(b, v, c, -1).permute(0, 1, 3, 2)


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
