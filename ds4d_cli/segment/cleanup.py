"""Mask clean-up shared by every segmenter: keep the object, drop specks, fill small holes.

Segmenters produce a soft alpha in [0, 1]. The clean-up decides the object's *support* on the
binarised mask (largest connected component plus any other part of comparable size, holes
smaller than a fraction of the object filled) and keeps the soft values only inside that support,
so anti-aliased edges survive while background specks vanish.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Another component is kept beside the largest when it has at least this fraction of its area
#: (an object seen in two pieces, e.g. a blade crossing in front of a thin pole).
KEEP_RATIO = 0.3
#: Holes smaller than this fraction of the object's area are filled (specular spots, thin gaps).
HOLE_RATIO = 0.02


def binarise(alpha: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    return np.asarray(alpha) >= threshold


def keep_object(mask: np.ndarray, keep_ratio: float = KEEP_RATIO) -> np.ndarray:
    """Largest 8-connected component, plus components at least ``keep_ratio`` of its size."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n <= 1:
        return mask.astype(bool)
    areas = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(areas >= keep_ratio * areas.max()) + 1
    return np.isin(labels, keep)


def fill_small_holes(mask: np.ndarray, hole_ratio: float = HOLE_RATIO) -> np.ndarray:
    """Fill enclosed background regions smaller than ``hole_ratio`` of the object's area."""
    filled = ndi.binary_fill_holes(mask)
    holes = filled & ~mask
    if not holes.any():
        return mask
    labels, n = ndi.label(holes)
    areas = np.bincount(labels.ravel())[1:]
    small = np.flatnonzero(areas <= hole_ratio * max(int(mask.sum()), 1)) + 1
    return mask | np.isin(labels, small)


def clean_alpha(alpha: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Soft alpha restricted to the cleaned object support (float32 in [0, 1]).

    Filled holes become opaque; the soft edge is kept within one pixel around the support.
    """
    alpha = np.clip(np.asarray(alpha, dtype=np.float32), 0.0, 1.0)
    mask = binarise(alpha, threshold)
    if not mask.any():
        return np.zeros_like(alpha)
    support = fill_small_holes(keep_object(mask))
    near = ndi.binary_dilation(support, structure=np.ones((3, 3), bool))
    out = np.where(near, alpha, 0.0).astype(np.float32)
    out[support & ~mask] = 1.0  # filled holes
    return out
