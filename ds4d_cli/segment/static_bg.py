"""Weight-free segmentation for a fixed camera: background model + colour distance threshold.

The background is either a clean plate (an image of the empty scene, ``--background-plate``) or
the per-pixel temporal median of the clip. A temporal median only sees what *moves*: a part of
the object that stays put in most frames (a tower under spinning blades, a sitting animal) is
absorbed into the background and lost. Nothing in the clip tells such a part from the scene, so
the segmenter always notes it when it uses a median; a plate avoids the problem entirely.

Per frame: the colour distance to the background (after a light blur that tames sensor and
compression noise) is thresholded with hysteresis: Otsu's threshold on the whole clip's distances
gives sure-object seeds, and the object grows from them down to a noise-based level (background
median + 8 robust sigmas), so low-contrast parts join while isolated noise does not. A closing
bridges cracks and the blurred rim is peeled back. The edge's soft alpha is then *un-mixed* rather
than thresholded (:func:`matte`): an edge pixel is a blend of the object's colour and the known
background, and the blend weight is its alpha. Thresholding a blurred distance instead left a rim
of background about one pixel wide, which at low resolution is a large share of the object and
which a fitted model reproduces as an outline. :mod:`ds4d_cli.segment.cleanup` then keeps the
largest component. :func:`unmix` can also remove the background's share from the rim's colour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import apply_hysteresis_threshold

from ds4d_cli.errors import Ds4dError

#: Distances below this (0-255 RGB units) are never object, however clean the footage.
MIN_THRESHOLD = 6.0
#: Object/background split at the background's median + NOISE_K robust sigmas of its distance.
NOISE_K = 8.0
#: A rim pixel stays when its unblurred distance exceeds the median + EDGE_K sigmas.
EDGE_K = 4.0
#: Width (px) of the band on each side of the thresholded edge where alpha is un-mixed (see
#: matte()): the mixed pixels of an anti-aliased edge. Wider bands erode the core of thin parts
#: (a 3-px blade has none left at 2), whose colour must then come from farther away.
BAND = 1
#: Gaussian sigma (px) of the local object-colour estimate used for un-mixing.
FG_SIGMA = 2.0
#: Frames needed for a meaningful temporal median.
MIN_FRAMES_FOR_MEDIAN = 3


def load_plate(path: str | Path, size: tuple[int, int], work_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read the clean plate as float32 RGB; it must match the source's (W, H).

    ``work_size``: the (W, H) the frames were scaled to for segmentation; the plate follows.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise Ds4dError(f"background plate not found: {path}", hint="pass an image of the empty scene with --background-plate")
    try:
        with Image.open(path) as im:
            plate = np.asarray(im.convert("RGB"), dtype=np.float32)
    except (UnidentifiedImageError, OSError):
        raise Ds4dError(f"cannot read the background plate {path.name} as an image", hint="use a png or jpg") from None
    if (plate.shape[1], plate.shape[0]) != tuple(size):
        raise Ds4dError(
            f"background plate is {plate.shape[1]}x{plate.shape[0]} but the frames are {size[0]}x{size[1]}",
            hint="take the plate from the same camera at the same resolution",
        )
    if work_size is not None and tuple(work_size) != tuple(size):
        from ds4d_cli.framestore import downscale

        plate = downscale(np.clip(plate, 0, 255).astype(np.uint8), tuple(work_size)).astype(np.float32)
    return plate


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return ndi.gaussian_filter(img, sigma=(sigma, sigma, 0)) if sigma > 0 else img


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold on a 1-D sample: the split maximising the between-class variance."""
    values = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


@dataclass
class StaticBgSegmenter:
    """Background-difference segmentation; ``plate`` None means a temporal median background."""

    plate: str | None = None
    source_size: tuple[int, int] | None = None  # (W, H) of the source when frames are downscaled
    blur_sigma: float = 1.0
    name: str = "static-bg"
    notes: list[str] = field(default_factory=list)
    threshold: float | None = None  # the distance threshold used last (for meta/tests)
    _raw_bg: np.ndarray | None = field(default=None, repr=False)

    def decontaminate(self, frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """The frame's foreground colour with the background's share of rim pixels removed.

        Only valid after :meth:`segment` (it needs the background model); see :func:`unmix`.
        """
        if self._raw_bg is None:
            raise RuntimeError("decontaminate() needs segment() first")
        return unmix(frame[..., :3].astype(np.float32), self._raw_bg, alpha)

    def background(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        h, w = frames[0].shape[:2]
        if self.plate is not None:
            return load_plate(self.plate, self.source_size or (w, h), (w, h))
        if len(frames) < MIN_FRAMES_FOR_MEDIAN:
            raise Ds4dError(
                f"static-bg needs at least {MIN_FRAMES_FOR_MEDIAN} frames for its background model (got {len(frames)})",
                hint="use more --frames, pass --background-plate EMPTY.png, or choose --segmenter u2netp",
            )
        return _temporal_median(frames)

    def _distances(self, frame: np.ndarray, bg: np.ndarray, raw_bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(blurred colour distance, 3x3-median of the unblurred distance) to the background."""
        rgb = frame[..., :3].astype(np.float32)
        diff = _blur(rgb, self.blur_sigma) - bg
        raw = rgb - raw_bg
        return np.sqrt((diff * diff).sum(axis=2)), ndi.median_filter(np.sqrt((raw * raw).sum(axis=2)), size=3)

    def segment(self, frames: Sequence[np.ndarray], on_frame: Callable[[], None] | None = None) -> list[np.ndarray]:
        """Soft masks (float32 HxW in [0, 1]) for every frame.

        Two passes keep memory at a few frames' worth: the thresholds come from a subsample of
        every frame's distances, then each frame's distances are recomputed and thresholded.
        """
        raw_bg = self.background(frames)
        self._raw_bg = raw_bg
        bg = _blur(raw_bg, self.blur_sigma)
        step = max(2, int(np.ceil(np.sqrt(frames[0].shape[0] * frames[0].shape[1] / 65536.0))))
        samples = [tuple(x[::step, ::step] for x in self._distances(f, bg, raw_bg)) for f in frames]
        low, high, edge = self._thresholds(np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples]))
        self.threshold = low
        reach = max(1, int(np.ceil(3 * self.blur_sigma)))
        masks = []
        for f in frames:
            d, dp = self._distances(f, bg, raw_bg)
            hard = apply_hysteresis_threshold(d, low, high)
            hard = ndi.binary_closing(hard, structure=_CROSS, border_value=0)
            # The blur spreads a contrasted object by up to 3 sigma: a pixel that near the boundary
            # must differ from the background by itself (beyond the per-pixel noise) to stay.
            rim = hard & ~ndi.binary_erosion(hard, structure=_SQUARE, iterations=reach)
            hard &= ~(rim & (dp < edge))
            masks.append(matte(f[..., :3].astype(np.float32), raw_bg, hard, edge))
            if on_frame is not None:
                on_frame()
        if self.plate is None:
            area = float(np.mean([(m >= 0.5).mean() for m in masks]))
            self.notes.append(
                f"static-bg used a temporal-median background (object area {area:.1%} of the frame): parts of the "
                "object that never move are absorbed into it; if the contact sheet misses them, pass "
                "--background-plate EMPTY.png or use a rembg --segmenter"
            )
        return masks

    def _thresholds(self, sample: np.ndarray, psample: np.ndarray) -> tuple[float, float, float]:
        """(low, high, edge) distance thresholds from the clip's own statistics.

        ``high`` (Otsu) marks pixels that surely differ; ``low`` = background median + NOISE_K
        robust sigmas (MAD, measured on Otsu's background class) lets an object grow from those
        seeds through low-contrast parts without picking up isolated noise; ``edge`` is the same
        noise bound on the unblurred distance, used to peel the blurred rim.
        """
        otsu = otsu_threshold(sample)
        back = sample < otsu
        med, sigma = _robust(sample[back])
        low = max(MIN_THRESHOLD, med + NOISE_K * sigma)
        high = max(otsu, low)
        pmed, psigma = _robust(psample[back])
        edge = pmed + EDGE_K * psigma
        return float(low), float(high), float(edge)


def _temporal_median(frames: Sequence[np.ndarray], rows_per_chunk: int = 64) -> np.ndarray:
    """Per-pixel median over time as float32, computed in bands of rows to bound memory."""
    h = frames[0].shape[0]
    out = np.empty(frames[0].shape[:2] + (3,), np.float32)
    for r0 in range(0, h, rows_per_chunk):
        band = np.stack([f[r0 : r0 + rows_per_chunk, :, :3] for f in frames])
        out[r0 : r0 + rows_per_chunk] = np.median(band, axis=0)
    return out


_CROSS = ndi.generate_binary_structure(2, 1)
_SQUARE = np.ones((3, 3), bool)


def _robust(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based sigma (robust to the object's pixels in the sample)."""
    if values.size == 0:
        return 0.0, 0.0
    med = float(np.median(values))
    return med, float(1.4826 * np.median(np.abs(values - med)))


def _local_mean(rgb: np.ndarray, weight: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted mean colour of the pixels where ``weight`` is set, and the weight density."""
    w = ndi.gaussian_filter(weight.astype(np.float32), sigma)
    acc = ndi.gaussian_filter(rgb * weight[..., None], sigma=(sigma, sigma, 0))
    return acc / np.maximum(w, 1e-6)[..., None], w


def foreground_estimate(rgb: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Each pixel's nearby pure-object colour: a local mean over the sure core, widened where sparse."""
    fg, w = _local_mean(rgb, core, FG_SIGMA)
    wide, _ = _local_mean(rgb, core, 4 * FG_SIGMA)
    sparse = w < 0.02
    fg[sparse] = wide[sparse]
    return fg


def matte(rgb: np.ndarray, bg: np.ndarray, hard: np.ndarray, noise: float) -> np.ndarray:
    """Soft alpha: opaque core, zero far outside, and a linear un-mixing in a band around the edge.

    A boundary pixel is a mix I = a F + (1 - a) B of the object colour F and the known background
    B, so a = (I - B).(F - B) / |F - B|^2. B is the background model; F comes from the nearby core
    (the thresholded mask eroded by BAND px). This replaces a rim decided by thresholding a
    blurred distance, which at low resolution is a whole pixel too wide. Where F is too close to
    B for the ratio to mean anything, the thresholded mask is kept as it is.
    """
    core = ndi.binary_erosion(hard, structure=_SQUARE, iterations=BAND, border_value=1)
    near = ndi.binary_dilation(hard, structure=_SQUARE, iterations=BAND)
    band = near & ~core
    alpha = core.astype(np.float32)
    if not band.any():
        return alpha
    if not core.any():
        core = hard
    fg = foreground_estimate(rgb, core)
    ys, xs = np.nonzero(band)
    i_b = rgb[ys, xs] - bg[ys, xs]
    f_b = fg[ys, xs] - bg[ys, xs]
    contrast = (f_b * f_b).sum(axis=1)
    a = (i_b * f_b).sum(axis=1) / np.maximum(contrast, 1e-6)
    # Sensor noise alone moves a background pixel by up to `noise`: that projects to a small
    # alpha which must not count as object.
    floor = noise / np.sqrt(np.maximum(contrast, 1e-6))
    a = np.clip((a - floor) / np.maximum(1.0 - floor, 1e-3), 0.0, 1.0)
    weak = np.sqrt(contrast) < 3.0 * max(noise, MIN_THRESHOLD)
    a[weak] = hard[ys, xs][weak]
    alpha[ys, xs] = a
    return alpha


def unmix(rgb: np.ndarray, bg: np.ndarray, alpha: np.ndarray, min_alpha: float = 0.2) -> np.ndarray:
    """Foreground colour F = (I - (1 - a) B) / a, as uint8 RGB (exact for a known plate B).

    Dividing by a small alpha amplifies noise, so below ``min_alpha`` the colour blends toward the
    nearby opaque colour instead; opaque pixels are returned unchanged.
    """
    a = np.clip(np.asarray(alpha, np.float32), 0.0, 1.0)[..., None]
    out = rgb.copy()
    rim = (a[..., 0] > 0) & (a[..., 0] < 1)
    if not rim.any():
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    safe = np.maximum(a, min_alpha)
    raw = np.clip(bg + (rgb - bg) / safe, 0.0, 255.0)
    fg = foreground_estimate(rgb, a[..., 0] >= 0.999)
    trust = np.clip(a / min_alpha, 0.0, 1.0)
    mixed = trust * raw + (1 - trust) * fg
    out[rim] = mixed[rim]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
