"""Change of up axis between ds4d's world (Z up) and the frame splat viewers expect (-Y up).

Splat viewers (SuperSplat, the antimatter15 / gsplat.js viewers, the original 3DGS SIBR viewer)
were built around COLMAP reconstructions, whose world is an OpenCV-style frame with **-Y up**;
SuperSplat, for instance, turns every loaded PLY by 180 degrees about Z so that such data appears
upright. A ds4d world is **Z up**, so without conversion our objects would lie on their side.

The conversion is the rotation by **+90 degrees about the X axis**::

    x_file =  x_world
    y_file = -z_world        (world up, +Z, becomes -Y: "up" for the viewer)
    z_file =  y_world        (world +Y, away from the input camera, becomes +Z)

It is a proper rotation (det = +1), so handedness and the Gaussians' shapes are preserved. With
it the input camera (world azimuth 0: on -Y looking toward +Y, image-down = world -Z) becomes
the identity OpenCV camera at (0, 0, -r) looking down +Z with image-down = +Y: a viewer's default
front view shows the object as the input video did.

What must change with the positions:
- quaternions (w, x, y, z): ``q_file = q_R * q_world`` (Hamilton product, q_R = (cos 45, sin 45, 0, 0)),
  i.e. each Gaussian's rotation matrix becomes ``R @ rot(q)``;
- view-dependent colour: each SH band of degree >= 1 is rotated by its own (2l+1)x(2l+1) matrix,
  solved exactly from the SH basis gsplat evaluates (degree 0, the base colour, is invariant);
- scales and opacities are intrinsic to each Gaussian and do not change.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ds4d_cli.render.projection import quat_multiply

#: Rotation (3x3) taking ds4d world coordinates (Z up) to viewer-file coordinates (-Y up).
VIEWER_FROM_WORLD = torch.tensor(
    [[1.0, 0.0, 0.0],
     [0.0, 0.0, -1.0],
     [0.0, 1.0, 0.0]],
    dtype=torch.float64,
)

#: The same rotation as a unit quaternion (w, x, y, z): +90 degrees about X.
VIEWER_FROM_WORLD_QUAT = torch.tensor(
    [math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0], dtype=torch.float64
)


def _sh_basis(num_bases: int, dirs: Tensor) -> Tensor:
    # The renderer's own basis (gsplat's pure-torch evaluator, pinned gsplat==1.5.3): rotating
    # coefficients is only correct in exactly the basis (signs, order) that renders them.
    from gsplat.cuda._torch_impl import _eval_sh_bases_fast

    return _eval_sh_bases_fast(num_bases, dirs)


def sh_rotation_matrices(rot: Tensor, degree: int) -> list[Tensor]:
    """Per SH band l = 1..degree, M_l [(2l+1),(2l+1)] with new_coeffs_l = M_l @ old_coeffs_l.

    A rotated object's colour seen along d equals the original's along rot^T d, so
    ``B_l(d) @ M_l = B_l(rot^T d)`` (B_l a row of basis values) for every direction d; M_l is solved by least squares on
    random directions (the system is exactly consistent: each band is rotation-closed).
    """
    gen = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(256, 3, generator=gen, dtype=torch.float64), dim=-1)
    rot = rot.to(torch.float64)
    n = (degree + 1) ** 2
    basis_new = _sh_basis(n, dirs)  # B(d)
    basis_old = _sh_basis(n, dirs @ rot)  # B(rot^T d): rows d^T rot = (rot^T d)^T
    mats = []
    for l in range(1, degree + 1):
        sl = slice(l * l, (l + 1) ** 2)
        mats.append(torch.linalg.lstsq(basis_new[:, sl], basis_old[:, sl]).solution)
    return mats


def rotate_gaussians(
    means: Tensor, quats: Tensor, shN: Tensor | None = None, rot: Tensor = VIEWER_FROM_WORLD,
    rot_quat: Tensor | None = VIEWER_FROM_WORLD_QUAT,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Apply a rigid rotation to Gaussians: means [N,3], quats [N,4] wxyz, shN [N,K,3] (bands >= 1).

    ``rot_quat`` must be the quaternion of ``rot`` (given rather than derived, to keep its sign
    convention explicit). Returns the rotated (means, quats, shN) in the input dtypes.
    """
    if rot_quat is None:
        raise ValueError("rot_quat is required")
    dtype = means.dtype
    means_out = (means.to(torch.float64) @ rot.T.to(torch.float64)).to(dtype)
    quats_out = quat_multiply(rot_quat.to(torch.float64), quats.to(torch.float64)).to(quats.dtype)
    if shN is None or shN.shape[1] == 0:
        return means_out, quats_out, shN
    degree = int(round(math.sqrt(shN.shape[1] + 1))) - 1
    mats = sh_rotation_matrices(rot, degree)
    parts = []
    for l, m in enumerate(mats, start=1):
        band = shN[:, l * l - 1:(l + 1) ** 2 - 1, :].to(torch.float64)  # [N, 2l+1, 3]
        parts.append(torch.einsum("ij,njc->nic", m, band))
    return means_out, quats_out, torch.cat(parts, dim=1).to(shN.dtype)
