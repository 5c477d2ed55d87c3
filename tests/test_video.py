"""Video I/O: real ffmpeg round trips, even sampling, image folders and the errors users see."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ds4d_cli import video
from ds4d_cli.errors import Ds4dError


def _moving_square(n: int, w: int, h: int) -> list[np.ndarray]:
    """Smooth gradient background with a bright square moving right: easy to compare after H.264."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for t in range(n):
        img = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], axis=-1).astype(np.uint8)
        x0 = 4 + t * 3
        img[10:26, x0 : x0 + 16] = (250, 250, 40)
        frames.append(img)
    return frames


def test_mp4_round_trip_keeps_count_size_fps_and_content(tmp_path: Path) -> None:
    frames = _moving_square(10, 64, 48)
    out = video.write_mp4(tmp_path / "clip.mp4", frames, fps=10)
    info = video.probe(out)
    assert (info.frame_count, info.fps, info.size) == (10, 10.0, (64, 48))
    assert info.duration_s == pytest.approx(1.0)
    back = video.read_frames(info)
    assert len(back) == 10
    errors = [np.abs(a.astype(int) - b[..., :3].astype(int)).mean() for a, b in zip(frames, back)]
    assert max(errors) < 4.0, errors  # H.264 at crf 18 on smooth content
    # the square moves: frame 9 must match frame 9, not frame 0
    assert np.abs(back[9][..., :3].astype(int) - frames[9]).mean() < np.abs(back[9][..., :3].astype(int) - frames[0]).mean()
    assert not list(tmp_path.glob(".*tmp*")), "atomic writer left a temporary file"


def test_odd_sizes_are_padded_to_even_and_rgba_composited(tmp_path: Path) -> None:
    rgba = np.zeros((31, 45, 4), np.uint8)
    rgba[..., 0] = 255  # red but fully transparent -> background colour
    info = video.probe(video.write_mp4(tmp_path / "odd.mp4", [rgba] * 3, fps=5, background=(0, 0, 255)))
    assert info.size == (46, 32)
    frame = video.read_frames(info, [1])[0]
    assert frame[..., 2].mean() > 200 and frame[..., 0].mean() < 40


def test_sample_indices_even_within_window() -> None:
    info = video.VideoInfo(Path("x.mp4"), "video", 12.0, 24, (8, 8))
    assert video.sample_indices(info, 32) == list(range(24))  # fewer frames than asked: all
    picks = video.sample_indices(info, 5)
    assert picks[0] == 0 and picks[-1] == 23 and len(picks) == 5
    assert np.ptp(np.diff(picks)) <= 1  # evenly spread
    window = video.sample_indices(info, 100, start=0.5, end=1.0)
    assert window == list(range(6, 12))  # 0.5 s .. 1.0 s at 12 fps, end exclusive
    with pytest.raises(Ds4dError, match="--frames must be at least 1"):
        video.sample_indices(info, 0)
    with pytest.raises(Ds4dError, match="empty time window"):
        video.sample_indices(info, 4, start=1.5, end=1.0)
    with pytest.raises(Ds4dError, match="empty time window"):
        video.sample_indices(info, 4, start=5.0)


def test_image_folder_natural_order_and_alpha(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10):
        img = np.zeros((8, 8, 4), np.uint8)
        img[..., 0] = i  # encodes the frame number
        img[..., 3] = 255
        img[0, 0, 3] = 0  # a real alpha channel
        Image.fromarray(img).save(folder / f"frame_{i}.png")
    (folder / "notes.txt").write_text("ignored")
    clip = video.load_clip(folder, 10)
    assert clip.info.kind == "images" and clip.info.frame_count == 3
    assert [int(f[1, 1, 0]) for f in clip.frames] == [1, 2, 10]
    assert clip.has_alpha and clip.frames[0].shape == (8, 8, 4)


def test_opaque_rgba_images_are_treated_as_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "opaque"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((6, 6, 4), 255, np.uint8)).save(folder / f"{i:03d}.png")
    clip = video.load_clip(folder, 3)
    assert not clip.has_alpha and clip.frames[0].shape == (6, 6, 3)


def test_gif_is_read_with_its_frame_rate(tmp_path: Path) -> None:
    frames = [Image.fromarray(f) for f in _moving_square(6, 32, 32)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    clip = video.load_clip(tmp_path / "a.gif", 10)
    assert clip.info.frame_count == 6 and clip.info.fps == pytest.approx(10.0)
    assert clip.times_s[-1] == pytest.approx(0.5)


# -- bad inputs: one line, with a hint ------------------------------------------------------
def _assert_one_line(err: Ds4dError) -> None:
    assert "\n" not in err.message and err.hint and "\n" not in err.hint


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(Ds4dError, match="no such file") as exc:
        video.probe(tmp_path / "nope.mp4")
    _assert_one_line(exc.value)


def test_text_file_is_not_a_video(tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 20)
    with pytest.raises(Ds4dError, match="cannot read notes.mp4 as a video") as exc:
        video.probe(bad)
    _assert_one_line(exc.value)


def test_truncated_mp4(tmp_path: Path, windmill_dir: Path) -> None:
    data = (windmill_dir / "input.mp4").read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(Ds4dError, match="truncated or corrupt") as exc:
        video.load_clip(bad, 4)
    _assert_one_line(exc.value)


def test_zero_length_video(tmp_path: Path) -> None:
    import imageio_ffmpeg

    empty = tmp_path / "empty.mp4"
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=red:s=64x64:d=1",
         "-frames:v", "0", str(empty)],
        check=True,
    )
    with pytest.raises(Ds4dError, match="no video frames") as exc:
        video.probe(empty)
    _assert_one_line(exc.value)


def test_image_folder_with_mixed_sizes(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "000.png")
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(folder / "001.png")
    with pytest.raises(Ds4dError, match="different sizes") as exc:
        video.probe(folder)
    _assert_one_line(exc.value)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(Ds4dError, match="holds no images"):
        video.probe(tmp_path)


def test_cut_off_faststart_mp4_reads_what_decodes_and_is_flagged(tmp_path: Path) -> None:
    """moov at the front (faststart): a cut file still decodes its first frames; we notice the cut."""
    rng = np.random.default_rng(0)  # noise: every frame takes a similar share of the file
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(30)]
    data = video.write_mp4(tmp_path / "full.mp4", frames, fps=10).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    full, cut = video.probe(tmp_path / "full.mp4"), video.probe(tmp_path / "cut.mp4")
    assert not full.looks_truncated
    assert cut.looks_truncated and 0 < cut.frame_count < 30
    clip = video.load_clip(tmp_path / "cut.mp4", 100)
    assert len(clip.frames) == cut.frame_count
    last = clip.frames[-1].astype(int)
    assert np.abs(last - frames[cut.frame_count - 1]).mean() < np.abs(last - frames[cut.frame_count - 2]).mean()
