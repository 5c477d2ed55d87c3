"""Turntable schedule: which clip frame and which camera angle each video frame shows.

The clip plays (looping when needed) while the camera goes round the object ``orbits`` times,
starting at the input view (azimuth 0). The clip plays at least once, and is looped until the
camera moves at most :data:`MAX_STEP_DEG` per video frame, so a short clip still gives a smooth
orbit. Azimuth k of N is ``360 * orbits * k / N``: with a whole number of orbits the video loops
seamlessly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

#: Largest camera step between consecutive video frames (degrees) before the clip is looped.
MAX_STEP_DEG = 6.0


@dataclass(frozen=True)
class TurntableFrame:
    frame_index: int  # index into the model's frames
    azimuth_deg: float


def schedule(frames: Sequence[int], orbits: float, max_step_deg: float = MAX_STEP_DEG) -> list[TurntableFrame]:
    """One entry per video frame: the clip frame to show and the camera azimuth."""
    if not frames:
        raise ValueError("no frames")
    t = len(frames)
    sweep = 360.0 * abs(orbits)
    loops = max(1, math.ceil(sweep / (max_step_deg * t))) if sweep > 0 else 1
    n = t * loops
    return [TurntableFrame(frames[k % t], 360.0 * orbits * k / n) for k in range(n)]
