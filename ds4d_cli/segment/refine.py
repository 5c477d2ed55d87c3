"""Edge refinement: make a coarse soft mask follow the image's own edges.

u2netp predicts at 320 x 320 and its mask is resized to the frame, so its outline is smooth and
may sit a pixel or two off the object's real edge. The guided filter (He, Sun and Tang, 2010)
fits, in every small window, alpha as a linear function of the colour; averaged over the windows
this snaps the mask's transition onto colour edges. It is the local-linear model that
closed-form matting is built on, solved locally instead of globally: a few box filters per
frame, no iterative solve, no JIT compilation. Only a band around the mask's outline changes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Window radius (px) and regulariser (on colours in [0, 1]) of the guided filter.
RADIUS = 2
EPS = 1e-3
#: Half-width (px) of the band around the 0.5 outline that refinement may change.
BAND = 3


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return ndi.uniform_filter(x, size=2 * r + 1, mode="reflect")


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int = RADIUS, eps: float = EPS) -> np.ndarray:
    """Colour guided filter: ``src`` (HxW) filtered with ``guide`` (HxWx3, values in [0, 1])."""
    I = guide.astype(np.float32)
    p = src.astype(np.float32)
    mean_I = np.stack([_box(I[..., c], radius) for c in range(3)], axis=-1)
    mean_p = _box(p, radius)
    cov_Ip = np.stack([_box(I[..., c] * p, radius) for c in range(3)], axis=-1) - mean_I * mean_p[..., None]
    var = np.empty(I.shape[:2] + (3, 3), np.float32)
    for i in range(3):
        for j in range(i, 3):
            v = _box(I[..., i] * I[..., j], radius) - mean_I[..., i] * mean_I[..., j]
            var[..., i, j] = v
            var[..., j, i] = v
    var += eps * np.eye(3, dtype=np.float32)
    a = np.linalg.solve(var, cov_Ip[..., None])[..., 0]
    b = mean_p - (a * mean_I).sum(axis=-1)
    mean_a = np.stack([_box(a[..., c], radius) for c in range(3)], axis=-1)
    mean_b = _box(b, radius)
    return (mean_a * I).sum(axis=-1) + mean_b


def refine_edges(rgb: np.ndarray, alpha: np.ndarray, band: int = BAND) -> np.ndarray:
    """``alpha`` with its outline snapped to the colour edges of ``rgb`` (uint8 or [0, 255] floats).

    Outside a band of ``band`` px around the 0.5 outline the mask is returned unchanged, so
    refinement can move an edge but never add or remove a distant region.
    """
    alpha = np.clip(np.asarray(alpha, np.float32), 0.0, 1.0)
    hard = alpha >= 0.5
    if not hard.any() or hard.all():
        return alpha
    near = ndi.binary_dilation(hard, iterations=band) & ~ndi.binary_erosion(hard, iterations=band, border_value=1)
    if not near.any():
        return alpha
    ys, xs = np.nonzero(near)
    pad = RADIUS * 2 + 2
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, alpha.shape[0])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, alpha.shape[1])
    guide = np.asarray(rgb[y0:y1, x0:x1, :3], np.float32) / 255.0
    filtered = np.clip(guided_filter(guide, alpha[y0:y1, x0:x1]), 0.0, 1.0)
    out = alpha.copy()
    sub = near[y0:y1, x0:x1]
    out[y0:y1, x0:x1][sub] = filtered[sub]
    return out
