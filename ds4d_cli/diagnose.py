"""Is this clip, and are these masks, good enough to make a 4D asset? Checked before any fitting.

Everything here works on the working-resolution frames and the cleaned soft masks that
preprocess already has, so it costs milliseconds. Two families of findings:

* the clip: the object cut off by the frame edge (which frames, which edge, how much of the
  object's width), a moving camera (the background changes between frames), the object's size
  jumping between frames, frames without the object; and a time window where none of that
  happens, to suggest as ``--start/--end``.
* the masks: coverage (almost nothing, or most of the frame), scraps (the raw mask falls apart
  into fragments the clean-up had to throw away), area and shape that swing from frame to frame.
  Broken masks are not handed on silently: preprocess falls back or stops with the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

#: A frame's object touches an edge when it covers at least this share of its own extent there.
CUT_MIN_SHARE = 0.03
#: Consecutive frames whose object area differs by more than this factor "jump".
SIZE_JUMP = 2.0
#: Long side (px) the moving-camera check works at; blur sigma there; a background pixel changes
#: when its blurred colour moves by more than CHANGE_LEVEL (0-255) from the clip's median.
MOTION_SIDE = 160
MOTION_BLUR = 1.5
CHANGE_LEVEL = 14.0
#: The camera moves when, in the median frame, more than this share of the background changed,
MOVING_SHARE = 0.25
#: or when the view drifts (the median frame's shift against the middle one) by more than this
#: share of its long side: a slow pan can leave most pixels within CHANGE_LEVEL of a median that
#: is nonetheless too blurred to be a background model (the cockatoo's first 0.8 s: 2%).
DRIFT_SHARE = 0.01
#: Long side (px) the drift is measured at.
DRIFT_SIDE = 128
#: Masks: coverage below / above these shares of the frame is broken.
MIN_COVERAGE = 0.002
MAX_COVERAGE = 0.85
#: Masks: the clean-up dropped more than this share of the raw mask (scraps), in the median frame.
MAX_SCRAP_SHARE = 0.35
#: Masks: more than this many separate parts of comparable size kept, in the median frame.
MAX_PARTS = 3
#: Masks: a frame's area outside [median / AREA_SWING, median x AREA_SWING] is an outlier.
AREA_SWING = 2.5
#: Masks: "core" pixels lie deeper than CORE_DEPTH x the frame's long side (at least 2 px) inside
#: the mask; an object has a body, slivers along a moving edge have almost no core.
CORE_DEPTH = 0.005
MIN_CORE_SHARE = 0.25


@dataclass
class Finding:
    """One problem, as the user should read it: a message, the fix, the frames concerned."""

    code: str
    message: str
    hint: str
    frames: list[int] = field(default_factory=list)
    fatal: bool = False

    def line(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


def _times(frames: Sequence[int], times_s: Sequence[float]) -> str:
    """'2.0-6.5 s' (or '3.1 s') for the sampled frames given by position."""
    if not frames:
        return ""
    a, b = times_s[frames[0]], times_s[frames[-1]]
    return f"{a:.1f} s" if len(frames) == 1 else f"{a:.1f}-{b:.1f} s"


# -- per-frame geometry ---------------------------------------------------------------------
@dataclass
class EdgeContact:
    """How much of the object lies on each image edge, as a share of its own extent there."""

    left: float = 0.0
    right: float = 0.0
    top: float = 0.0
    bottom: float = 0.0

    def worst(self) -> tuple[str, float]:
        name = max(("left", "right", "top", "bottom"), key=lambda k: getattr(self, k))
        return name, getattr(self, name)


def edge_contact(alpha: np.ndarray) -> EdgeContact:
    """Share of the object's height (left/right edges) or width (top/bottom) cut by the frame."""
    mask = np.asarray(alpha) >= 0.5
    if not mask.any():
        return EdgeContact()
    ys, xs = np.nonzero(mask)
    height = ys.max() - ys.min() + 1
    width = xs.max() - xs.min() + 1
    return EdgeContact(
        left=float(mask[:, 0].sum()) / height,
        right=float(mask[:, -1].sum()) / height,
        top=float(mask[0].sum()) / width,
        bottom=float(mask[-1].sum()) / width,
    )


def _area(alpha: np.ndarray) -> float:
    return float((np.asarray(alpha) >= 0.5).mean())


# -- the clip ---------------------------------------------------------------------------------
def background_change(frames: Sequence[np.ndarray], alphas: Sequence[np.ndarray]) -> list[float]:
    """Per frame: share of its background (object masks dilated and excluded) that differs from
    the clip's temporal median. Near 0 for a fixed camera, large when the camera moves."""
    from PIL import Image

    h, w = frames[0].shape[:2]
    s = min(1.0, MOTION_SIDE / max(w, h))
    size = (max(8, round(w * s)), max(8, round(h * s)))
    small = []
    masks = []
    for f, a in zip(frames, alphas):
        im = Image.fromarray(np.ascontiguousarray(f[..., :3])).resize(size, Image.Resampling.BOX)
        small.append(ndi.gaussian_filter(np.asarray(im, np.float32), (MOTION_BLUR, MOTION_BLUR, 0)))
        m = np.asarray(Image.fromarray((np.asarray(a) >= 0.5).astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)) > 0
        masks.append(ndi.binary_dilation(m, iterations=3))
    median = np.median(np.stack(small), axis=0)
    anywhere = np.any(np.stack(masks), axis=0)
    out = []
    for img, m in zip(small, masks):
        back = ~m & ~anywhere if (~m & ~anywhere).sum() >= 0.1 * m.size else ~m
        if back.sum() < 16:
            out.append(0.0)
            continue
        diff = np.sqrt(((img - median) ** 2).sum(axis=2))
        out.append(float((diff[back] > CHANGE_LEVEL).mean()))
    return out


def _shift(a: np.ndarray, b: np.ndarray) -> float:
    """Length (px) of the translation that best maps ``b`` onto ``a``: phase correlation, whose
    whitened spectrum weighs the scene's every edge alike (a large plain object does not win)."""
    window = np.hanning(a.shape[0])[:, None] * np.hanning(a.shape[1])[None, :]
    cross = np.fft.fft2((a - a.mean()) * window) * np.conj(np.fft.fft2((b - b.mean()) * window))
    corr = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    y, x = np.unravel_index(int(np.argmax(corr)), corr.shape)
    y = y - corr.shape[0] if y > corr.shape[0] // 2 else y
    x = x - corr.shape[1] if x > corr.shape[1] // 2 else x
    return float(np.hypot(x, y))


def view_drift(frames: Sequence[np.ndarray], alphas: Sequence[np.ndarray]) -> float:
    """Median over frames of how far the view has shifted from the middle frame's, as a share of
    the long side; the object (masks dilated) is filled with its frame's mean first, so that its
    own motion does not pass for the camera's."""
    from PIL import Image

    h, w = frames[0].shape[:2]
    s = min(1.0, DRIFT_SIDE / max(w, h))
    size = (max(8, round(w * s)), max(8, round(h * s)))
    grey = []
    for f, a in zip(frames, alphas):
        g = np.asarray(Image.fromarray(np.ascontiguousarray(f[..., :3])).convert("L").resize(size, Image.Resampling.BOX),
                       np.float32)
        m = np.asarray(Image.fromarray((np.asarray(a) >= 0.5).astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)) > 0
        m = ndi.binary_dilation(m, iterations=2)
        grey.append(np.where(m, g[~m].mean() if (~m).any() else g.mean(), g))
    mid = grey[len(grey) // 2]
    return float(np.median([_shift(g, mid) for g in grey])) / max(size)


def camera_moves(frames: Sequence[np.ndarray], alphas: Sequence[np.ndarray]) -> tuple[bool, float, float]:
    """(moving?, median share of the background that changed, the view's drift as a share of its side)."""
    if len(frames) < 3:
        return False, 0.0, 0.0
    share = float(np.median(background_change(frames, alphas)))
    drift = view_drift(frames, alphas)
    return share > MOVING_SHARE or drift > DRIFT_SHARE, share, drift


def camera_text(share: float, drift: float) -> str:
    """What the camera check measured, for a message."""
    return (f"the background changes in {share:.0%} of its pixels between frames and the view drifts by "
            f"{drift:.1%} of its width")


@dataclass
class ClipReport:
    findings: list[Finding]
    window: tuple[float, float] | None  # suggested --start/--end (seconds), when one exists
    camera_moving: bool
    background_changed: float
    view_drift: float
    good: list[bool]


def check_clip(
    alphas: Sequence[np.ndarray],
    times_s: Sequence[float],
    fps: float,
    camera: tuple[bool, float, float] | None = None,
) -> ClipReport:
    """Cut-off, size jumps, empty frames (and the camera, when measured) -> findings + a window."""
    n = len(alphas)
    present = [_area(a) > 0 for a in alphas]
    contacts = [edge_contact(a) for a in alphas]
    cut = [p and c.worst()[1] >= CUT_MIN_SHARE for p, c in zip(present, contacts)]
    areas = [_area(a) for a in alphas]
    jumps: set[int] = set()
    prev = None
    for t in range(n):
        if not present[t]:
            continue
        if prev is not None and max(areas[t], areas[prev]) > SIZE_JUMP * min(areas[t], areas[prev]):
            jumps.update((prev, t))
        prev = t
    findings: list[Finding] = []
    window = _good_window([p and not c and t not in jumps for t, (p, c) in enumerate(zip(present, cut))], times_s, fps)
    fix_window = f"; try --start {window[0]:g} --end {window[1]:g}" if window else ""
    cut_frames = [t for t in range(n) if cut[t]]
    if cut_frames:
        sides: dict[str, float] = {}
        for t in cut_frames:
            name, share = contacts[t].worst()
            sides[name] = max(sides.get(name, 0.0), share)
        where = ", ".join(f"the {k} edge up to {v:.0%} of its {'height' if k in ('left', 'right') else 'width'}"
                          for k, v in sorted(sides.items(), key=lambda kv: -kv[1]))
        findings.append(Finding(
            "cut-off",
            f"the object is cut off by the frame in {len(cut_frames)} of {n} frames, {_frames_text(cut_frames, times_s)}, "
            f"at {where}: the fit cannot invent the missing part",
            "film the whole object with a margin around it" + (fix_window or ", or choose --start/--end where it is whole"),
            cut_frames,
        ))
    if jumps:
        j = sorted(jumps)
        findings.append(Finding(
            "size-jump",
            f"the object's size jumps between frames, {_frames_text(j, times_s)}: its area goes from "
            f"{min(areas[t] for t in j):.1%} to {max(areas[t] for t in j):.1%} of the frame",
            "keep a steady distance to the object (a zoom or a close pass breaks the fit)" + fix_window,
            j,
        ))
    empty = [t for t in range(n) if not present[t]]
    if empty:
        findings.append(Finding(
            "empty",
            f"no object in {len(empty)} of {n} frames, {_frames_text(empty, times_s)}",
            "keep the object in view" + (fix_window or ", or choose --start/--end where it is"),
            empty,
        ))
    moving, share, drift = camera if camera is not None else (False, 0.0, 0.0)
    return ClipReport(findings, window if findings else None, moving, share, drift,
                      [p and not c and t not in jumps for t, (p, c) in enumerate(zip(present, cut))])


def _frames_text(frames: Sequence[int], times_s: Sequence[float]) -> str:
    """Which sampled frames (positions in the output), and when: 'frames 2, 4, 6 (4.0-11.9 s)'."""
    if len(frames) == 1:
        return f"frame {frames[0]} at {times_s[frames[0]]:.1f} s"
    contiguous = frames[-1] - frames[0] == len(frames) - 1
    which = (f"{frames[0]}-{frames[-1]}" if contiguous else
             ", ".join(str(f) for f in frames) if len(frames) <= 6 else f"{len(frames)} between {frames[0]} and {frames[-1]}")
    return f"frames {which} ({_times([frames[0], frames[-1]], times_s)})"


def _good_window(good: Sequence[bool], times_s: Sequence[float], fps: float) -> tuple[float, float] | None:
    """Longest run of good sampled frames (at least 3 and a quarter of them) as (start, end) s."""
    best: tuple[int, int] | None = None
    t = 0
    n = len(good)
    while t < n:
        if good[t]:
            u = t
            while u + 1 < n and good[u + 1]:
                u += 1
            if best is None or u - t > best[1] - best[0]:
                best = (t, u)
            t = u + 1
        else:
            t += 1
    if best is None or best[1] - best[0] + 1 < max(3, n // 4) or best[1] - best[0] + 1 == n:
        return None
    start = times_s[best[0]]
    end = times_s[best[1]] + 1.0 / fps
    return round(start, 2), round(end + 0.005, 2)


# -- the masks --------------------------------------------------------------------------------
def _parts(mask: np.ndarray) -> tuple[int, float]:
    """(parts of comparable size, share of the mask outside the largest parts)."""
    labels, count = ndi.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return 0, 0.0
    areas = np.bincount(labels.ravel())[1:]
    big = areas >= 0.3 * areas.max()
    return int(big.sum()), float(areas[~big].sum() / areas.sum())


def check_masks(
    raw: Sequence[np.ndarray], cleaned: Sequence[np.ndarray], segmenter: str, background_model: bool = True
) -> list[Finding]:
    """Findings that mean the masks are broken (each fatal unless a fallback or --force-masks).

    ``background_model``: the masks come from a plate or a temporal median, whose typical failure
    (a slow body absorbed into the median) makes the area swing and vanish mid-clip. A saliency
    model's masks follow the object instead, so there a swinging area is the clip's problem
    (the object's size jumps: :func:`check_clip` warns) rather than the masks'.
    """
    n = len(cleaned)
    areas = np.array([_area(a) for a in cleaned])
    raw_areas = np.array([_area(a) for a in raw])
    present = areas > 0
    findings: list[Finding] = []
    fix = ("pass --background-plate EMPTY.png, choose another --segmenter, or --force-masks to keep them"
           if segmenter == "static-bg" else "choose another --segmenter, or --force-masks to keep them")
    if not present.any():
        return findings  # "no object found" is reported by the stage itself
    mean_cover = float(areas[present].mean())
    if mean_cover < MIN_COVERAGE:
        findings.append(Finding("coverage", f"the masks ({segmenter}) keep only {mean_cover:.2%} of the frame as object",
                                fix, [], True))
    if mean_cover > MAX_COVERAGE:
        findings.append(Finding("coverage", f"the masks ({segmenter}) take {mean_cover:.0%} of the frame as object "
                                "(the background, not an object)", fix, [], True))
    scraps = [1.0 - a / r if r > 0 else 0.0 for a, r in zip(areas, raw_areas)]
    parts = [_parts(np.asarray(r) >= 0.5)[0] for r in raw]
    if float(np.median(scraps)) > MAX_SCRAP_SHARE or float(np.median(parts)) > MAX_PARTS:
        findings.append(Finding(
            "scraps",
            f"the masks ({segmenter}) fall apart into scraps (median frame: {np.median(parts):.0f} parts, "
            f"{np.median(scraps):.0%} of the mask dropped as specks)",
            fix, [], True))
    depth = max(2.0, CORE_DEPTH * max(cleaned[0].shape))
    cores = [_core_share(np.asarray(a) >= 0.5, depth) for a, p in zip(cleaned, present) if p]
    if float(np.median(cores)) < MIN_CORE_SHARE:
        findings.append(Finding(
            "scraps",
            f"the masks ({segmenter}) are thin scraps, not a body (median frame: {np.median(cores):.0%} of the mask "
            f"lies more than {depth:.0f} px inside it)",
            fix, [], True))
    med = float(np.median(areas[present]))
    first, last = int(np.argmax(present)), n - 1 - int(np.argmax(present[::-1]))
    # frames out of the band, and frames where the mask vanishes between frames that have one
    outliers = [t for t in range(n) if (present[t] or first < t < last)
                and not (med / AREA_SWING <= areas[t] <= med * AREA_SWING)]
    if background_model and len(outliers) >= max(2, int(np.ceil(0.15 * n))):
        findings.append(Finding(
            "area-swing",
            f"the mask area swings between frames ({len(outliers)} of {n} frames outside {med / AREA_SWING:.1%}-"
            f"{med * AREA_SWING:.1%} of the frame)",
            fix, outliers, True))
    return findings


def _core_share(mask: np.ndarray, depth: float) -> float:
    """Share of the mask's pixels farther than ``depth`` px from its outline."""
    if not mask.any():
        return 0.0
    inside = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return float((inside > depth).sum() / mask.sum())
