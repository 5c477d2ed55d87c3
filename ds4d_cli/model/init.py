"""Initial canonical Gaussians: visual hull of the middle frame, fallback a random ball.

A voxel grid over [-bound, bound]^3 is carved with the multi-view silhouettes (alpha > 0.5) of the
middle frame: a voxel survives if it projects inside the silhouette of the input view and of all
but a third of the generated views (exact carving with up to 2 generated views). Points are drawn on the hull's surface voxels (jittered inside the
voxel), coloured from the view that sees them most frontally. Too few surviving voxels (bad masks,
wrong cameras) -> a random ball, so the fit still starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .sampling import project, to_grid

SH_C0 = 0.28209479177387814


@dataclass
class InitPoints:
    means: Tensor  # [N, 3]
    colors: Tensor  # [N, 3] in [0, 1]
    spacing: float  # typical distance between neighbours (for the initial scale)
    method: str  # "visual_hull" | "random_ball"


@torch.no_grad()
def carve(
    alphas: Tensor, viewmats: Tensor, Ks: Tensor, bound: float = 1.0, res: int = 64, threshold: float = 0.5
) -> Tensor:
    """Occupancy [res, res, res] (bool) of the visual hull; ``alphas`` [V, H, W]."""
    v, h, w = alphas.shape
    # dilate by one pixel: at low resolution thin parts (blades, poles) must not be carved away
    alphas = F.max_pool2d(alphas.float().unsqueeze(1), 3, stride=1, padding=1)[:, 0]
    lin = (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 * bound - bound
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).view(-1, 3)
    uv, z = project(pts, viewmats.float(), Ks.float())
    grid = to_grid(uv, w, h)
    a = F.grid_sample(alphas.float().unsqueeze(1), grid.unsqueeze(1), align_corners=False)[:, 0, 0]
    in_view = (grid.abs() <= 1).all(-1) & (z > 1e-3)
    # Every camera of an object-centred capture sees the whole object: a voxel outside any
    # view's frustum is not part of it (treating it as "unconstrained" keeps phantom slabs
    # near the cameras).
    inside = (a > threshold) & in_view  # [V, P]
    # Generated views are not exactly consistent (a diffusion prior): with many of them, a voxel
    # may fall outside the silhouette in up to a third of the generated views. The input view
    # (the real frame) must always agree. With 2 generated views this is exact carving.
    misses = (~inside[1:]).sum(0)
    keep = inside[0] & (misses <= (v - 1) // 3)
    if v == 1:
        # one view (no generated views) leaves depth unconstrained: assume an object-centred
        # capture and keep the silhouette's extrusion inside a central ball
        keep &= pts.norm(dim=-1) < 0.6 * bound
    return keep.view(res, res, res)


def _surface(occ: Tensor) -> Tensor:
    pad = F.pad(occ.float()[None, None], (1, 1, 1, 1, 1, 1))
    inner = -F.max_pool3d(-pad, 3, stride=1)[0, 0] > 0.5  # erosion (3x3x3)
    return occ & ~inner


@torch.no_grad()
def init_points(
    images: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    num_points: int,
    bound: float = 1.0,
    res: int = 64,
    generator: torch.Generator | None = None,
    min_voxels: int = 50,
) -> InitPoints:
    """Points for the canonical set from one frame's views ``images`` [V, H, W, 4] (view 0 = input)."""
    v, h, w, _ = images.shape
    occ = carve(images[..., 3], viewmats, Ks, bound, res)
    voxel = 2 * bound / res
    if int(occ.sum()) >= min_voxels:
        surf = _surface(occ)
        idx = torch.nonzero(surf if int(surf.sum()) >= min_voxels else occ).float()
        pick = torch.randint(0, idx.shape[0], (num_points,), generator=generator)
        jitter = torch.rand(num_points, 3, generator=generator)
        means = (idx[pick] + jitter) * voxel - bound
        area = idx.shape[0] * voxel * voxel
        spacing = max(math.sqrt(area / num_points), voxel * 0.5)
        method = "visual_hull"
    else:
        d = torch.randn(num_points, 3, generator=generator)
        d = d / d.norm(dim=-1, keepdim=True)
        r = 0.5 * bound * torch.rand(num_points, 1, generator=generator).pow(1 / 3)
        means = d * r
        spacing = 0.5 * bound * (4 / num_points) ** (1 / 3)
        method = "random_ball"
    colors = _colors(means, images, viewmats, Ks)
    return InitPoints(means, colors, float(spacing), method)


def _colors(means: Tensor, images: Tensor, viewmats: Tensor, Ks: Tensor) -> Tensor:
    """Colour of each point from the view facing it most (point direction from the centre)."""
    v, h, w, _ = images.shape
    uv, z = project(means, viewmats.float(), Ks.float())
    grid = to_grid(uv, w, h)
    rgb = F.grid_sample(images[..., :3].permute(0, 3, 1, 2).float(), grid.unsqueeze(1), align_corners=False)[:, :, 0]
    cam_pos = torch.linalg.inv(viewmats.float())[:, :3, 3]  # [V, 3]
    n = means / means.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    facing = torch.einsum("nc,vc->vn", n, cam_pos / cam_pos.norm(dim=-1, keepdim=True))
    in_view = (grid.abs() <= 1).all(-1)
    facing = facing.masked_fill(~in_view, -2)
    best = facing.argmax(0)
    col = rgb.permute(0, 2, 1)[best, torch.arange(means.shape[0])]
    return col.clamp(0, 1)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0
