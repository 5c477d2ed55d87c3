"""One object-centred square crop for a whole clip, and the change of intrinsics it implies.

The box is the union of the per-frame object boxes plus a margin, made square around its centre:
one box for all frames keeps the object's motion inside the frame (a per-frame box would cancel
it). The box may extend past the image; the outside is transparent padding.

Resampling is done on premultiplied colour (colour x alpha) and alpha, then un-premultiplied:
resizing straight colour would blend the (arbitrary) colour of transparent pixels into the edge
and leave dark or coloured fringes.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: Alpha above which a pixel counts towards the object's box (includes soft edges).
BOX_ALPHA = 0.02


def object_box(alpha: np.ndarray, threshold: float = BOX_ALPHA) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the pixels with alpha > threshold (x1, y1 exclusive); None if empty."""
    ys, xs = np.nonzero(np.asarray(alpha) > threshold)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def clip_box(alphas: Sequence[np.ndarray], margin: float = 0.1) -> tuple[int, int, int, int]:
    """Square box covering the object in every frame, ``margin`` x its size added on each side."""
    boxes = [b for b in (object_box(a) for a in alphas) if b is not None]
    if not boxes:
        raise ValueError("no frame has any object pixel")
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[2] for b in boxes)
    y1 = max(b[3] for b in boxes)
    side = max(x1 - x0, y1 - y0)
    side = max(2, int(math.ceil(side * (1.0 + 2.0 * margin))))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    bx0 = int(math.floor(cx - side / 2.0))
    by0 = int(math.floor(cy - side / 2.0))
    return bx0, by0, bx0 + side, by0 + side


def crop_intrinsics(box: Sequence[int], size: int) -> list[list[float]]:
    """A with K_frame = A @ K_original: shift by the box corner, scale by size / box side."""
    x0, y0, x1, _ = box
    s = size / float(x1 - x0)
    return [[s, 0.0, -x0 * s], [0.0, s, -y0 * s], [0.0, 0.0, 1.0]]


def _window(img: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The box's pixels of ``img`` (H x W x C), zero outside the image."""
    x0, y0, x1, y1 = box
    h, w = img.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0, img.shape[2]), dtype=img.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


def _resize(channel: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if channel.shape == (size, size):
        return channel.astype(np.float32)
    im = Image.fromarray(channel.astype(np.float32), mode="F")
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)


def crop_rgba(rgb: np.ndarray, alpha: np.ndarray, box: Sequence[int], size: int) -> np.ndarray:
    """Crop ``box`` out of a frame and resize it to ``size`` x ``size`` straight-alpha RGBA uint8."""
    a = np.clip(np.asarray(alpha, dtype=np.float32), 0.0, 1.0)
    stack = np.dstack([rgb[..., :3].astype(np.float32) / 255.0 * a[..., None], a])
    win = _window(stack, box)
    alpha_out = np.clip(_resize(win[..., 3], size), 0.0, 1.0)
    prem = np.stack([np.clip(_resize(win[..., c], size), 0.0, None) for c in range(3)], axis=-1)
    prem = np.minimum(prem, alpha_out[..., None])  # Lanczos overshoot must not exceed alpha
    safe = np.where(alpha_out > 1e-4, alpha_out, 1.0)
    colour = np.where(alpha_out[..., None] > 1e-4, prem / safe[..., None], 0.0)
    out = np.dstack([colour, alpha_out])
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
