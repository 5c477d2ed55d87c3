"""Tiny clips for the batch tests: a coloured square moving across a plain background."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np


def square_clip(path: Path, color: tuple[int, int, int], frames: int = 8, size: int = 64) -> Path:
    """An mp4 of ``frames`` frames: a ``color`` square sliding left to right on light grey."""
    video = np.full((frames, size, size, 3), 200, np.uint8)
    side = size // 4
    for t in range(frames):
        x = 4 + t * (size - side - 8) // max(1, frames - 1)
        video[t, size // 2 - side // 2: size // 2 + side // 2, x:x + side] = color
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, video, fps=8, codec="libx264", macro_block_size=1)
    return path
