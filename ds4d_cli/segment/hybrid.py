"""`hybrid`: u2netp together with the clip's own static background, consistent over time.

u2netp alone (two views of each frame) finds the object but its outline is coarse, thin moving
parts flicker in and out, and frame-to-frame noise on the static parts is independent. When
the camera does not move, the clip itself knows more:

* the *plate* B (the user's ``--background-plate``, else the per-pixel temporal median) shows
  every pixel's usual look; the pixels where a frame differs from it are found by the static-bg
  segmenter (with its un-mixed, sub-pixel edges): ``c_t``, "changed now";
* pixels that look like the plate now are the same thing they are in every other such frame:
  their alpha is one *static* estimate ``A``: u2netp's mask of the plate itself, from several
  views centred on what moves (run once per clip, so it can afford them), kept only where it
  is connected to what moves (salient scenery standing apart is dropped), edge-refined;
* alpha_t = c_t * ((1 - A) + A * u_t) + (1 - c_t) * A, with u_t the frame's own u2netp mask: a
  change where the plate shows background is the object arriving (blades, wings); a change where
  the plate shows the object is either another part passing in front of it or the object having
  left (a slowly moving body that the median absorbed): the frame's u2netp mask tells which.

When the camera moves (measured on the frames, see :mod:`ds4d_cli.diagnose`) or the clip is too
short for a median, the plate is dropped, with a note, and the masks are u2netp's, each refined
on its frame's edges (:mod:`ds4d_cli.segment.refine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from scipy import ndimage as ndi

from ds4d_cli.segment.cleanup import clean_alpha, keep_object
from ds4d_cli.segment.refine import refine_edges
from ds4d_cli.segment.rembg_seg import THRESHOLD, RembgSegmenter, _windows
from ds4d_cli.segment.static_bg import MIN_FRAMES_FOR_MEDIAN, StaticBgSegmenter

#: Soft ramp (on the averaged u2netp score) around THRESHOLD, as in RembgSegmenter.
RAMP = 0.15
#: Centred zooms of the views u2netp sees of the plate (each also mirrored): it is run once per
#: clip, so it gets the full test-time augmentation; frames get one view and its mirror.
PLATE_ZOOMS = (1.0, 0.85, 0.7)
#: Sides (x the moving region's size) of the plate views centred on what moves.
PLATE_SCALES = (1.3, 1.8, 2.5)
#: Margin (fraction of the object's size) of the object-centred crop u2netp sees.
CROP_MARGIN = 0.2
#: Moving region: pixels changed in any frame, components smaller than this share of the largest dropped.
MOTION_KEEP = 0.05


def _ramp(score: np.ndarray) -> np.ndarray:
    return np.clip((score - THRESHOLD) / (2 * RAMP) + 0.5, 0.0, 1.0).astype(np.float32)


def _square_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int] | None:
    """Square (x0, y0, x1, y1) around ``mask`` plus ``margin`` x its size, clipped to the image."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = int(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    side = max(16, min(side, w, h)) if min(w, h) >= 16 else min(w, h)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bx0 = int(np.clip(round(cx - side / 2), 0, w - side))
    by0 = int(np.clip(round(cy - side / 2), 0, h - side))
    return bx0, by0, bx0 + side, by0 + side


def _connected_to(alpha: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """``alpha`` restricted to the parts of its mask that touch ``seed`` (soft edges kept)."""
    mask = alpha >= 0.5
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return alpha
    keep = np.unique(labels[seed & mask])
    keep = keep[keep > 0]
    support = np.isin(labels, keep)
    near = ndi.binary_dilation(support, iterations=2) & ~ndi.binary_dilation(mask & ~support, iterations=1)
    return np.where(near, alpha, 0.0).astype(np.float32)


@dataclass
class HybridSegmenter:
    """u2netp + the clip's static background + time; see the module docstring."""

    u2: RembgSegmenter
    plate: str | None = None
    source_size: tuple[int, int] | None = None
    name: str = "hybrid"
    notes: list[str] = field(default_factory=list)
    used_plate: str = ""  # "", "median" or "plate": what the last segment() used (for meta/tests)

    # -- u2netp views --------------------------------------------------------------------
    def _views(self, rgb: np.ndarray, box: tuple[int, int, int, int] | None, zooms: Sequence[float]) -> np.ndarray:
        """Ramped u2netp mask of ``rgb`` from centred zooms of ``box`` (each mirrored), one call."""
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = box if box is not None else (0, 0, w, h)
        crop = rgb[y0:y1, x0:x1]
        views, where = [], []
        for cx0, cy0, cx1, cy1 in _windows(x1 - x0, y1 - y0, zooms):
            v = np.ascontiguousarray(crop[cy0:cy1, cx0:cx1])
            views += [v, np.ascontiguousarray(v[:, ::-1])]
            where += [(cx0 + x0, cy0 + y0, cx1 + x0, cy1 + y0, False), (cx0 + x0, cy0 + y0, cx1 + x0, cy1 + y0, True)]
        total = np.zeros((h, w), np.float32)
        count = np.zeros((h, w), np.float32)
        for pred, (a0, b0, a1, b1, mirrored) in zip(self.u2.predictor.predict(views), where):  # type: ignore[attr-defined]
            total[b0:b1, a0:a1] += pred[:, ::-1] if mirrored else pred
            count[b0:b1, a0:a1] += 1.0
        return _ramp(total / np.maximum(count, 1.0))

    def segment(self, frames: Sequence[np.ndarray], on_frame: Callable[[], None] | None = None) -> list[np.ndarray]:
        from ds4d_cli.diagnose import camera_moves, camera_text

        rgb = [np.ascontiguousarray(f[..., :3]) for f in frames]
        if self.plate is None and len(rgb) < MIN_FRAMES_FOR_MEDIAN:
            few = f"{len(rgb)} frame is" if len(rgb) == 1 else f"{len(rgb)} frames are"
            self.notes.append(f"hybrid used u2netp alone: {few} too few for a background model")
            return self._alone(rgb, on_frame)
        bg = StaticBgSegmenter(plate=self.plate, source_size=self.source_size)
        changed = bg.segment(rgb)
        moving, share, drift = camera_moves(rgb, [clean_alpha(c) for c in changed])
        if moving:
            self.notes.append(f"hybrid used u2netp alone: no background model fits a moving camera "
                              f"({camera_text(share, drift)})")
            return self._alone(rgb, on_frame)
        self.used_plate = "plate" if self.plate is not None else "median"
        if self.plate is not None:
            # A plate of the empty scene holds no object: every change is the object, nothing else is.
            for _ in rgb:
                if on_frame is not None:
                    on_frame()
            return list(changed)
        assert bg._raw_bg is not None
        plate = np.clip(np.round(bg._raw_bg), 0, 255).astype(np.uint8)
        motion = keep_object(np.any(np.stack([c >= 0.5 for c in changed]), axis=0), MOTION_KEEP)
        seed = ndi.binary_dilation(motion, iterations=2) if motion.any() else None
        # The plate's own mask, from views centred on what moves at several scales (u2netp sees the
        # object large and the scenery around it less), and the whole frame.
        fine = self._plate_mask(plate, motion)
        if seed is not None:
            fine = _connected_to(fine, seed)
        box = _square_box((fine >= 0.5) | motion, CROP_MARGIN)
        per_frame = self._frame_masks(rgb, box, on_frame)
        # One static estimate for every frame: what does not change is the same thing all along.
        # (Averaging in each frame's own two-view mask where it shows the plate measured worse:
        # windmill 0.81 vs 0.83, flapper 0.66 vs 0.69 IoU; those views are noisier.)
        static = refine_edges(plate, fine)
        return [
            np.clip(c * ((1.0 - static) + static * u) + (1.0 - c) * static, 0.0, 1.0).astype(np.float32)
            for c, u in zip(changed, per_frame)
        ]

    def _frame_masks(
        self, rgb: Sequence[np.ndarray], box: tuple[int, int, int, int] | None, on_frame: Callable[[], None] | None
    ) -> list[np.ndarray]:
        """Each frame's own u2netp mask: the object's box and its mirror, in one call per frame.

        Only where a frame differs from a plate that shows the object does this mask decide;
        one view alone measured worse (windmill 0.80 vs 0.81, flapper 0.64 vs 0.69 IoU).
        """
        out: list[np.ndarray] = []
        for f in rgb:
            out.append(self._views(f, box, (1.0,)) if box is not None else np.zeros(f.shape[:2], np.float32))
            if on_frame is not None:
                on_frame()
        return out

    def _plate_mask(self, plate: np.ndarray, motion: np.ndarray) -> np.ndarray:
        """u2netp on the plate: the whole frame and squares of PLATE_SCALES x the moving region's
        size around its centre, each with its mirror, averaged where they overlap."""
        h, w = plate.shape[:2]
        boxes: list[tuple[int, int, int, int] | None] = [None]
        if motion.any():
            ys, xs = np.nonzero(motion)
            cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
            size = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            for k in PLATE_SCALES:
                side = int(min(round(size * k), w, h))
                x0 = int(np.clip(round(cx - side / 2), 0, w - side))
                y0 = int(np.clip(round(cy - side / 2), 0, h - side))
                boxes.append((x0, y0, x0 + side, y0 + side))
        total = np.zeros((h, w), np.float32)
        count = np.zeros((h, w), np.float32)
        for box in dict.fromkeys(boxes):
            m = self._views(plate, box, (1.0,))
            x0, y0, x1, y1 = box if box is not None else (0, 0, w, h)
            total[y0:y1, x0:x1] += m[y0:y1, x0:x1]
            count[y0:y1, x0:x1] += 1.0
        return (total / np.maximum(count, 1.0)).astype(np.float32)

    def _alone(self, rgb: Sequence[np.ndarray], on_frame: Callable[[], None] | None) -> list[np.ndarray]:
        """No usable background: u2netp's own masks (its full views, :meth:`RembgSegmenter.soft_mask`),
        edges refined on the frame. (A first view and then two of the object's box measured far
        worse on the handheld cockatoo: where the first view caught only the head, the box held the
        second to it; IoU 0.0-0.65 against the full views, which keep the whole bird.)"""
        out = []
        for f in rgb:
            out.append(refine_edges(f, self.u2.soft_mask(f)))
            if on_frame is not None:
                on_frame()
        return out
