"""A rounded volume from one silhouette: what a single view says about the object's depth.

One view says nothing about depth; the volume is the guess the unseen sides are held to. Two
guesses, both placed on a *medial plane* through the object's centre parallel to the image:

- ``spans`` (the default): every horizontal run of the silhouette is the chord of a round
  cross-section as deep as the run is wide -- a surface of revolution, run by run. An upright
  object of unknown yaw is, on the mean over its yaws, as deep as it is wide; a long body seen
  obliquely (the flapper) is as deep as its outline is long, a square tower as deep as its face.
- ``balls``: sketch-based inflation (Teddy, Monster Mash) in its exact union-of-balls form. Every
  interior pixel q has a distance D(q) to the background; the union of the balls of radius D(q)
  spans depths ``plane +- h(p)`` along the ray through p, with ``h(p)^2 = max_q (D(q)^2 -
  |p - q|^2)``: a limb becomes a tube, a disc a lens -- as deep as the outline is *narrow*, which
  measured worse from the side (README, "One view only").

``thickness`` scales h. Pixels become world units at the plane's depth (pinhole: one pixel =
depth / f). The front half of the volume (between the camera and the plane) lies along the input
camera's rays, so the volume's silhouette from the input camera is the input silhouette; the back
half is the front half mirrored through the plane (``mirror_back``) rather than the rays' further
course, which would flare the back by the perspective (a prism's far side seen from behind was up
to 20 px too large, costing 0.05-0.15 IoU from behind).

Each frame of the clip gets its own volume (its own silhouette), so a point can be tested against
the frame it belongs to: :meth:`InflatedVolume.excess` is how far points lie outside the volume
(differentiable), :meth:`InflatedVolume.occupancy` a voxel grid of it, and
:meth:`InflatedVolume.silhouettes` what it looks like from other cameras.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor

from .sampling import project, to_grid


def distance_transform(mask: Tensor, border_outside: bool = True) -> Tensor:
    """Euclidean distance (pixels) of every pixel of ``mask`` [H, W] (bool) to the nearest pixel
    outside it (the ring beyond the image border counting as outside when ``border_outside``);
    0 outside the mask. scipy's exact EDT."""
    from scipy.ndimage import distance_transform_edt

    m = mask.detach().cpu().numpy().astype(bool)
    if not m.any() or m.all():
        return torch.zeros(mask.shape, dtype=torch.float32)
    if border_outside:
        m = np.pad(m, 1, constant_values=False)
        return torch.from_numpy(distance_transform_edt(m)[1:-1, 1:-1]).float()
    return torch.from_numpy(distance_transform_edt(m)).float()


@torch.no_grad()
def interior_colours(frames: Tensor, erode: int = 2, threshold: float = 0.99) -> Tensor:
    """``frames`` [T, H, W, 4] with every pixel's colour replaced by the nearest *interior* pixel's
    (alpha above ``threshold`` and ``erode`` px inside the silhouette); alpha unchanged.

    The rim of a silhouette mixes the object with the background (anti-aliasing, imperfect
    matting), and the rim is exactly what a side of the object is coloured from: the front pixel
    on a side point's ray is a rim pixel. Taking the nearest interior colour instead keeps the
    background's tint off the unseen sides.
    """
    from scipy.ndimage import distance_transform_edt

    out = frames.clone()
    for t in range(frames.shape[0]):
        solid = frames[t, ..., 3].cpu().numpy() > threshold
        core = distance_transform_edt(solid) > erode if erode > 0 else solid
        if not core.any():
            core = solid
        if not core.any():
            continue
        _, (iy, ix) = distance_transform_edt(~core, return_indices=True)
        iy, ix = torch.from_numpy(iy).to(frames.device), torch.from_numpy(ix).to(frames.device)
        out[t, ..., :3] = frames[t, iy, ix, :3]
    return out


@torch.no_grad()
def inflate(mask: Tensor, chunk: int = 1024) -> Tensor:
    """Half-thickness h [H, W] (pixels) of the union of the silhouette's inscribed balls; 0 outside."""
    dist = distance_transform(mask)
    out = torch.zeros_like(dist)
    if not bool(mask.any()):
        return out
    q = torch.nonzero(mask).float()
    r2 = dist[mask].pow(2)  # [Q]
    # only balls not inside a bigger one matter; a cheap superset: local maxima of D (3x3)
    local_max = dist >= F.max_pool2d(dist[None, None], 3, stride=1, padding=1)[0, 0] - 0.5
    keep = local_max[mask]
    q, r2 = q[keep], r2[keep]
    p = torch.nonzero(mask).float()
    h2 = torch.empty(p.shape[0])
    for i in range(0, p.shape[0], chunk):
        d2 = torch.cdist(p[i:i + chunk], q).pow(2)
        h2[i:i + chunk] = (r2[None, :] - d2).amax(1)
    out[mask] = torch.maximum(h2, dist[mask].pow(2)).sqrt()  # at least the pixel's own ball
    return out


@torch.no_grad()
def row_spans(mask: Tensor) -> Tensor:
    """Half-thickness h [H, W] (pixels) of round cross-sections on the silhouette's horizontal
    runs: a run of n pixels is the chord of a circle of diameter n, and each pixel gets that
    circle's half-chord through its centre (plus half a pixel, so no pixel of a run is flat)."""
    m = mask.detach().cpu().numpy().astype(bool)
    out = np.zeros(m.shape, np.float32)
    if not m.any():
        return torch.from_numpy(out)
    edges = np.diff(np.pad(m, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    starts = np.flatnonzero(edges.ravel() == 1)  # row-major: runs in the same order as ends
    ends = np.flatnonzero(edges.ravel() == -1)
    width = m.shape[1] + 1  # edges has W + 1 columns
    run_start, run_end = starts % width, ends % width  # [R]: pixels run_start .. run_end - 1
    run_id = np.cumsum((edges[:, :-1] == 1).ravel()).reshape(m.shape) - 1
    ys, xs = np.nonzero(m)
    rid = run_id[ys, xs]
    radius = (run_end[rid] - run_start[rid]) / 2.0
    offset = xs + 0.5 - (run_start[rid] + run_end[rid]) / 2.0
    out[ys, xs] = np.sqrt(np.clip(radius**2 - offset**2, 0.0, None)) + 0.5
    return torch.from_numpy(out)


@dataclass
class InflatedVolume:
    """Per-frame inflated volumes seen from the input camera (world Z up, OpenCV cameras)."""

    half_thickness: Tensor  # [T, H, W] world units along the input camera's axis; 0 outside
    outside: Tensor  # [T, H, W] world distance outside the silhouette (0 inside)
    viewmat: Tensor  # [4, 4] input camera, world-to-camera
    K: Tensor  # [3, 3] at H x W
    plane_depth: float  # camera depth of the medial plane
    mirror_back: bool = False  # the back half mirrors the front through the plane (no perspective flare)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # (frame, bound, res) -> occupancy

    @classmethod
    @torch.no_grad()
    def from_alphas(cls, alphas: Tensor, viewmat: Tensor, K: Tensor, thickness: float = 1.0,
                    plane_depth: float | None = None, threshold: float = 0.5, shape: str = "balls",
                    mirror_back: bool = False) -> "InflatedVolume":
        """Volumes of every frame's input silhouette ``alphas`` [T, H, W], cross-sections by
        ``shape`` ("spans" or "balls", module docstring). The medial plane goes through the world
        origin (where an object-centred capture puts the object) unless given."""
        if shape not in ("spans", "balls"):
            raise ValueError(f"unknown volume shape {shape!r} (spans or balls)")
        viewmat, K = viewmat.float().cpu(), K.float().cpu()
        depth = float(viewmat[2, 3]) if plane_depth is None else float(plane_depth)
        px = depth / float(K[0, 0])  # world units per pixel at the plane
        masks = alphas.float().cpu() > threshold
        half_px = row_spans if shape == "spans" else inflate
        half = torch.stack([half_px(m) for m in masks]) * (px * thickness)
        outside = torch.stack([distance_transform(~m, border_outside=False) for m in masks]) * px
        return cls(half, outside, viewmat, K, depth, mirror_back)

    def to(self, device: torch.device | str) -> "InflatedVolume":
        return InflatedVolume(self.half_thickness.to(device), self.outside.to(device), self.viewmat.to(device),
                              self.K.to(device), self.plane_depth, self.mirror_back)

    @property
    def num_frames(self) -> int:
        return int(self.half_thickness.shape[0])

    def _sample(self, maps: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """Bilinear samples of ``maps`` [B, H, W] at ``points`` [B, N, 3]; also the points' camera depth."""
        b, n, _ = points.shape
        h, w = maps.shape[-2:]
        uv, z = project(points.reshape(-1, 3), self.viewmat[None], self.K[None])
        uv, z = uv[0], z[0]
        if self.mirror_back:
            # behind the plane: look the point up where its mirror image in front projects
            behind = z > self.plane_depth
            mirrored = (2 * self.plane_depth - z).clamp_min(1e-3)
            centre = self.K[:2, 2]
            uv = torch.where(behind[:, None], centre + (uv - centre) * (z / mirrored)[:, None], uv)
        grid = to_grid(uv, w, h).view(b, 1, n, 2)
        s = F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)
        return s.view(b, n), z.view(b, n)

    def excess(self, points: Tensor, frames: list[int] | Tensor) -> Tensor:
        """How far (world units) each point [B, N, 3] of frame ``frames[b]`` lies outside that
        frame's volume: beside the silhouette plus in front of / behind the volume. [B, N], >= 0,
        differentiable in ``points``."""
        idx = torch.as_tensor(frames, dtype=torch.long, device=self.half_thickness.device)
        half, z = self._sample(self.half_thickness[idx], points)
        side, _ = self._sample(self.outside[idx], points)
        return side + F.relu((z - self.plane_depth).abs() - half)

    @torch.no_grad()
    def occupancy(self, frame: int, bound: float = 1.0, res: int = 64, tolerance: bool = True) -> Tensor:
        """[res, res, res] bool: voxel centres of the cube [-bound, bound]^3 inside the frame's volume.

        With ``tolerance`` a voxel counts when the volume passes within half a voxel of its centre
        in depth, so parts thinner than a voxel (a blade, a pole) are not lost. (Not sideways:
        measured on the windmill, that widened every silhouette by a pixel and cost 0.01 IoU.)
        """
        lin = (torch.arange(res, dtype=torch.float32, device=self.half_thickness.device) + 0.5) / res * 2 * bound - bound
        pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).view(1, -1, 3)
        half, z = self._sample(self.half_thickness[frame:frame + 1], pts)
        side, _ = self._sample(self.outside[frame:frame + 1], pts)
        tol = bound / res if tolerance else 0.0
        inside = (side <= 0) & ((z - self.plane_depth).abs() <= half.clamp_min(tol))
        if not tolerance:
            inside &= half > 0
        return inside.view(res, res, res)

    @torch.no_grad()
    def silhouettes(self, frame: int, viewmats: Tensor, Ks: Tensor, width: int, height: int,
                    bound: float = 1.0, res: int = 64) -> Tensor:
        """[C, H, W] float {0, 1}: the frame's volume seen from C cameras (:func:`voxel_silhouettes`)."""
        key = (frame, bound, res)
        if key not in self._cache:
            # only the shell: every ray through a solid crosses its surface, so the interior adds
            # nothing to a silhouette but points to project (about 6x fewer on the examples)
            self._cache[key] = surface_voxels(self.occupancy(frame, bound, res))
        return voxel_silhouettes(self._cache[key], viewmats, Ks, width, height, bound)


def surface_voxels(occupancy: Tensor) -> Tensor:
    """[res, res, res] bool: the occupied voxels with at least one empty 6-neighbour (or the grid's
    edge). Seen from any camera they cover what the whole solid covers."""
    p = F.pad(occupancy.float()[None, None], (1, 1, 1, 1, 1, 1))[0, 0]
    inner = (p[:-2, 1:-1, 1:-1] * p[2:, 1:-1, 1:-1] * p[1:-1, :-2, 1:-1] * p[1:-1, 2:, 1:-1]
             * p[1:-1, 1:-1, :-2] * p[1:-1, 1:-1, 2:]) > 0.5
    return occupancy & ~inner


@torch.no_grad()
def voxel_silhouettes(occupancy: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int,
                      bound: float = 1.0) -> Tensor:
    """[C, H, W] float {0, 1}: an occupancy grid [res, res, res] over [-bound, bound]^3 seen from C
    cameras -- eight points per occupied voxel splatted into the images, then closed by one pixel
    so that sparse voxels still give a solid silhouette."""
    res = occupancy.shape[0]
    idx = torch.nonzero(occupancy).float()
    voxel = 2 * bound / res
    out = torch.zeros(viewmats.shape[0], height, width, device=occupancy.device)
    if idx.shape[0] == 0:
        return out
    offsets = torch.tensor([[i, j, k] for i in (0.25, 0.75) for j in (0.25, 0.75) for k in (0.25, 0.75)],
                           device=idx.device)
    pts = ((idx[:, None, :] + offsets[None]) * voxel - bound).reshape(-1, 3)
    uv, z = project(pts, viewmats.float(), Ks.float())
    u, v = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    ok = (z > 1e-3) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    cam = torch.arange(viewmats.shape[0], device=idx.device)[:, None].expand_as(u)
    out.view(-1).index_fill_(0, (cam * height * width + v * width + u)[ok], 1.0)
    closed = F.max_pool2d(out[:, None], 3, stride=1, padding=1)
    closed = -F.max_pool2d(-closed, 3, stride=1, padding=1)
    return torch.maximum(closed[:, 0], out)
