"""Segmentation: mask clean-up, the static-bg segmenter against ground truth, offline weights.

The u2netp accuracy test runs the whole preprocess stage and lives in test_preprocess.py (one
shared, session-scoped run, because importing rembg and running it are the slow parts).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ds4d_cli import video
from ds4d_cli.errors import Ds4dError, MissingWeightsError
from ds4d_cli.segment import clean_alpha, make_segmenter, require_model
from ds4d_cli.segment.static_bg import StaticBgSegmenter, otsu_threshold, unmix


def iou(alpha: np.ndarray, gt: np.ndarray) -> float:
    a, g = alpha >= 0.5, gt >= 0.5
    return float((a & g).sum() / max((a | g).sum(), 1))


# -- clean-up -------------------------------------------------------------------------------
def test_clean_alpha_drops_specks_fills_small_holes_keeps_big_parts() -> None:
    a = np.zeros((100, 100), np.float32)
    a[20:60, 20:60] = 1.0  # the object
    a[38:40, 38:40] = 0.0  # a small hole: filled
    a[70:90, 20:40] = 1.0  # a second part, 25% of the object's size... (400 vs 1600 px)
    a[70:95, 60:95] = 0.9  # ...and a big one (875 px, 55%): kept
    a[5, 90] = 1.0  # a speck: dropped
    out = clean_alpha(a)
    assert out[39, 39] == 1.0
    assert out[5, 90] == 0.0
    assert out[80, 30] == 0.0  # below KEEP_RATIO (30%) of the largest part
    assert out[80, 80] == pytest.approx(0.9)  # soft values kept inside the support
    big_hole = np.zeros((100, 100), np.float32)
    big_hole[10:90, 10:90] = 1.0
    big_hole[30:70, 30:70] = 0.0  # 25% of the object: a real hole (a ring), not filled
    assert clean_alpha(big_hole)[50, 50] == 0.0
    assert not clean_alpha(np.zeros((10, 10), np.float32)).any()


def test_otsu_splits_a_bimodal_sample() -> None:
    rng = np.random.default_rng(0)
    low, high = rng.normal(5, 1, 5000), rng.normal(60, 5, 500)
    thr = otsu_threshold(np.concatenate([low, high]))
    misclassified = (low >= thr).sum() + (high < thr).sum()
    assert misclassified < 0.01 * (low.size + high.size)


# -- static-bg ------------------------------------------------------------------------------
def test_static_bg_median_finds_a_moving_object() -> None:
    rng = np.random.default_rng(1)
    background = rng.integers(0, 255, (1, 1, 3)) + rng.normal(0, 20, (64, 64, 3))
    frames, gts = [], []
    for t in range(8):
        img = background + rng.normal(0, 3, (64, 64, 3))
        gt = np.zeros((64, 64), np.float32)
        gt[20:36, 4 + 6 * t : 20 + 6 * t] = 1.0
        img[gt > 0] = (240, 30, 30)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        gts.append(gt)
    seg = StaticBgSegmenter()
    masks = [clean_alpha(m) for m in seg.segment(frames)]
    scores = [iou(m, g) for m, g in zip(masks, gts)]
    assert min(scores) > 0.9, scores
    assert seg.notes and "temporal-median" in seg.notes[0]


def _soft_disc_clip(n: int = 4, size: int = 64) -> tuple[np.ndarray, list, list, list]:
    """A smooth-coloured disc with a ~1 px anti-aliased edge over a textured plate, plus noise:
    frames I = a F + (1 - a) B with a, F and B all known."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    texture = ndi.gaussian_filter(rng.normal(0, 40, (size, size, 3)), (1.5, 1.5, 0))
    plate = np.clip(rng.integers(60, 200, (1, 1, 3)) + texture, 0, 255).round().astype(np.uint8)
    fg = np.stack([200 + 30 * np.sin(xx / 9), 60 + 20 * np.cos(yy / 7), 40 + 0 * xx], -1)
    frames, alphas = [], []
    for t in range(n):
        cx, cy, r = 0.3 * size + 2.3 * t, 0.5 * size + 0.7 * t, 0.18 * size
        a = np.clip(r - np.hypot(xx - cx, yy - cy) + 0.5, 0, 1)
        img = a[..., None] * fg + (1 - a[..., None]) * plate + rng.normal(0, 2, (size, size, 3))
        frames.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
        alphas.append(a)
    return plate, frames, alphas, [fg] * n


def test_static_bg_rim_is_tight_and_unmixes_to_the_true_colour(tmp_path: Path) -> None:
    """No background rim: alpha mass matches the true soft edge, and un-mixing the plate from the
    rim pixels gives back the object's colour (the raw rim pixels are visibly contaminated)."""
    plate, frames, gts, fgs = _soft_disc_clip()
    Image.fromarray(plate).save(tmp_path / "plate.png")
    seg = StaticBgSegmenter(plate=str(tmp_path / "plate.png"))
    masks = [clean_alpha(m) for m in seg.segment(frames)]
    for frame, m, g, f in zip(frames, masks, gts, fgs):
        assert iou(m, g) > 0.95
        assert abs(m.sum() - g.sum()) / g.sum() < 0.03  # the old thresholded rim was +19%
        assert np.clip(m - g, 0, None).sum() / m.sum() < 0.02  # alpha mass off the object
        edge = ((g > 0) | (m > 0)) & ~((g == 1) & (m == 1))
        assert np.abs(m - g)[edge].mean() < 0.12  # per-pixel soft-edge error
        rim = (g > 0.3) & (g < 1)
        raw_err = np.abs(frame.astype(np.float32) - f)[rim].mean()
        clean_err = np.abs(seg.decontaminate(frame, m).astype(np.float32) - f)[rim].mean()
        assert clean_err < 7.0 and clean_err < 0.5 * raw_err, (clean_err, raw_err)
    # with the true alpha, un-mixing is exact up to the noise
    exact = unmix(frames[0].astype(np.float32), plate.astype(np.float32), gts[0])
    sel = (gts[0] > 0.3) & (gts[0] < 1)
    assert np.abs(exact.astype(np.float32) - fgs[0])[sel].mean() < 5.0


@pytest.fixture(scope="module")
def windmill_clip(windmill_dir: Path) -> tuple[video.Clip, list[np.ndarray]]:
    clip = video.load_clip(windmill_dir / "input.mp4", 24)
    gts = [np.asarray(Image.open(windmill_dir / "input" / f"{i:03d}.png"))[..., 3] / 255.0 for i in clip.indices]
    return clip, gts


def test_static_bg_with_plate_matches_ground_truth(windmill_clip, windmill_dir: Path) -> None:
    clip, gts = windmill_clip
    seg = make_segmenter("static-bg", str(windmill_dir / "background.png"))
    masks = [clean_alpha(m) for m in seg.segment(clip.frames)]
    scores = [iou(m, g) for m, g in zip(masks, gts)]
    print(f"static-bg + plate IoU: mean {np.mean(scores):.3f} min {np.min(scores):.3f}")
    assert np.mean(scores) >= 0.90 and np.min(scores) >= 0.85, scores
    assert not seg.notes  # a plate needs no warning


def test_static_bg_median_loses_a_static_object_and_says_so(windmill_clip) -> None:
    """The windmill's tower never moves: a temporal median takes it for background (documented)."""
    clip, gts = windmill_clip
    seg = make_segmenter("static-bg")
    masks = [clean_alpha(m) for m in seg.segment(clip.frames)]
    assert np.mean([iou(m, g) for m, g in zip(masks, gts)]) < 0.6
    assert any("never move" in note for note in seg.notes)


def test_static_bg_plate_of_the_wrong_size(tmp_path: Path) -> None:
    plate = tmp_path / "plate.png"
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(plate)
    with pytest.raises(Ds4dError, match="plate is 12x10 but the frames are 8x8"):
        make_segmenter("static-bg", str(plate)).segment([np.zeros((8, 8, 3), np.uint8)] * 3)


def test_static_bg_needs_a_few_frames_without_plate() -> None:
    with pytest.raises(Ds4dError, match="at least 3 frames"):
        make_segmenter("static-bg").segment([np.zeros((8, 8, 3), np.uint8)] * 2)


# -- rembg weights: found locally or a clear error, never a download -------------------------
def test_missing_weights_name_the_model_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~/.u2net is searched too
    with pytest.raises(MissingWeightsError, match="weights for u2netp not found") as exc:
        require_model("u2netp")
    assert "make setup" in exc.value.hint
    with pytest.raises(MissingWeightsError, match="isnet-general-use") as exc:
        make_segmenter("isnet-general-use")
    assert "isnet-general-use.onnx" in exc.value.hint
    # rembg's own layout (<home>/models/<name>/<name>.onnx) is found too
    (tmp_path / "models" / "u2net").mkdir(parents=True)
    (tmp_path / "models" / "u2net" / "u2net.onnx").write_bytes(b"x")
    assert require_model("u2net") == tmp_path / "models" / "u2net" / "u2net.onnx"


def test_missing_weights_fail_before_importing_rembg(tmp_path: Path) -> None:
    """The slow rembg import (and its downloader) is never reached when the file is absent."""
    code = (
        "import sys\n"
        "from ds4d_cli.segment import make_segmenter\n"
        "from ds4d_cli.errors import MissingWeightsError\n"
        "try:\n    make_segmenter('u2netp')\nexcept MissingWeightsError:\n    pass\n"
        "else:\n    sys.exit('no error')\n"
        "sys.exit('rembg imported' if 'rembg' in sys.modules else 0)\n"
    )
    env = {"U2NET_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout


def test_unknown_segmenter_and_misplaced_plate() -> None:
    with pytest.raises(Ds4dError, match="unknown segmenter"):
        make_segmenter("magic")
    with pytest.raises(Ds4dError, match="only applies to --segmenter hybrid or static-bg"):
        make_segmenter("u2netp", "plate.png")
