"""Read and write Gaussians in the standard 3DGS ``.ply`` layout (as the INRIA code and viewers
such as SuperSplat expect).

One ``vertex`` element, float32 properties in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3K-1}  opacity  scale_0..2  rot_0..3

Values are the raw parameters: opacity as a logit, scales as logs, quaternion (w, x, y, z)
unnormalised, ``f_rest`` channel-major (all red coefficients, then green, then blue), colour
= 0.5 + 0.28209479 * f_dc. Normals are written as zeros. No axis conversion happens here:
export transforms the tensors first and calls :func:`save_ply_tensors`.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch
from torch import Tensor

from ds4d_cli.fsutil import atomic_path
from ds4d_cli.gaussians import Gaussians, sh_degree_from_bases


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy()


def save_ply_tensors(
    path: Union[str, os.PathLike],
    means: Tensor,  # [N,3]
    quats: Tensor,  # [N,4] wxyz
    log_scales: Tensor,  # [N,3]
    opacity_logits: Tensor,  # [N]
    sh0: Tensor,  # [N,1,3] or [N,3]
    shN: Union[Tensor, None] = None,  # [N,K,3]
) -> None:
    """Write raw Gaussian parameters as a binary 3DGS PLY, atomically."""
    from plyfile import PlyData, PlyElement

    n = int(means.shape[0])
    dc = _np(sh0).reshape(n, 3)
    rest = np.zeros((n, 0), dtype=np.float32) if shN is None or shN.numel() == 0 else (
        _np(shN).reshape(n, -1, 3).transpose(0, 2, 1).reshape(n, -1)
    )
    columns = [
        ("x", _np(means)[:, 0]), ("y", _np(means)[:, 1]), ("z", _np(means)[:, 2]),
        ("nx", np.zeros(n, np.float32)), ("ny", np.zeros(n, np.float32)), ("nz", np.zeros(n, np.float32)),
    ]
    columns += [(f"f_dc_{i}", dc[:, i]) for i in range(3)]
    columns += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
    columns += [("opacity", _np(opacity_logits).reshape(n))]
    columns += [(f"scale_{i}", _np(log_scales)[:, i]) for i in range(3)]
    columns += [(f"rot_{i}", _np(quats)[:, i]) for i in range(4)]
    data = np.empty(n, dtype=[(name, "f4") for name, _ in columns])
    for name, values in columns:
        data[name] = values
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(data, "vertex")], text=False).write(str(tmp))


def save_ply(path: Union[str, os.PathLike], gaussians: Union[Gaussians, dict]) -> None:
    """Write a :class:`Gaussians` (or a dict of its raw tensors) as a 3DGS PLY."""
    raw = gaussians.raw() if isinstance(gaussians, Gaussians) else gaussians
    save_ply_tensors(
        path, raw["means"], raw["quats"], raw["scales"], raw["opacities"], raw["sh0"], raw.get("shN")
    )


def read_ply_tensors(path: Union[str, os.PathLike]) -> dict[str, Tensor]:
    """Raw tensors (means, quats, scales, opacities, sh0, shN) from a 3DGS PLY."""
    from plyfile import PlyData

    from ds4d_cli.errors import Ds4dError

    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"].data
    except Exception as exc:
        raise Ds4dError(f"cannot read Gaussian PLY {path}: {exc}", hint="is it a 3DGS .ply file?") from exc
    names = v.dtype.names or ()
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    required += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    missing = [r for r in required if r not in names]
    if missing:
        raise Ds4dError(f"{path} is not a 3DGS PLY (missing {', '.join(missing)})",
                        hint="expected the standard 3D Gaussian Splatting layout")
    n = len(v)

    def cols(keys):
        return torch.from_numpy(np.stack([np.asarray(v[k], dtype=np.float32) for k in keys], axis=1))

    rest_keys = sorted((k for k in names if k.startswith("f_rest_")), key=lambda k: int(k[7:]))
    if len(rest_keys) % 3:
        raise Ds4dError(f"{path}: {len(rest_keys)} f_rest values is not a multiple of 3",
                        hint="the file is not a valid 3DGS PLY")
    k = len(rest_keys) // 3
    sh_degree_from_bases(1 + k)  # validates the count
    shN = cols(rest_keys).reshape(n, 3, k).transpose(1, 2).contiguous() if k else torch.zeros(n, 0, 3)
    return {
        "means": cols(["x", "y", "z"]),
        "quats": cols([f"rot_{i}" for i in range(4)]),
        "scales": cols([f"scale_{i}" for i in range(3)]),
        "opacities": cols(["opacity"]).reshape(n),
        "sh0": cols(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        "shN": shN,
    }


def load_ply(path: Union[str, os.PathLike]) -> Gaussians:
    """A :class:`Gaussians` holding exactly the parameters stored in a 3DGS PLY."""
    return Gaussians(read_ply_tensors(path))
