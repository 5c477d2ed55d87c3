"""Where an object can be: its bounding sphere from calibrated silhouettes (``ds4d eval``'s debris test).

The visual hull of a set of silhouettes contains the object, so a sphere that holds the hull holds
the object. Silhouettes are taken as the union over the clip (alpha > 0.5 in any frame), so the
sphere holds the object at every time. No point of the object can be nearer a camera than the
sphere's centre depth minus its radius: a render that puts opaque splats nearer than that shows
*near-plane debris* -- splats between the camera and anything the object could be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class BoundingSphere:
    center: tuple[float, float, float]
    radius: float

    def near_limit(self, viewmat: Tensor) -> float:
        """The smallest camera depth (z, OpenCV) any point of the sphere has in camera ``viewmat`` [4,4]."""
        c = torch.tensor(self.center, dtype=torch.float64)
        vm = viewmat.double()
        z = float(vm[2, :3] @ c + vm[2, 3])
        return z - self.radius


@torch.no_grad()
def sphere_from_silhouettes(
    alphas: Sequence[Tensor], viewmats: Tensor, Ks: Tensor, res: int = 96, threshold: float = 0.5,
) -> BoundingSphere | None:
    """Bounding sphere of the visual hull of ``alphas`` (one [H, W] alpha per view, any sizes).

    ``viewmats`` [V,4,4] world-to-camera, ``Ks`` [V,3,3] at each alpha's size. The hull is carved
    in a cube around the world origin that reaches the nearest camera, at ``res``^3; silhouettes
    are dilated by one pixel and a voxel is kept if its centre lands inside every silhouette, so
    the sphere errs on the large side. A view is taken to hold the whole object (outside its
    frame is not the object), except beyond a border of the frame that its silhouette touches. None when nothing
    survives (no silhouettes, or cameras that do not look at the object).
    """
    vm = viewmats.double()
    centres = torch.linalg.inv(vm)[:, :3, 3]
    bound = float(centres.norm(dim=-1).min())
    if not math.isfinite(bound) or bound <= 0:
        return None
    lin = (torch.arange(res, dtype=torch.float64) + 0.5) / res * 2 * bound - bound
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).view(-1, 3)
    keep = torch.ones(pts.shape[0], dtype=torch.bool)
    for a, m, K in zip(alphas, vm, Ks.double()):
        h, w = a.shape[-2:]
        sil = F.max_pool2d((a.float() > threshold).float()[None, None], 3, stride=1, padding=1)[0, 0]
        cam = pts @ m[:3, :3].T + m[:3, 3]
        z = cam[:, 2]
        uv = (cam[:, :2] / z.clamp_min(1e-9)[:, None]) @ K[:2, :2].T + K[:2, 2]
        u, v = uv[:, 0].floor().long(), uv[:, 1].floor().long()
        front = z > 1e-6
        seen = front & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        inside = torch.zeros_like(seen)
        inside[seen] = sil[v[seen], u[seen]] > 0.5
        # an object-centred view holds the whole object: beyond its frame is not the object,
        # except beyond an edge that the silhouette runs into (the object is cut off there)
        cut = front & (((u < 0) & bool(sil[:, 0].any())) | ((u >= w) & bool(sil[:, -1].any()))
                       | ((v < 0) & bool(sil[0].any())) | ((v >= h) & bool(sil[-1].any())))
        keep &= inside | cut
    occ = pts[keep]
    if occ.shape[0] == 0:
        return None
    lo, hi = occ.min(0).values, occ.max(0).values
    centre = (lo + hi) / 2
    half_voxel = math.sqrt(3) * bound / res
    radius = float((occ - centre).norm(dim=-1).max()) + half_voxel
    return BoundingSphere(tuple(float(x) for x in centre), radius)  # type: ignore[arg-type]
