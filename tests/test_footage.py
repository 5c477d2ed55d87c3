"""Real-footage habits: decoding only the sampled frames, bounded memory on 4K, masks checked before
they are handed on, and clips that cannot make a good asset explained before any fitting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from ds4d_cli import diagnose, video
from ds4d_cli.errors import Ds4dError
from ds4d_cli.framestore import load_sampled
from ds4d_cli.stages.preprocess import PreprocessOptions, run


def _lavfi_clip(path: Path, size: str, frames: int, fps: int = 10) -> Path:
    """A clip whose frame n shows a white box at x = 40 n px over a dark grey field (tiny file)."""
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
         f"color=c=0x202020:s={size}:r={fps}:d={frames / fps}[bg];color=c=white:s=200x300:r={fps}[box];"
         "[bg][box]overlay=x=40*n:y=100:shortest=1", "-frames:v", str(frames),
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    return path


def _box_x(frame: np.ndarray) -> int:
    cols = np.nonzero(frame[..., :3].mean(axis=2).max(axis=0) > 128)[0]
    return int(cols.min())


def test_probe_and_read_hand_over_only_the_sampled_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = _lavfi_clip(tmp_path / "uhd.mp4", "3840x2160", 12)
    info = video.probe(clip)
    assert (info.frame_count, info.size, info.may_have_alpha) == (12, (3840, 2160), False)
    reads: list[int] = []
    real = video._read_exactly
    monkeypatch.setattr(video, "_read_exactly", lambda stream, n: (reads.append(n), real(stream, n))[1])
    frames = video.read_frames(info, [2, 7, 11])
    assert len(reads) == 3 and reads[0] == 3840 * 2160 * 3  # three frames through the pipe, not twelve
    every = [np.frombuffer(b, np.uint8).reshape(2160, 3840, 3) for b in list(imageio_ffmpeg.read_frames(str(clip)))[1:]]
    assert len(every) == 12
    positions = [_box_x(f) for f in every]
    assert len(set(positions)) == 12  # every frame tells which it is
    assert [_box_x(f) for f in frames] == [positions[2], positions[7], positions[11]]


# VmHWM, not getrusage: a child's ru_maxrss starts at the peak of the process that forked it.
_RSS_CHILD = r"""
import re, sys
from ds4d_cli.framestore import load_sampled
clip = load_sampled(sys.argv[1], 8, memory_budget=int(sys.argv[2]))
region = clip.region(5, (-100, 0, 1900, 2000))
peak = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) // 1024
print(clip.spilled, clip.work[0].shape, int(region[..., 0].max()), peak)
"""


def test_4k_frames_are_held_with_bounded_memory(tmp_path: Path) -> None:
    """8 sampled 4K frames (200 MB of pixels) with a 64 MB budget: spilled, small working copies."""
    clip = _lavfi_clip(tmp_path / "uhd.mp4", "3840x2160", 12)
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(clip), str(64 * 2**20)], capture_output=True,
                         text=True, check=True).stdout.split()
    spilled, peak_mb = out[0], int(out[-1])
    assert spilled == "True" and "(576, 1024, 3)" in " ".join(out[1:4])
    assert int(out[4]) == 255  # the white box of frame 5 lies inside the region read back
    assert peak_mb < 300, peak_mb  # interpreter + numpy + PIL + a few 4K frames (25 MB each), not all eight


def test_working_copies_and_regions_match_the_source(windmill_dir: Path) -> None:
    clip = load_sampled(windmill_dir / "input.mp4", 4, memory_budget=0)  # everything spilled
    ref = video.read_frames(video.probe(windmill_dir / "input.mp4"), clip.indices)
    assert clip.spilled and clip.scale == 1.0
    for t, frame in enumerate(ref):
        assert np.array_equal(clip.full(t), frame) and np.array_equal(clip.work[t], frame)
        region = clip.region(t, (-10, 20, 100, 130))
        assert np.array_equal(region[:, 10:], frame[20:130, 0:100]) and not region[:, :10].any()


# -- clips that cannot make a good asset -------------------------------------------------------
def test_cut_off_object_is_reported_with_frames_edge_and_a_window() -> None:
    alphas = []
    for t in range(12):
        a = np.zeros((90, 160), np.float32)
        x0 = 60 if t < 9 else 120 + 15 * (t - 9)  # reaches the right edge at frame 9, then slides out
        a[30:60, x0 : x0 + 40] = 1.0
        alphas.append(a)
    report = diagnose.check_clip(alphas, [t / 4 for t in range(12)], 4.0)
    cut = [f for f in report.findings if f.code == "cut-off"]
    assert len(cut) == 1 and cut[0].frames == [9, 10, 11]
    assert "right edge" in cut[0].message and "3 of 12 frames" in cut[0].message
    assert report.window == (0.0, 2.25) and "--start 0 --end 2.25" in cut[0].hint


def test_view_drift_sees_a_pan_and_not_a_moving_object() -> None:
    """A textured scene panning 2 px a frame drifts; the same scene held still, with a large plain
    object sliding across it (its masks given), does not -- nor does it without the masks when the
    scene's texture dominates; and a 3-frame clip is too short to tell."""
    rng = np.random.default_rng(1)
    scene = (rng.random((140, 220, 3)) * 255).astype(np.uint8)
    pan = [np.ascontiguousarray(scene[10:130, 2 * t:2 * t + 160]) for t in range(9)]
    none = [np.zeros((120, 160), np.float32) for _ in range(9)]
    assert diagnose.view_drift(pan, none) > 2 * diagnose.DRIFT_SHARE  # 3.2 px at 128 on the median frame
    still, masks = [], []
    for t in range(9):
        f = np.ascontiguousarray(scene[10:130, 20:180]).copy()
        m = np.zeros((120, 160), np.float32)
        m[30:90, 10 + 8 * t:70 + 8 * t] = 1.0
        f[m > 0] = (200, 60, 40)
        still.append(f)
        masks.append(m)
    assert diagnose.view_drift(still, masks) == 0.0
    assert diagnose.view_drift(still, none) <= diagnose.DRIFT_SHARE
    moving, share, drift = diagnose.camera_moves(pan, none)
    assert moving and drift > diagnose.DRIFT_SHARE
    assert not diagnose.camera_moves(still, masks)[0]
    assert diagnose.camera_moves(pan[:2], none[:2]) == (False, 0.0, 0.0)


@pytest.mark.slow
def test_slow_pan_is_a_moving_camera_and_hybrid_keeps_the_whole_bird(tmp_path: Path, examples_dir: Path, reported) -> None:
    """The cockatoo's first 0.8 s: the camera pans slowly (about 2% of the width), too little for
    the background-change test alone but enough to blur a median plate into junk. The drift says
    the camera moves, hybrid drops the plate, and its masks (u2netp's full views) keep the bird in
    every frame instead of a head or scraps."""
    ws = tmp_path / "ws"
    run(ws, PreprocessOptions(source=str(examples_dir / "cockatoo" / "input.mp4"), frames=8, size=64,
                              start=0.0, end=0.8, force_masks=True))
    meta = json.loads((ws / "preprocess" / "meta.json").read_text())
    err = "\n".join(reported.warnings())
    assert meta["camera_moving"] and meta["view_drift"] > diagnose.DRIFT_SHARE and "the view drifts" in err
    assert meta["segmenter"] == "hybrid" and "hybrid used u2netp alone" in err
    areas = [float((np.asarray(Image.open(p))[..., 3] >= 128).mean()) for p in sorted((ws / "preprocess" / "frames").glob("*.png"))]
    assert len(areas) == 8 and min(areas) > 0.15, areas


@pytest.mark.slow
def test_cockatoo_is_cut_off_and_filmed_by_a_moving_camera(tmp_path: Path, examples_dir: Path, reported) -> None:
    ws = tmp_path / "ws"
    run(ws, PreprocessOptions(source=str(examples_dir / "cockatoo" / "input.mp4"), frames=6, size=64))
    err = "\n".join(reported.warnings())
    meta = json.loads((ws / "preprocess" / "meta.json").read_text())
    assert meta["camera_moving"] and "the camera moves" in err
    codes = {f["code"] for f in meta["findings"]}
    assert "cut-off" in codes and "cut off by the frame" in err, err
    # static-bg cannot work there: it says so and falls back to the hybrid segmenter
    run(ws, PreprocessOptions(source=str(examples_dir / "cockatoo" / "input.mp4"), frames=6, size=64,
                              segmenter="static-bg"))
    err = "\n".join(reported.warnings())
    assert "static-bg needs a fixed camera" in err and "falling back to --segmenter hybrid" in err
    assert json.loads((ws / "preprocess" / "meta.json").read_text())["segmenter"] == "hybrid"


# -- broken masks are not handed on -------------------------------------------------------------
def _slow_walker(path: Path) -> Path:
    """A big plain body drifting 1 px per frame over a textured wall: a temporal median keeps most
    of the body (it covers those pixels in most frames), static-bg finds only slivers at its ends."""
    rng = np.random.default_rng(0)
    wall = rng.integers(40, 120, (120, 160, 3)).astype(np.uint8)
    frames = []
    for t in range(12):
        f = wall.copy()
        f[20:100, 40 + t : 100 + t] = (210, 170, 120)
        frames.append(f)
    return video.write_mp4(path, frames, fps=10)


def test_median_absorbing_the_object_stops_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reported) -> None:
    clip = _slow_walker(tmp_path / "walker.mp4")
    from ds4d_cli.stages import preprocess as stage

    monkeypatch.setattr(stage, "model_path", lambda name: None)  # no u2netp here: no fallback possible
    opts = PreprocessOptions(source=str(clip), frames=12, size=64, segmenter="static-bg")
    with pytest.raises(Ds4dError) as exc:
        run(tmp_path / "ws", opts)
    assert "scraps" in exc.value.message or "swings" in exc.value.message, exc.value.message
    assert "--background-plate" in exc.value.hint and "--force-masks" in exc.value.hint
    assert not (tmp_path / "ws" / "preprocess" / "manifest.json").exists()
    opts.force_masks = True
    run(tmp_path / "ws", opts)
    assert any("kept: --force-masks" in w for w in reported.warnings())
