"""Cut generated views out of their flat background into RGBA, without model weights.

Zero123++ paints every view on a near-uniform grey. We estimate that colour from the tile's
border (median, so object pixels touching the border do not shift it), mark pixels whose
colour differs from it by more than a threshold, keep the connected components that are large
relative to the biggest one (drops speckles of sampling noise), fill holes (grey-ish regions
inside the object are still object), and soften the edge with a ramp on the colour distance.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

LOW = 10.0  # colour distance (0..255) at or below which a pixel is background
HIGH = 28.0  # distance at or above which it is fully foreground
MIN_COMPONENT_FRACTION = 0.05  # components smaller than this fraction of the largest are dropped


def background_colour(rgb: np.ndarray, border: int = 4) -> np.ndarray:
    """Median colour of a ``border``-px frame around the image."""
    b = max(1, min(border, min(rgb.shape[:2]) // 4))
    ring = np.concatenate([
        rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3),
    ])
    return np.median(ring.astype(np.float32), axis=0)


def segment_flat_background(rgb: np.ndarray, low: float = LOW, high: float = HIGH) -> np.ndarray:
    """RGBA uint8 [H,W,4] from RGB uint8 [H,W,3] on a flat background."""
    rgb = np.asarray(rgb)[..., :3]
    bg = background_colour(rgb)
    dist = np.abs(rgb.astype(np.float32) - bg).max(axis=-1)
    hard = dist > low
    labels, n = ndimage.label(hard)
    if n == 0:
        alpha = np.zeros(rgb.shape[:2], np.float32)
    else:
        sizes = ndimage.sum(hard, labels, index=np.arange(1, n + 1))
        keep_ids = np.flatnonzero(sizes >= MIN_COMPONENT_FRACTION * sizes.max()) + 1
        keep = ndimage.binary_fill_holes(np.isin(labels, keep_ids))
        soft = np.clip((dist - low) / max(high - low, 1e-6), 0.0, 1.0)
        inner = ndimage.binary_erosion(keep, iterations=2)  # deep inside: opaque even if grey
        alpha = np.where(inner, 1.0, soft * keep)
    a8 = (alpha * 255.0 + 0.5).astype(np.uint8)
    return np.concatenate([rgb.astype(np.uint8), a8[..., None]], axis=-1)
