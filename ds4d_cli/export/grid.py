"""A side-by-side comparison: the input frame beside the fit seen from the front, side and back.

The "front" panel uses the input camera itself (from generate/cameras.json, including the crop's
intrinsics), so it should line up with the input frame pixel for pixel; a mismatch there means the
fit did not reproduce its main training view. Side and back show what the prior had to invent.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ds4d_cli.cameras import c2w_to_viewmat
from ds4d_cli.export.views import Framing, orbit_views

#: Panels after the input frame: (label, azimuth, elevation); azimuth 0 is replaced by the input camera.
PANELS: tuple[tuple[str, float, float], ...] = (("front", 0.0, 0.0), ("side", 90.0, 0.0), ("back", 180.0, 0.0))
LABELS = ("input",) + tuple(p[0] for p in PANELS)


def grid_cameras(size: int, cameras: dict[str, Any] | None, framing: Framing) -> tuple[Tensor, Tensor]:
    """viewmats/Ks of the front, side and back panels at ``size`` px."""
    viewmats, Ks = orbit_views([p[1] for p in PANELS], [p[2] for p in PANELS], size, framing)
    inp = (cameras or {}).get("input")
    if inp:
        c2w = torch.tensor(inp["camera_to_world"], dtype=torch.float64)
        viewmats[0] = c2w_to_viewmat(c2w).float()
        K = torch.tensor(inp["K"], dtype=torch.float32)
        scale = size / float(inp["width"])
        K[:2] *= scale
        Ks[0] = K
    return viewmats, Ks


def composite_rgba(rgba: np.ndarray, background: Sequence[float], size: int) -> np.ndarray:
    """An RGBA uint8 frame over ``background`` resized to ``size``: uint8 [size,size,3]."""
    img = Image.fromarray(rgba)
    if img.mode != "RGBA":
        img = img.convert("RGBA")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    a = np.asarray(img, dtype=np.float32) / 255.0
    bg = np.asarray(background, dtype=np.float32)
    rgb = a[..., :3] * a[..., 3:] + bg * (1.0 - a[..., 3:])
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def grid_row(input_rgb: np.ndarray | None, renders: np.ndarray) -> np.ndarray:
    """One row: input (grey if unavailable) then each render; uint8 [S, 4S, 3]."""
    size = renders.shape[1]
    first = input_rgb if input_rgb is not None else np.full((size, size, 3), 128, np.uint8)
    return np.concatenate([first, *renders], axis=1)


def label_strip(size: int, labels: Sequence[str] = LABELS) -> np.ndarray:
    """A header row naming each column, height ~ size/8."""
    h = max(14, size // 8)
    img = Image.new("RGB", (size * len(labels), h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(labels):
        draw.text((i * size + 4, (h - 10) // 2), text, fill=(0, 0, 0))
    return np.asarray(img)
