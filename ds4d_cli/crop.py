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


def clip_box(alphas: Sequence[np.ndarray], margin: float = 0.1, scale: float = 1.0) -> tuple[int, int, int, int]:
    """Square box covering the object in every frame, ``margin`` x its size added on each side.

    ``scale``: mask pixels per source pixel (masks made at a working resolution); the box is
    returned in source pixels.
    """
    boxes = [b for b in (object_box(a) for a in alphas) if b is not None]
    if not boxes:
        raise ValueError("no frame has any object pixel")
    x0 = math.floor(min(b[0] for b in boxes) / scale)
    y0 = math.floor(min(b[1] for b in boxes) / scale)
    x1 = math.ceil(max(b[2] for b in boxes) / scale)
    y1 = math.ceil(max(b[3] for b in boxes) / scale)
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


def reduction(box: Sequence[int], size: int) -> int:
    """Integer factor by which a box's source pixels may be averaged before the final resize.

    Lanczos from a box many times the output size costs memory and time for nothing: averaging
    k x k blocks first (k chosen so at least twice the output size remains) changes nothing visible.
    """
    return max(1, (int(box[2]) - int(box[0])) // (2 * size))


def snap_box(box: Sequence[int], size: int) -> tuple[int, int, int, int]:
    """Grow a square box so that its side is a multiple of :func:`reduction` (exact block averaging)."""
    x0, y0, x1, _ = (int(v) for v in box)
    k = reduction(box, size)
    side = -(-(x1 - x0) // k) * k
    return x0, y0, x0 + side, y0 + side


def sample_alpha(alpha: np.ndarray, box: Sequence[int], scale: float, shape: tuple[int, int]) -> np.ndarray:
    """The mask (made at ``scale`` x source resolution) resampled on a ``shape`` grid over ``box``.

    ``box`` is in source pixels; pixel centres are matched, outside the mask is 0.
    """
    from scipy import ndimage as ndi

    x0, y0, x1, y1 = box
    rows, cols = shape
    ys = (y0 + (np.arange(rows) + 0.5) * (y1 - y0) / rows) * scale - 0.5
    xs = (x0 + (np.arange(cols) + 0.5) * (x1 - x0) / cols) * scale - 0.5
    if abs(scale - 1.0) < 1e-9 and rows == y1 - y0 and cols == x1 - x0:
        win = _window(np.asarray(alpha, np.float32)[..., None], box)[..., 0]
        return win
    grid = np.meshgrid(ys, xs, indexing="ij")
    out = ndi.map_coordinates(np.asarray(alpha, np.float32), grid, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def crop_region(region: np.ndarray, alpha: np.ndarray, box: Sequence[int], scale: float, size: int) -> np.ndarray:
    """Like :func:`crop_rgba`, from the box's source pixels (``region``) and a working-resolution mask.

    Opaque sources are block-averaged first (see :func:`reduction`); a source with its own alpha
    is resized in one premultiplied step.
    """
    k = reduction(box, size) if region.shape[2] == 3 else 1
    if k > 1:
        from PIL import Image

        region = np.asarray(Image.fromarray(np.ascontiguousarray(region)).reduce(k), dtype=np.uint8)
    side = region.shape[0]
    a = sample_alpha(alpha, box, scale, (side, side))
    return crop_rgba(region, a, (0, 0, side, side), size)
