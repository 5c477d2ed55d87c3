"""Losses on what a single-view fit never sees (cameras around the object), and a prune rule.

With only the input view, every Gaussian can slide along its camera ray at no cost: the fit
scatters splats through the extruded silhouette, and from any other camera they are debris. The
inflated volume (:mod:`.inflate`) says where the object plausibly is; these terms hold the fit to
it without touching what the input view shows:

- ``unseen_silhouette``: from random cameras around the object, the rendered alpha matches the
  volume's silhouette of the same frame (L1) -- compact, hole-free, no splats beside the object;
- ``volume``: how far the deformed Gaussian centres lie outside their frame's volume (mean, world
  units), so splats stay on the object in depth too;
- ``ray_colour``: a Gaussian the input view does not see keeps the colour of the input pixel on
  its ray (the front's), as it was initialised -- nothing else constrains the colour of a side;
- ``depth_smoothness``: neighbouring pixels of the input view's render have close expected depths;
- ``opacity_binary``: o (1 - o), pushing opacities to 0 or 1 (semi-transparent veils that only the
  input view's compositing justifies look like smoke from the side);
- :func:`far_from_volume`: Gaussians that are still well outside in some frame are removed.

Random cameras orbit the object centre (the world origin, where an object-centred capture puts it)
at the input camera's distance, azimuth uniform but at least 30 deg from the input camera's (that
view is known exactly; the volume's coarser silhouette there would only fight it), elevation in
[-30, 60] deg, with a field of view a little wider than the input crop's so the object stays in frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ds4d_cli.cameras import c2w_to_viewmat, orbit_camera

from .inflate import InflatedVolume
from .sampling import project, to_grid


def random_cameras(count: int, radius: float, focal: float, size: int, generator: torch.Generator,
                   elevation_range: tuple[float, float] = (-30.0, 60.0), avoid_azimuth: float | None = None,
                   avoid_deg: float = 0.0) -> tuple[Tensor, Tensor]:
    """``count`` cameras on the sphere of ``radius`` looking at the origin: viewmats [C,4,4], Ks [C,3,3]
    (``focal`` in pixels at ``size`` px, centred principal point). Azimuths within ``avoid_deg`` of
    ``avoid_azimuth`` (the input camera's) are not drawn."""
    az = torch.rand(count, generator=generator) * (360.0 - 2 * avoid_deg) + avoid_deg
    if avoid_azimuth is not None:
        az = az + avoid_azimuth
    lo, hi = elevation_range
    el = lo + torch.rand(count, generator=generator) * (hi - lo)
    viewmats = c2w_to_viewmat(orbit_camera(az, el, radius)).float()
    K = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])
    return viewmats, K.expand(count, 3, 3).clone()


def opacity_binary(opacities: Tensor) -> Tensor:
    """mean o (1 - o): 0 when every opacity is 0 or 1, at most 0.25."""
    return (opacities * (1 - opacities)).mean()


def volume_excess(volume: InflatedVolume, means: Tensor, frames: list[int]) -> Tensor:
    """Mean distance (world units) of the deformed centres ``means`` [B, N, 3] outside their frame's volume."""
    return volume.excess(means, frames).mean()


def ray_colour(colours: Tensor, means: Tensor, frames_rgba: Tensor, viewmat: Tensor, K: Tensor,
               weights: Tensor) -> Tensor:
    """Weighted mean |colour - input pixel on the Gaussian's ray| (the front's colour for a side
    the input camera does not see). ``colours`` [N,3], ``means`` [B,N,3] deformed per frame,
    ``frames_rgba`` [B,H,W,4] the input frames, ``weights`` [N] (e.g. 1 - visibility)."""
    b, n, _ = means.shape
    h, w = frames_rgba.shape[1:3]
    uv, _ = project(means.reshape(-1, 3), viewmat[None], K[None])
    grid = to_grid(uv[0], w, h).view(b, 1, n, 2)
    rgba = F.grid_sample(frames_rgba.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[:, :, 0].permute(0, 2, 1)  # [B, N, 4]
    wts = weights[None] * (rgba[..., 3] > 0.5).float()
    err = (colours[None] - rgba[..., :3].detach()).abs().mean(-1)
    return (wts * err).sum() / wts.sum().clamp_min(1e-6)


def depth_smoothness(depth: Tensor, alpha: Tensor, threshold: float = 0.5) -> Tensor:
    """Mean |difference| of expected depth between neighbouring covered pixels of renders
    (``depth`` accumulated, [C, H, W, 1]; ``alpha`` [C, H, W, 1]): a front surface without shards."""
    d = depth[..., 0] / alpha[..., 0].clamp_min(1e-6)
    covered = alpha[..., 0].detach() > threshold
    dx = (d[:, :, 1:] - d[:, :, :-1]).abs()[covered[:, :, 1:] & covered[:, :, :-1]]
    dy = (d[:, 1:] - d[:, :-1]).abs()[covered[:, 1:] & covered[:, :-1]]
    both = torch.cat([dx, dy])
    return both.mean() if both.numel() else depth.sum() * 0


def silhouette_l1(alpha: Tensor, target: Tensor) -> Tensor:
    """Mean |alpha - target| of renders [C, H, W, 1] against silhouettes [C, H, W]."""
    return (alpha[..., 0] - target).abs().mean()


@torch.no_grad()
def far_from_volume(volume: InflatedVolume, deformed_means: list[Tensor], frames: list[list[int]],
                    distance: float) -> Tensor:
    """[N] bool: the Gaussian lies more than ``distance`` outside its frame's volume in some frame.
    ``deformed_means`` holds [B, N, 3] chunks for the frame lists in ``frames``."""
    out = None
    for means, idx in zip(deformed_means, frames):
        far = (volume.excess(means, idx) > distance).any(0)
        out = far if out is None else out | far
    return out


def mirror_camera(viewmat: Tensor, K: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The input camera reflected through the plane through the world origin facing it, as a
    proper camera whose image is the input image flipped left-right: (viewmat [4,4], K [3,3]).

    For an object symmetric about that plane (front and back alike), it sees exactly the flipped
    input frame; for any object under orthographic projection, its silhouette.
    """
    c2w = torch.linalg.inv(viewmat.double())
    n = c2w[:3, 2] / c2w[:3, 2].norm()  # the optical axis: the plane's normal
    R = torch.eye(3, dtype=torch.float64) - 2 * torch.outer(n, n)
    out = torch.eye(4, dtype=torch.float64)
    out[:3, 0] = -(R @ c2w[:3, 0])
    out[:3, 1] = R @ c2w[:3, 1]
    out[:3, 2] = R @ c2w[:3, 2]
    out[:3, 3] = R @ c2w[:3, 3]
    Km = K.clone().double()
    Km[0, 2] = width - K[0, 2]
    return torch.linalg.inv(out).to(viewmat.dtype), Km.to(K.dtype)


def input_focal(K: Tensor, width: int) -> float:
    """The input camera's focal length as a fraction of its image width (fov-independent of size)."""
    return float(K[0, 0]) / float(width)


def orbit_azimuth(viewmat: Tensor) -> float:
    """Azimuth (degrees, :func:`ds4d_cli.cameras.orbit_camera`'s convention) of the camera ``viewmat``."""
    c = torch.linalg.inv(viewmat.double())[:3, 3]
    return math.degrees(math.atan2(float(c[0]), float(-c[1])))


def orbit_radius(viewmat: Tensor) -> float:
    """Distance of the camera ``viewmat`` [4,4] from the world origin."""
    return float(torch.linalg.inv(viewmat.double())[:3, 3].norm())


def fov_deg(focal_fraction: float) -> float:
    return math.degrees(2 * math.atan(0.5 / focal_fraction))


def soft_target(target: Tensor, blur: int = 0) -> Tensor:
    """Optionally blurred silhouettes [C, H, W] (a box filter of ``blur`` px each side)."""
    if blur <= 0:
        return target
    k = 2 * blur + 1
    return F.avg_pool2d(target[:, None], k, stride=1, padding=blur, count_include_pad=False)[:, 0]
