"""The one camera convention of ds4d, and helpers that build cameras in it.

Convention (the same as gsplat's, so tensors pass to either backend unchanged):

- World: right-handed, **Z up**.
- Camera: **OpenCV** axes -- x right, y down, z forward (the viewing direction).
- ``c2w`` [...,4,4]: camera-to-world; its columns are the camera axes and position in world space.
- ``viewmats`` [...,4,4]: world-to-camera, the inverse of ``c2w``.
- ``Ks`` [...,3,3]: pixel intrinsics ``[[fx,0,cx],[0,fy,cy],[0,0,1]]``. Pixel (i, j) (column i,
  row j) covers ``[i, i+1) x [j, j+1)`` and its centre is at ``(i+0.5, j+0.5)``; a centred
  principal point is therefore ``(W/2, H/2)``.
- Orbit angles: azimuth 0 puts the camera on -Y looking toward +Y; azimuth grows
  counter-clockwise seen from above (90 = camera on +X); elevation > 0 = camera above the
  target. ``radius`` is the distance to the target.
- Field of view (``fov_deg``) is the horizontal one; pixels are square (fy = fx).

Defaults (radius 2.0, fov 49.1 deg) match ``shared/examples/*/cameras.json`` exactly, whose
``camera_to_world`` matrices ``orbit_camera`` reproduces.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

DEFAULT_RADIUS = 2.0
DEFAULT_FOV_DEG = 49.1

# Zero123++ generates six views at these azimuths (degrees, relative to the input view).
_ZERO123PP_AZIMUTHS = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
_ZERO123PP_ELEVATIONS = {"v1.1": (30.0, -20.0), "v1.2": (20.0, -10.0)}


def _as_tensor(x, dtype=torch.float32, device=None) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype=dtype, device=device if device is not None else x.device)
    return torch.as_tensor(x, dtype=dtype, device=device)


def _rigid(rot: Tensor, pos: Tensor) -> Tensor:
    """Assemble [...,4,4] from rotation [...,3,3] and translation [...,3]."""
    out = torch.zeros(rot.shape[:-2] + (4, 4), dtype=rot.dtype, device=rot.device)
    out[..., :3, :3] = rot
    out[..., :3, 3] = pos
    out[..., 3, 3] = 1.0
    return out


def orbit_camera(
    azimuth_deg: float | Tensor,
    elevation_deg: float | Tensor,
    radius: float | Tensor = DEFAULT_RADIUS,
    target: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Camera-to-world [...,4,4] of a camera on a sphere around ``target``, looking at it.

    The right axis is built from the azimuth alone, so the poles (elevation +-90) are well
    defined (image "up" then points away from the azimuth-0 camera side).
    Angles may be tensors of any shape; the result has that shape + (4, 4).
    """
    az = torch.deg2rad(_as_tensor(azimuth_deg, torch.float64))
    el = torch.deg2rad(_as_tensor(elevation_deg, torch.float64))
    az, el = torch.broadcast_tensors(az, el)
    r = _as_tensor(radius, torch.float64)
    tgt = _as_tensor(target, torch.float64)
    ca, sa, ce, se = torch.cos(az), torch.sin(az), torch.cos(el), torch.sin(el)
    offset = torch.stack([sa * ce, -ca * ce, se], dim=-1)  # unit vector target -> eye
    eye = tgt + r[..., None] * offset if r.dim() else tgt + r * offset
    z = -offset  # forward
    x = torch.stack([ca, sa, torch.zeros_like(ca)], dim=-1)  # right, horizontal
    y = torch.cross(z, x, dim=-1)  # down
    rot = torch.stack([x, y, z], dim=-1)
    return _rigid(rot, eye).to(dtype)


def look_at(
    eye: Sequence[float] | Tensor,
    target: Sequence[float] | Tensor = (0.0, 0.0, 0.0),
    up: Sequence[float] | Tensor = (0.0, 0.0, 1.0),
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Camera-to-world [...,4,4] of a camera at ``eye`` looking at ``target`` with ``up`` up.

    When the view direction is parallel to ``up`` another up vector is used (world +Y) so
    the result is always a valid rotation.
    """
    eye_t = _as_tensor(eye, torch.float64)
    tgt = _as_tensor(target, torch.float64)
    upv = _as_tensor(up, torch.float64)
    eye_t, tgt, upv = torch.broadcast_tensors(eye_t, tgt, upv)
    z = torch.nn.functional.normalize(tgt - eye_t, dim=-1)
    x = torch.cross(z, upv, dim=-1)
    alt = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(z)
    degenerate = (x.norm(dim=-1, keepdim=True) < 1e-9)
    x = torch.where(degenerate, torch.cross(z, alt, dim=-1), x)
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.cross(z, x, dim=-1)
    rot = torch.stack([x, y, z], dim=-1)
    return _rigid(rot, eye_t).to(dtype)


def c2w_to_viewmat(c2w: Tensor) -> Tensor:
    """World-to-camera [...,4,4] from camera-to-world (exact rigid inverse, differentiable)."""
    rot = c2w[..., :3, :3]
    pos = c2w[..., :3, 3]
    rot_t = rot.transpose(-1, -2)
    return _rigid(rot_t, -(rot_t @ pos[..., None])[..., 0])


def viewmat_to_c2w(viewmat: Tensor) -> Tensor:
    """Camera-to-world from world-to-camera (the rigid inverse is its own formula)."""
    return c2w_to_viewmat(viewmat)


def camera_centers(viewmats: Tensor) -> Tensor:
    """World positions [...,3] of cameras given as world-to-camera matrices."""
    rot = viewmats[..., :3, :3]
    t = viewmats[..., :3, 3]
    return -(rot.transpose(-1, -2) @ t[..., None])[..., 0]


def focal_from_fov(fov_deg: float, size: float) -> float:
    """Focal length in pixels for a field of view spanning ``size`` pixels."""
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2.0)


def intrinsics_from_fov(
    fov_deg: float = DEFAULT_FOV_DEG, width: int = 256, height: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """K [3,3] for a horizontal field of view, square pixels, centred principal point."""
    height = width if height is None else height
    f = focal_from_fov(fov_deg, width)
    return torch.tensor(
        [[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype
    )


def zero123pp_view_angles(variant: str = "v1.1") -> list[tuple[float, float]]:
    """(azimuth, elevation) in degrees of Zero123++'s six views, relative to the input view.

    v1.1 alternates elevations +30/-20, v1.2 +20/-10 (the input camera is at elevation 0).
    """
    if variant not in _ZERO123PP_ELEVATIONS:
        from ds4d_cli.errors import Ds4dError

        raise Ds4dError(
            f"unknown Zero123++ variant {variant!r}",
            hint=f"use one of {', '.join(sorted(_ZERO123PP_ELEVATIONS))}",
        )
    up, down = _ZERO123PP_ELEVATIONS[variant]
    return [(az, up if i % 2 == 0 else down) for i, az in enumerate(_ZERO123PP_AZIMUTHS)]


_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def opencv_to_opengl(c2w: Tensor) -> Tensor:
    """Camera-to-world with OpenGL/Blender camera axes (x right, y up, z backward).

    Flipping the camera's y and z axes is its own inverse, so the two directions share a formula.
    """
    return c2w @ _FLIP_YZ.to(dtype=c2w.dtype, device=c2w.device)


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """Camera-to-world with OpenCV axes from one with OpenGL/Blender axes."""
    return c2w @ _FLIP_YZ.to(dtype=c2w.dtype, device=c2w.device)


def project_points(points: Tensor, viewmats: Tensor, Ks: Tensor) -> tuple[Tensor, Tensor]:
    """Pinhole projection of world points into C cameras (differentiable).

    points [N,3] (shared) or [C,N,3] (one set per camera); viewmats [C,4,4]; Ks [C,3,3].
    Returns uv [C,N,2] in pixels (pixel centres at +0.5) and depth [C,N] (camera z; points
    behind the camera have depth <= 0 and meaningless uv).
    """
    rot = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    if points.dim() == 2:
        cam = torch.einsum("cij,nj->cni", rot, points) + t[:, None, :]
    else:
        cam = torch.einsum("cij,cnj->cni", rot, points) + t[:, None, :]
    depth = cam[..., 2]
    pix = torch.einsum("cij,cnj->cni", Ks, cam)
    z = torch.where(depth.abs() < 1e-12, torch.full_like(depth, 1e-12), depth)
    uv = pix[..., :2] / z[..., None]
    return uv, depth
