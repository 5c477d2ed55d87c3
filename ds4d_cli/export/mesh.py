"""An animated triangle mesh from the fitted Gaussians: one surface, moved by the deformation.

1. **Density field.** On a regular grid around one frame's Gaussians (the *reference* frame),
   ``D(x) = sum_i opacity_i * exp(-1/2 (x - mu_i)^T Sigma_i^-1 (x - mu_i))``. Each Gaussian's
   standard deviations are widened to at least :data:`MIN_SIGMA_VOXELS` voxels so that thin parts
   (a flat blade a fraction of a voxel thick) still cross the iso-level instead of vanishing.
2. **Surface.** Marching cubes (scikit-image) at ``D = iso`` (0.5: where a single opaque Gaussian
   is half-dense); connected blobs smaller than :data:`MIN_COMPONENT_SHARE` of the largest are
   dropped first (stray floaters).
3. **Colour.** Each vertex takes the mean base colour (SH degree 0) of its
   :data:`NEIGHBOURS` nearest Gaussians, weighted by their density at the vertex.
4. **Motion.** The same weights move each vertex in every frame by the weighted mean of its
   neighbours' displacement from the reference frame: every frame has the same vertices and
   faces, so the result is a morph-target animation (glTF) or a sequence of equal meshes (OBJ).

The mesh is a *proxy* of the splats: it follows the silhouette and the coarse motion; the
splats' fine detail, view-dependent colour and soft edges are not representable this way.
All coordinates here are in ds4d's world (Z up); writers convert axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ds4d_cli.render.projection import quat_to_rotmat
from ds4d_cli.export.splats import SplatFrame

#: Bumped when the extraction changes its result (cached glb/obj exports are then redone).
MESH_VERSION = 1
#: Floor on every Gaussian's standard deviation, in voxels (keeps sub-voxel sheets in the field).
MIN_SIGMA_VOXELS = 0.75
#: The density field is evaluated out to this many standard deviations of each Gaussian.
EXTENT_SIGMAS = 3.0
#: Blobs with fewer voxels than this share of the largest blob are dropped.
MIN_COMPONENT_SHARE = 0.02
#: Gaussians that colour and move each vertex.
NEIGHBOURS = 16
#: Evaluations per chunk when splatting the field (bounds memory).
_CHUNK = 4_000_000


@dataclass
class AnimatedMesh:
    """One surface and its motion over the clip (world axes, Z up)."""

    vertices: np.ndarray  # [V,3] float32, at the reference frame
    faces: np.ndarray  # [F,3] uint32, counter-clockwise seen from outside
    normals: np.ndarray  # [V,3] float32, unit, outward
    colors: np.ndarray  # [V,3] float32 in [0,1]
    offsets: np.ndarray  # [T,V,3] float32: frame t's vertices = vertices + offsets[t]
    times: np.ndarray  # [T] float64 seconds of each frame
    reference: int  # index into the frames of the reference frame

    def frame_vertices(self, t: int) -> np.ndarray:
        return self.vertices + self.offsets[t]


def _covariances(frame: SplatFrame, min_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-Gaussian inverse covariances [N,3,3] and widened standard deviations [N,3]."""
    sig = torch.exp(frame.log_scales.double()).clamp_min(min_sigma)
    rot = quat_to_rotmat(frame.quats.double())
    inv = rot @ torch.diag_embed(1.0 / sig ** 2) @ rot.transpose(1, 2)
    return inv.numpy(), sig.numpy()


def density_grid(frame: SplatFrame, resolution: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The density field on a ``resolution``-cube grid: (values [R,R,R], origin [3], voxel size).

    The grid spans the Gaussians' 3-sigma extents from the 0.5th to the 99.5th percentile on each
    axis, so one huge stray Gaussian cannot shrink the object to a few cells; what lies outside is
    cut off (the caller pads the grid, so the surface still closes).
    """
    means = frame.means.double().numpy()
    opac = torch.sigmoid(frame.opacity_logits.double()).numpy()
    reach = EXTENT_SIGMAS * torch.exp(frame.log_scales.double()).numpy().max(axis=1)
    lo = np.percentile(means - reach[:, None], 0.5, axis=0)
    hi = np.percentile(means + reach[:, None], 99.5, axis=0)
    voxel = float((hi - lo).max()) / (resolution - 1)
    origin = lo
    inv, sig = _covariances(frame, MIN_SIGMA_VOXELS * voxel)
    flat = np.zeros(resolution ** 3, dtype=np.float64)
    centre = np.round((means - origin) / voxel).astype(np.int64)
    radius = np.ceil(EXTENT_SIGMAS * sig.max(axis=1) / voxel).astype(np.int64).clip(1, resolution)
    for r in np.unique(radius):  # Gaussians of one stencil size at a time, vectorised
        idx = np.nonzero(radius == r)[0]
        span = np.arange(-r, r + 1)
        stencil = np.stack(np.meshgrid(span, span, span, indexing="ij"), -1).reshape(-1, 3)
        per_chunk = max(1, _CHUNK // len(stencil))
        for start in range(0, len(idx), per_chunk):
            sel = idx[start:start + per_chunk]
            cells = centre[sel, None, :] + stencil[None]  # [n,S,3]
            d = origin + cells * voxel - means[sel, None, :]
            m = np.einsum("nsi,nij,nsj->ns", d, inv[sel], d)
            ok = ((cells >= 0) & (cells < resolution)).all(-1) & (m < EXTENT_SIGMAS ** 2)
            c = cells[ok]
            val = (opac[sel, None] * np.exp(-0.5 * m))[ok]
            flat += np.bincount((c[:, 0] * resolution + c[:, 1]) * resolution + c[:, 2], weights=val,
                                minlength=resolution ** 3)
    return flat.reshape((resolution,) * 3), origin, voxel


def _drop_small_blobs(grid: np.ndarray, level: float) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(grid > level)
    if count <= 1:
        return grid
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.zeros(count + 1, dtype=bool)
    keep[1:] = sizes >= MIN_COMPONENT_SHARE * sizes.max()
    # Zeroing a dropped blob's inside is enough: its faint halo alone never crosses the level.
    out = grid.copy()
    out[~keep[labels] & (labels > 0)] = 0.0
    return out


def extract_surface(frame: SplatFrame, resolution: int = 96, level: float = 0.5):
    """(vertices [V,3], faces [F,3], normals [V,3], voxel size) of the density iso-surface (world axes)."""
    from skimage import measure

    grid, origin, voxel = density_grid(frame, resolution)
    grid = _drop_small_blobs(grid, level)
    if grid.max() <= level:
        raise ValueError("the Gaussians are too faint or too sparse to form a surface at this level")
    grid = np.pad(grid, 1)  # an empty shell of cells: the surface closes even where the grid cut it
    verts, faces, normals, _ = measure.marching_cubes(grid, level=level, spacing=(voxel,) * 3)
    verts = verts + origin - voxel
    faces = faces.astype(np.int64)
    # Orient faces counter-clockwise seen from outside, as glTF expects: skimage's normals point
    # down the density gradient (outwards); flip the winding if the triangles disagree with them.
    tri = verts[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    if (face_n * normals[faces].sum(axis=1)).sum() < 0:
        faces = faces[:, ::-1]
    faces = np.ascontiguousarray(faces).astype(np.uint32)
    return verts.astype(np.float32), faces, normals.astype(np.float32), voxel


def _neighbour_weights(vertices: np.ndarray, frame: SplatFrame, min_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """For each vertex its nearest Gaussians [V,K] and normalised density weights [V,K]."""
    from scipy.spatial import cKDTree

    means = frame.means.double().numpy()
    k = min(NEIGHBOURS, len(means))
    _, nn = cKDTree(means).query(vertices.astype(np.float64), k=k)
    nn = nn.reshape(len(vertices), k)
    inv, _ = _covariances(frame, min_sigma)
    opac = torch.sigmoid(frame.opacity_logits.double()).numpy()
    d = vertices[:, None, :].astype(np.float64) - means[nn]
    m = np.einsum("vki,vkij,vkj->vk", d, inv[nn], d)
    w = opac[nn] * np.exp(-0.5 * np.minimum(m, 80.0))
    total = w.sum(axis=1, keepdims=True)
    nearest = np.zeros_like(w)
    nearest[:, 0] = 1.0  # a vertex no Gaussian reaches follows its nearest one
    w = np.where(total > 1e-12, w / np.maximum(total, 1e-300), nearest)
    return nn, w


def animated_mesh(frames: Sequence[SplatFrame], times: Sequence[float], reference: int,
                  resolution: int = 96, level: float = 0.5) -> AnimatedMesh:
    """The surface of ``frames[reference]``, coloured and moved over all ``frames``.

    Every frame must hold the same Gaussians in the same order (the fitted model's frames do:
    the deformation moves them, it never adds or removes any).
    """
    ref = frames[reference]
    if any(len(f) != len(ref) for f in frames):
        raise ValueError("every frame must hold the same Gaussians to animate one mesh")
    verts, faces, normals, voxel = extract_surface(ref, resolution, level)
    nn, w = _neighbour_weights(verts, ref, MIN_SIGMA_VOXELS * voxel)
    rgb = np.clip(ref.colors.double().numpy(), 0.0, 1.0)
    colors = (w[..., None] * rgb[nn]).sum(axis=1)
    base = ref.means.double().numpy()
    offsets = np.stack([(w[..., None] * (f.means.double().numpy() - base)[nn]).sum(axis=1) for f in frames])
    return AnimatedMesh(verts, faces, normals, colors.astype(np.float32), offsets.astype(np.float32),
                        np.asarray(times, dtype=np.float64), int(reference))
