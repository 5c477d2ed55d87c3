"""H.264 MP4 writing for exports (yuv420p, so every common player and browser plays it).

Frames are streamed to ffmpeg (imageio-ffmpeg's bundled binary) one at a time, so a long
turntable never sits in memory; the file appears under its final name only when complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ds4d_cli.fsutil import atomic_path


def write_mp4(path: Path, frames: Iterable[np.ndarray], fps: float) -> int:
    """Write uint8 [H,W,3] frames as H.264 atomically; returns the number of frames written.

    Uses the project's shared writer (:func:`ds4d_cli.video.write_mp4`) when present, so every
    MP4 ds4d writes is encoded alike; the local writer below is the fallback.
    """
    count = 0

    def counted() -> Iterator[np.ndarray]:
        nonlocal count
        for frame in frames:
            count += 1
            yield frame

    try:
        from ds4d_cli.video import write_mp4 as shared_write_mp4
    except ImportError:
        return _write_mp4_local(path, counted(), fps)
    shared_write_mp4(path, counted(), fps)
    return count


def _write_mp4_local(path: Path, frames: Iterable[np.ndarray], fps: float, quality: int = 8) -> int:
    import imageio_ffmpeg

    count = 0
    with atomic_path(path) as tmp:
        writer = None
        try:
            for frame in frames:
                frame = np.ascontiguousarray(frame[..., :3], dtype=np.uint8)
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = imageio_ffmpeg.write_frames(
                        str(tmp), (w, h), fps=float(fps), codec="libx264", pix_fmt_out="yuv420p",
                        quality=quality, macro_block_size=1, ffmpeg_log_level="error",
                        output_params=["-movflags", "+faststart"],
                    )
                    writer.send(None)  # start ffmpeg
                writer.send(frame)
                count += 1
        finally:
            if writer is not None:
                writer.close()
        if count == 0:
            raise ValueError("no frames to write")
    return count
