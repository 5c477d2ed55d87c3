"""The sampled frames of a clip, held so that memory does not grow with the source resolution.

Preprocessing needs each sampled frame twice: small, to segment it (every segmenter works at a
bounded *working* resolution, long side <= WORK_SIDE), and at full resolution, but only inside
the crop box, to cut out the final frames. :func:`load_sampled` decodes the source once, keeps
a working-resolution copy of every frame in memory, and keeps the full-resolution frames in
memory only while they fit MEMORY_BUDGET; beyond it they go to one temporary raw file and are read
back a box at a time. A 4K clip of 32 frames (800 MB of pixels) thus costs a few frames of RSS.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

from ds4d_cli.errors import Ds4dError
from ds4d_cli.video import DEFAULT_FOLDER_FPS, VideoInfo, choose_frames, iter_frames

#: Long side (px) of the frames the segmenters see; masks are mapped back to the source's pixels.
WORK_SIDE = 1024
#: Full-resolution frames stay in memory up to this many bytes in all, else go to a temp file.
MEMORY_BUDGET = 384 * 1024 * 1024


def working_size(size: tuple[int, int], work_side: int = WORK_SIDE) -> tuple[int, int]:
    """(W, H) scaled so that the long side is at most ``work_side`` (never enlarged)."""
    w, h = size
    s = min(1.0, work_side / max(w, h))
    return max(1, round(w * s)), max(1, round(h * s))


def downscale(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-style downscale of a uint8 frame to (W, H) (a copy even when the size is unchanged)."""
    from PIL import Image

    if (frame.shape[1], frame.shape[0]) == tuple(size):
        return np.array(frame, copy=True)
    im = Image.fromarray(np.ascontiguousarray(frame))
    return np.asarray(im.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0), dtype=np.uint8)


@dataclass
class _Spill:
    """Full-resolution frames in one temporary raw file, read back a band of rows at a time."""

    shape: tuple[int, int, int]
    file: BinaryIO = field(default_factory=lambda: tempfile.TemporaryFile(prefix="ds4d-frames-"))
    count: int = 0

    def append(self, frame: np.ndarray) -> None:
        self.file.seek(0, 2)
        self.file.write(np.ascontiguousarray(frame).tobytes())
        self.count += 1

    def rows(self, t: int, y0: int, y1: int) -> np.ndarray:
        h, w, c = self.shape
        row = w * c
        self.file.seek(t * h * row + y0 * row)
        data = self.file.read((y1 - y0) * row)
        return np.frombuffer(data, dtype=np.uint8).reshape(y1 - y0, w, c)

    def close(self) -> None:
        self.file.close()


@dataclass
class SampledClip:
    """The sampled frames: working-resolution copies in memory, full resolution on demand."""

    info: VideoInfo
    indices: list[int]
    work: list[np.ndarray]
    has_alpha: bool
    _full: list[np.ndarray] | None = field(default=None, repr=False)
    _spill: _Spill | None = field(default=None, repr=False)

    @property
    def times_s(self) -> list[float]:
        return [i / self.info.fps for i in self.indices]

    @property
    def scale(self) -> float:
        """Working pixels per source pixel (<= 1)."""
        return self.work[0].shape[1] / self.info.size[0]

    @property
    def spilled(self) -> bool:
        return self._spill is not None

    def _channels(self, frame: np.ndarray) -> np.ndarray:
        return frame if self.has_alpha else frame[..., :3]

    def full(self, t: int) -> np.ndarray:
        """Frame ``t`` at source resolution."""
        if self._spill is not None:
            return self._channels(self._spill.rows(t, 0, self.info.size[1]))
        assert self._full is not None
        return self._channels(self._full[t])

    def region(self, t: int, box: Sequence[int]) -> np.ndarray:
        """The source pixels of frame ``t`` inside ``box`` (x0, y0, x1, y1), zero outside the image."""
        x0, y0, x1, y1 = (int(v) for v in box)
        w, h = self.info.size
        channels = 4 if self.has_alpha else 3
        out = np.zeros((y1 - y0, x1 - x0, channels), np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if sx1 <= sx0 or sy1 <= sy0:
            return out
        if self._spill is not None:
            band = self._spill.rows(t, sy0, sy1)
        else:
            assert self._full is not None
            band = self._full[t][sy0:sy1]
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = self._channels(band[:, sx0:sx1])
        return out

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
        self._full = None

    def __enter__(self) -> "SampledClip":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_sampled(
    path: str | Path,
    n: int,
    start: float | None = None,
    end: float | None = None,
    folder_fps: float = DEFAULT_FOLDER_FPS,
    info: VideoInfo | None = None,
    work_side: int = WORK_SIDE,
    memory_budget: int = MEMORY_BUDGET,
) -> SampledClip:
    """Probe (unless ``info`` is given), choose ``n`` frames evenly in [start, end), decode them once."""
    info, indices = choose_frames(path, n, start, end, folder_fps, info)
    size = working_size(info.size, work_side)
    work: list[np.ndarray] = []
    full: list[np.ndarray] = []
    spill: _Spill | None = None
    transparent = False
    channels = 4 if (info.may_have_alpha or info.kind != "video") else 3
    # Decided before decoding: a store that switched half-way would have held the budget already.
    to_disk = len(indices) * info.size[0] * info.size[1] * channels > memory_budget
    try:
        for _, frame in iter_frames(info, indices):
            if (frame.shape[1], frame.shape[0]) != tuple(info.size):
                raise Ds4dError(
                    f"frame size changes inside {info.path.name} ({frame.shape[1]}x{frame.shape[0]}, "
                    f"expected {info.size[0]}x{info.size[1]})",
                    hint="export the clip again at one resolution",
                )
            transparent = transparent or (frame.shape[2] == 4 and int(frame[..., 3].min()) < 255)
            if frame.shape[2] == 3 and info.kind != "video":  # images may mix RGB and RGBA files
                frame = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
            work.append(downscale(frame, size))
            if to_disk and spill is None:
                spill = _Spill(frame.shape)  # type: ignore[arg-type]
            if spill is not None:
                spill.append(frame)
            else:
                full.append(np.array(frame, copy=True))
    except BaseException:
        if spill is not None:
            spill.close()
        raise
    if not transparent:
        work = [w[..., :3] if w.shape[2] == 4 else w for w in work]
    return SampledClip(info, list(indices), work, transparent, None if spill is not None else full, spill)


def map_box(box: Sequence[float], scale: float) -> tuple[int, int, int, int]:
    """A box in working pixels -> the smallest box in source pixels that covers it."""
    x0, y0, x1, y1 = box
    return (math.floor(x0 / scale), math.floor(y0 / scale), math.ceil(x1 / scale), math.ceil(y1 / scale))
