"""Per-frame 3DGS PLY files that splat viewers open as a sequence.

Each frame's Gaussians (deformation applied) are cleaned (NaN / near-transparent dropped),
rotated to the viewer's -Y-up convention (see :mod:`ds4d_cli.export.axes`) and written in the
standard 3DGS layout as ``frame_0000.ply, frame_0001.ply, ...`` -- SuperSplat opens a folder of
such files (select them all) as an animation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ds4d_cli.export.splats import clean, splat_frame_from, to_viewer_axes
from ds4d_cli.ply import save_ply_tensors


def ply_name(frame_index: int) -> str:
    return f"frame_{frame_index:04d}.ply"


def write_frame_ply(path: Path, gaussians: Any, min_opacity: float = 1.0 / 255.0) -> dict[str, int]:
    """Clean, convert to viewer axes and atomically write one frame; returns kept/dropped counts."""
    frame, dropped = clean(splat_frame_from(gaussians), min_opacity)
    frame = to_viewer_axes(frame)
    # The project's one 3DGS PLY writer (standard layout, f_rest channel-major, atomic rename).
    save_ply_tensors(path, frame.means, frame.quats, frame.log_scales, frame.opacity_logits, frame.sh0, frame.shN)
    return {"gaussians": len(frame), "dropped": dropped}
