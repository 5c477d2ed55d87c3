"""Synthetic clips for the preprocessing benchmark, made with the ffmpeg that imageio-ffmpeg ships.

`phone_4k`: what a phone records (3840x2160, 30 fps, 12 s, H.264, about 58 MB, i.e. ~38 Mbit/s,
a phone's bitrate): the windmill's RGBA frames, enlarged to 1400 px and swinging left and right,
over the windmill's background enlarged to 4K with per-frame film grain (grain is what makes real
footage expensive to decode; a clean synthetic picture would compress to almost nothing).
`archive_540p`: a short old-film-style clip (960x540, 15 frames, 12 fps): the flapper over its
background. Both are made once and cached under ~/.cache/ds4d/bench.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import imageio_ffmpeg

CACHE = Path(os.environ.get("DS4D_BENCH_CACHE", Path.home() / ".cache" / "ds4d" / "bench"))


def _ffmpeg(args: list[str], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *args, str(tmp)],
                   check=True)
    tmp.replace(out)
    return out


def overlay_clip(case_dir: Path, out: Path, size: tuple[int, int], fps: int, seconds: float, object_px: int,
                 grain: int, swing_px: int, crf: int) -> Path:
    """The case's RGBA frames (looped, enlarged to ``object_px``) over its enlarged background."""
    if out.is_file():
        return out
    w, h = size
    graph = (
        f"[0:v]scale={w}:{h}:flags=bicubic,format=yuv420p,noise=alls={grain}:allf=t[bg];"
        f"[1:v]scale={object_px}:{object_px}:flags=bicubic,fps={fps}[fg];"
        f"[bg][fg]overlay=x='(W-w)/2+{swing_px}*sin(2*PI*t/{max(seconds, 1e-3) / 2})':y='(H-h)/2':shortest=1,"
        "format=yuv420p"
    )
    args = ["-loop", "1", "-framerate", str(fps), "-i", str(case_dir / "background.png"),
            "-stream_loop", "-1", "-framerate", "12", "-i", str(case_dir / "input" / "%03d.png"),
            "-filter_complex", graph, "-t", f"{seconds}", "-r", str(fps),
            "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-g", str(fps), "-pix_fmt", "yuv420p"]
    return _ffmpeg(args, out)


def phone_4k(examples: Path) -> Path:
    return overlay_clip(examples / "windmill", CACHE / "phone_4k.mp4", (3840, 2160), 30, 12.0, 1400, 8, 500, 23)


def archive_540p(examples: Path) -> Path:
    return overlay_clip(examples / "flapper", CACHE / "archive_540p.mp4", (960, 540), 12, 15 / 12, 420, 6, 100, 20)


if __name__ == "__main__":
    import sys

    ex = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "examples")
    for make in (phone_4k, archive_540p):
        p = make(ex)
        print(p, p.stat().st_size // 1024, "KiB")
