"""Video I/O over imageio-ffmpeg: read any clip ffmpeg understands (or a folder of images) into
uint8 frames, sample N frames evenly in a time window, and write H.264 mp4.

Every failure a user can cause (missing file, not a video, no frames, mixed image sizes) becomes a
one-line :class:`Ds4dError`, so the CLI never shows an ffmpeg log.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ds4d_cli.errors import Ds4dError
from ds4d_cli.fsutil import atomic_path

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
#: Frame rate assumed for a folder of images (they carry none); the examples are 12 fps.
DEFAULT_FOLDER_FPS = 12.0


@dataclass(frozen=True)
class VideoInfo:
    """What a clip is, before decoding it: enough to choose which frames to read."""

    path: Path
    kind: str  # "video" | "images" | "image"
    fps: float
    frame_count: int
    size: tuple[int, int]  # (W, H)
    container_duration_s: float | None = None  # what the file's header claims (videos only)
    may_have_alpha: bool = True  # False for a video whose pixel format has no alpha channel

    @property
    def looks_truncated(self) -> bool:
        """The header promises clearly more frames than decode (a cut-off download or copy)."""
        if not self.container_duration_s:
            return False
        promised = self.container_duration_s * self.fps
        return self.frame_count < 0.8 * promised and promised - self.frame_count > 2

    @property
    def duration_s(self) -> float:
        """Duration as frame_count / fps, so every frame time lies in [0, duration)."""
        return self.frame_count / self.fps


# -- probing --------------------------------------------------------------------------------
def _natural_key(path: Path) -> list[object]:
    """'frame_2' before 'frame_10' (plain sorting would put 10 first)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder in natural order (hidden files ignored)."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS]
    return sorted(files, key=_natural_key)


def _ffmpeg_error(path: Path, exc: Exception) -> Ds4dError:
    """Turn ffmpeg's log into the one line a user needs."""
    text = str(exc)
    if "does not contain any stream" in text or "matches no streams" in text or "Stream map" in text:
        return Ds4dError(f"{path.name} has no video frames (zero-length or audio only)", hint="record or export the clip again")
    return Ds4dError(
        f"cannot read {path.name} as a video (not a video, truncated or corrupt)",
        hint="check the file plays in a video player, or pass a folder of images",
    )


def _check_exists(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise Ds4dError(f"no such file or folder: {path}", hint="check the path of the clip")
    return path


def probe(path: str | Path, folder_fps: float = DEFAULT_FOLDER_FPS) -> VideoInfo:
    """Frame count, fps and size of a video, image folder or single image (decodes the video once)."""
    path = _check_exists(Path(path))
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise Ds4dError(f"folder {path} holds no images", hint=f"use {', '.join(sorted(IMAGE_EXTS))} files")
        sizes = {}
        for f in files:
            sizes.setdefault(_image_size(f), f.name)
        if len(sizes) > 1:
            (s1, n1), (s2, n2) = list(sizes.items())[:2]
            raise Ds4dError(
                f"images in {path.name} have different sizes ({n1}: {s1[0]}x{s1[1]}, {n2}: {s2[0]}x{s2[1]})",
                hint="resize or crop all frames to one size",
            )
        return VideoInfo(path, "images", float(folder_fps), len(files), next(iter(sizes)))
    if path.suffix.lower() in IMAGE_EXTS:
        return VideoInfo(path, "image", float(folder_fps), 1, _image_size(path))

    return _probe_video(path)


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


#: Pixel formats whose frames can carry transparency (decoded as RGBA, else as RGB).
_ALPHA_PIX_FMTS = re.compile(r"^(yuva|rgba|bgra|argb|abgr|ya|pal8|gbrap|rgb32|bgr32)")


def _probe_video(path: Path) -> VideoInfo:
    """Header facts plus an exact frame count from demuxing alone (``-c copy``: no decoding).

    Counting packets this way reads the file once at disk speed; decoding it (what
    ``count_frames_and_secs`` does) cost seconds on a 4K clip.
    """
    import subprocess

    cmd = [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    try:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _ffmpeg_error(path, exc) from None
    text = done.stderr.decode(errors="replace")
    header = text.split("Output #0", 1)[0]
    stream = next((line for line in header.splitlines() if line.lstrip().startswith("Stream") and " Video: " in line), None)
    if done.returncode != 0 or stream is None:
        raise _ffmpeg_error(path, RuntimeError(text))
    counts = re.findall(r"frame=\s*(\d+)", text)
    count = int(counts[-1]) if counts else 0
    if count <= 0:
        raise Ds4dError(f"{path.name} has no video frames (zero-length)", hint="record or export the clip again")
    size = re.search(r"[ ,](\d{1,5})x(\d{1,5})[ ,\[]", stream)
    if size is None:
        raise _ffmpeg_error(path, RuntimeError(text))
    w, h = int(size.group(1)), int(size.group(2))
    rotation = re.search(r"rotation of (-?[\d.]+) degrees", header)
    if rotation and round(abs(float(rotation.group(1)))) % 180 == 90:
        w, h = h, w  # ffmpeg turns the frames upright when it decodes them
    rate = re.search(r" ([\d.]+)(k?) fps", stream) or re.search(r" ([\d.]+)(k?) tbr", stream)
    fps = float(rate.group(1)) * (1000 if rate.group(2) else 1) if rate else 0.0
    if not math.isfinite(fps) or fps <= 0:
        fps = DEFAULT_FOLDER_FPS
    claimed = None
    duration = re.search(r"Duration: (\d+):(\d+):([\d.]+)", header)
    if duration:
        secs = int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3))
        claimed = secs if secs > 0 else None
    pix_fmt = stream.split(" Video: ", 1)[1].split(",")[1].strip() if stream.count(",") >= 1 else ""
    info = VideoInfo(path, "video", fps, count, (w, h), claimed, bool(_ALPHA_PIX_FMTS.match(pix_fmt)))
    if info.looks_truncated:
        # A cut file's last packet may be partial: only decoding tells how many frames are whole.
        import dataclasses

        import imageio_ffmpeg

        try:
            decoded, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
        except (OSError, RuntimeError) as exc:
            raise _ffmpeg_error(path, exc) from None
        if not decoded:
            raise Ds4dError(f"{path.name} has no decodable video frames", hint="the file is truncated or corrupt; export the clip again")
        info = dataclasses.replace(info, frame_count=int(decoded))
    return info


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError):
        raise Ds4dError(f"cannot read image {path.name}", hint="remove or re-export that file") from None


# -- sampling -------------------------------------------------------------------------------
def sample_indices(info: VideoInfo, n: int, start: float | None = None, end: float | None = None) -> list[int]:
    """``n`` frame indices spread evenly over [start, end) seconds (all of them if fewer)."""
    if n <= 0:
        raise Ds4dError(f"--frames must be at least 1 (got {n})", hint="e.g. --frames 32")
    t0 = 0.0 if start is None else float(start)
    t1 = info.duration_s if end is None else min(float(end), info.duration_s)
    if t0 < 0:
        raise Ds4dError(f"--start must be >= 0 (got {t0:g})", hint="give a time in seconds from the clip's start")
    if t1 <= t0:
        raise Ds4dError(
            f"empty time window: start {t0:g}s, end {t1:g}s (the clip lasts {info.duration_s:g}s)",
            hint="choose --start before --end and inside the clip",
        )
    eps = 1e-6
    first = max(0, math.ceil(t0 * info.fps - eps))
    last = min(info.frame_count - 1, math.ceil(t1 * info.fps - eps) - 1)
    if last < first:
        raise Ds4dError(
            f"no frame between {t0:g}s and {t1:g}s (the clip has {info.fps:g} frames per second)",
            hint="widen the --start/--end window",
        )
    window = last - first + 1
    if window <= n:
        return list(range(first, last + 1))
    picks = np.round(np.linspace(first, last, n)).astype(int)
    return sorted(set(int(i) for i in picks))


# -- reading --------------------------------------------------------------------------------
def _to_array(im: "object") -> np.ndarray:
    """PIL image -> HxWx3 or HxWx4 uint8; alpha kept only when the image has an alpha channel."""
    from PIL import Image

    assert isinstance(im, Image.Image)
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    im = im.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def read_frames(info: VideoInfo, indices: Sequence[int] | None = None) -> list[np.ndarray]:
    """Decode the frames at ``indices`` (all when None) as HxWx3 or HxWx4 uint8 arrays.

    Videos whose pixel format can carry alpha (gif, ProRes 4444, png in mov...) are decoded as
    RGBA; :func:`drop_opaque_alpha` removes a channel that is 255 everywhere.
    """
    wanted = list(range(info.frame_count)) if indices is None else list(indices)
    found = dict(iter_frames(info, wanted))
    return [found[i] for i in wanted]


def iter_frames(info: VideoInfo, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, frame)`` for the sorted, distinct ``indices``, one frame in memory at a time.

    A video is read in one ffmpeg pass that hands over only the wanted frames (``select``) and
    stops after the last one: the cost is decoding up to the window's end, not converting and
    copying every frame of the file through a pipe. No seeking: a seek lands on a keyframe that
    is not always a clean restart point (real clips then decode with corrupt blocks).
    """
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return
    if info.kind != "video":
        from PIL import Image

        files = list_images(info.path) if info.kind == "images" else [info.path]
        for i in wanted:
            with Image.open(files[i]) as im:
                yield i, _to_array(im)
        return
    yield from _iter_video(info, wanted)


def _select_filter(offsets: Sequence[int]) -> str:
    """An ffmpeg ``select`` expression keeping the decoded frames numbered ``offsets``."""
    return "select='" + "+".join(f"eq(n,{k})" for k in offsets) + "'"


def _iter_video(info: VideoInfo, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    import subprocess
    import tempfile

    channels = 4 if info.may_have_alpha else 3
    w, h = info.size
    frame_bytes = w * h * channels
    cmd = [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
    cmd += ["-i", str(info.path), "-map", "0:v:0", "-vf", _select_filter(wanted),
            "-fps_mode", "passthrough", "-frames:v", str(len(wanted)), "-f", "rawvideo", "-pix_fmt", "rgba" if channels == 4 else "rgb24", "-"]
    with tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, bufsize=0)
        except OSError as exc:
            raise _ffmpeg_error(info.path, exc) from None
        assert proc.stdout is not None
        got = 0
        try:
            for index in wanted:
                buf = _read_exactly(proc.stdout, frame_bytes)
                if buf is None:
                    break
                got += 1
                yield index, np.frombuffer(buf, dtype=np.uint8).reshape(h, w, channels)
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if got < len(wanted):
            log.seek(0)
            text = log.read().decode(errors="replace")
            if got == 0 and text.strip():
                raise _ffmpeg_error(info.path, RuntimeError(text))
            raise Ds4dError(
                f"{info.path.name} ends early: frame {wanted[got]} of {info.frame_count} cannot be decoded",
                hint="the file is truncated or corrupt; export the clip again",
            )


def _read_exactly(stream: "object", n: int) -> bytearray | None:
    """``n`` bytes from a pipe, or None when it ends first."""
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        k = stream.readinto(view[pos:])  # type: ignore[attr-defined]
        if not k:
            return None
        pos += k
    return buf


def drop_opaque_alpha(frames: list[np.ndarray]) -> tuple[list[np.ndarray], bool]:
    """Return (frames, has_alpha): RGB when no frame has a transparent pixel, else all RGBA."""
    has_alpha = any(f.shape[2] == 4 and int(f[..., 3].min()) < 255 for f in frames)
    if has_alpha:
        return [f if f.shape[2] == 4 else np.dstack([f, np.full(f.shape[:2], 255, np.uint8)]) for f in frames], True
    return [f[..., :3] for f in frames], False


@dataclass
class Clip:
    """The frames chosen from a source, with the timing the rest of the pipeline records."""

    info: VideoInfo
    indices: list[int]
    frames: list[np.ndarray]
    has_alpha: bool

    @property
    def times_s(self) -> list[float]:
        return [i / self.info.fps for i in self.indices]


def choose_frames(path: str | Path, n: int, start: float | None, end: float | None, folder_fps: float,
                  info: VideoInfo | None) -> tuple[VideoInfo, list[int]]:
    """Probe (unless ``info`` is given) and choose ``n`` frame indices evenly in [start, end)."""
    if n <= 0:
        raise Ds4dError(f"--frames must be at least 1 (got {n})", hint="e.g. --frames 32")
    info = probe(path, folder_fps) if info is None else info
    return info, sample_indices(info, n, start, end)


def load_clip(
    path: str | Path,
    n: int,
    start: float | None = None,
    end: float | None = None,
    folder_fps: float = DEFAULT_FOLDER_FPS,
    info: VideoInfo | None = None,
) -> Clip:
    """Probe (unless ``info`` is given), choose ``n`` frames evenly in [start, end) and decode them."""
    info, indices = choose_frames(path, n, start, end, folder_fps, info)
    frames, has_alpha = drop_opaque_alpha(read_frames(info, indices))
    return Clip(info, indices, frames, has_alpha)


# -- writing --------------------------------------------------------------------------------
def _composite(frame: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=2)
    if frame.shape[2] == 3:
        return frame
    a = frame[..., 3:4].astype(np.float32) / 255.0
    rgb = frame[..., :3].astype(np.float32) * a + np.asarray(background, np.float32) * (1.0 - a)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    background: tuple[int, int, int] = (255, 255, 255),
    crf: int = 18,
) -> Path:
    """Write H.264 (yuv420p) atomically; RGBA frames are composited over ``background``.

    yuv420p needs even sides, so odd frames are padded by one edge pixel (not rescaled).
    """
    import imageio_ffmpeg

    path = Path(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("write_mp4 needs at least one frame")
    first = _composite(np.asarray(first, dtype=np.uint8), background)
    h, w = first.shape[:2]
    ph, pw = h + (h % 2), w + (w % 2)

    def prepared(f: np.ndarray) -> bytes:
        f = _composite(np.asarray(f, dtype=np.uint8), background)
        if f.shape[:2] != (h, w):
            raise ValueError(f"frame size {f.shape[1]}x{f.shape[0]} differs from the first frame's {w}x{h}")
        if (ph, pw) != (h, w):
            f = np.pad(f, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
        return np.ascontiguousarray(f).tobytes()

    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (pw, ph),
            fps=float(fps),
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            macro_block_size=1,
            quality=None,
            output_params=["-crf", str(crf), "-movflags", "+faststart"],
            ffmpeg_log_level="error",
        )
        writer.send(None)
        writer.send(prepared(first))
        for f in frames:
            writer.send(prepared(f))
        writer.close()
    return path
