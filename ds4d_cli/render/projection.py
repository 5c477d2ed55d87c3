"""EWA projection of 3D Gaussians to screen-space ellipses (shared by every backend).

Same maths as gsplat 1.5.3's pinhole ``fully_fused_projection`` (so the CPU and CUDA backends
agree): covariance R S S^T R^T in camera space, the perspective Jacobian with its argument
clamped to 1.3x the field of view, a 0.3 px^2 low-pass dilation, and an opacity-aware
bounding radius (the box beyond which alpha < 1/255, at most 3.33 sigma). Written in plain
torch so autograd differentiates it; the compositors take its outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
EPS2D = 0.3
NEAR_PLANE = 0.01
FAR_PLANE = 1e10
MAX_EXTENT = 3.33


@dataclass
class Projected:
    """Per camera and Gaussian, all [C,N,...]."""

    means2d: Tensor  # [C,N,2] pixel coordinates (autograd leaf of the compositor)
    conics: Tensor  # [C,N,3] inverse 2D covariance (a, b, c): sigma = a dx^2/2 + b dx dy + c dy^2/2
    depths: Tensor  # [C,N] camera z
    radii: Tensor  # [C,N,2] int32 pixel half-extent of the bounding box, 0 = culled
    valid: Tensor  # [C,N] bool: in front of the near plane with a positive-definite footprint


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [...,3,3] from (w,x,y,z) quaternions (normalised here)."""
    q = torch.nn.functional.normalize(quats, dim=-1)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return rot.reshape(q.shape[:-1] + (3, 3))


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a*b of quaternions (w, x, y, z), broadcasting over leading dims."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance [...,3,3] = R diag(s^2) R^T."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def project(
    means: Tensor,  # [C,N,3]
    quats: Tensor,  # [N,4] or [C,N,4]
    scales: Tensor,  # [N,3] or [C,N,3] (activated)
    opacities: Tensor,  # [C,N]
    viewmats: Tensor,  # [C,4,4]
    Ks: Tensor,  # [C,3,3]
    width: int,
    height: int,
) -> Projected:
    """Project Gaussians into C cameras; see the module docstring for the maths."""
    cov = covariance_3d(quats, scales)
    rot_v = viewmats[:, :3, :3]
    t_v = viewmats[:, :3, 3]
    p = torch.einsum("cij,cnj->cni", rot_v, means) + t_v[:, None, :]
    if cov.dim() == 3:
        cov_c = torch.einsum("cij,njk,clk->cnil", rot_v, cov, rot_v)
    else:
        cov_c = torch.einsum("cij,cnjk,clk->cnil", rot_v, cov, rot_v)
    tx, ty, tz = p.unbind(-1)
    valid_z = (tz > NEAR_PLANE) & (tz < FAR_PLANE)
    # Culled Gaussians get a harmless depth so no inf/nan enters autograd.
    z = torch.where(valid_z, tz, torch.ones_like(tz))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    ux = torch.minimum(torch.maximum(tx / z, -lim_xn), lim_xp)
    uy = torch.minimum(torch.maximum(ty / z, -lim_yn), lim_yp)
    zeros = torch.zeros_like(z)
    jac = torch.stack(
        [fx / z, zeros, -fx * ux / z, zeros, fy / z, -fy * uy / z], dim=-1
    ).reshape(z.shape + (2, 3))
    cov2 = jac @ cov_c @ jac.transpose(-1, -2)
    c00 = cov2[..., 0, 0] + EPS2D
    c11 = cov2[..., 1, 1] + EPS2D
    c01 = 0.5 * (cov2[..., 0, 1] + cov2[..., 1, 0])
    det = c00 * c11 - c01 * c01
    valid = valid_z & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c11 / det_safe, -c01 / det_safe, c00 / det_safe], dim=-1)
    means2d = torch.stack([fx * tx / z + cx, fy * ty / z + cy], dim=-1)

    with torch.no_grad():
        op = opacities.detach().to(z.dtype)
        extent = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_MIN) / ALPHA_MIN))
        extent = extent.clamp(max=MAX_EXTENT)
        rx = torch.ceil(extent * torch.sqrt(c00.detach().clamp_min(0)))
        ry = torch.ceil(extent * torch.sqrt(c11.detach().clamp_min(0)))
        m2 = means2d.detach()
        keep = valid & (op >= ALPHA_MIN) & (rx > 0) & (ry > 0)
        keep &= (m2[..., 0] + rx > 0) & (m2[..., 0] - rx < width)
        keep &= (m2[..., 1] + ry > 0) & (m2[..., 1] - ry < height)
        radii = torch.stack([rx, ry], dim=-1)
        radii = torch.where(keep[..., None], radii, torch.zeros_like(radii)).to(torch.int32)
    return Projected(means2d=means2d, conics=conics, depths=tz, radii=radii, valid=valid)


def pixel_centers(width: int, height: int, dtype=torch.float32, device=None) -> Tensor:
    """[H*W,2] (x, y) pixel-centre coordinates, row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def num_tiles(size: int, tile: int) -> int:
    return int(math.ceil(size / tile))
