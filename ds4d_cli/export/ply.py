"""Per-frame 3DGS PLY files that splat viewers open as a sequence.

Each frame's Gaussians (deformation applied) are cleaned (NaN / near-transparent dropped),
rotated to the viewer's -Y-up convention (see :mod:`ds4d_cli.export.axes`) and written in the
standard 3DGS layout as ``frame_0000.ply, frame_0001.ply, ...`` -- SuperSplat opens a folder of
such files (select them all) as an animation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ds4d_cli.export.splats import SplatFrame, clean, splat_frame_from, to_viewer_axes
from ds4d_cli.fsutil import atomic_path


def ply_name(frame_index: int) -> str:
    return f"frame_{frame_index:04d}.ply"


def _write_ply_plyfile(path: Path, frame: SplatFrame) -> None:
    """The standard 3DGS vertex layout (binary little endian, float32)."""
    from plyfile import PlyData, PlyElement

    n = len(frame)
    k = frame.shN.shape[1]
    # f_rest ordered channel-major: all red coefficients, then green, then blue.
    f_rest = frame.shN.permute(0, 2, 1).reshape(n, 3 * k).numpy()
    columns: list[tuple[str, np.ndarray]] = [
        ("x", frame.means[:, 0].numpy()), ("y", frame.means[:, 1].numpy()), ("z", frame.means[:, 2].numpy()),
        ("nx", np.zeros(n, np.float32)), ("ny", np.zeros(n, np.float32)), ("nz", np.zeros(n, np.float32)),
    ]
    columns += [(f"f_dc_{i}", frame.sh0[:, 0, i].numpy()) for i in range(3)]
    columns += [(f"f_rest_{i}", f_rest[:, i]) for i in range(3 * k)]
    columns += [("opacity", frame.opacity_logits.numpy())]
    columns += [(f"scale_{i}", frame.log_scales[:, i].numpy()) for i in range(3)]
    columns += [(f"rot_{i}", frame.quats[:, i].numpy()) for i in range(4)]
    data = np.empty(n, dtype=[(name, "<f4") for name, _ in columns])
    for name, col in columns:
        data[name] = col
    PlyData([PlyElement.describe(data, "vertex")], text=False).write(str(path))


def write_frame_ply(path: Path, gaussians: Any, min_opacity: float = 1.0 / 255.0) -> dict[str, int]:
    """Clean, convert to viewer axes and atomically write one frame; returns kept/dropped counts."""
    frame, dropped = clean(splat_frame_from(gaussians), min_opacity)
    frame = to_viewer_axes(frame)
    with atomic_path(path) as tmp:
        _save(tmp, frame)
    return {"gaussians": len(frame), "dropped": dropped}


def _save(path: Path, frame: SplatFrame) -> None:
    _write_ply_plyfile(path, frame)
