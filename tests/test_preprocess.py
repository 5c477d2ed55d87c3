"""The preprocess stage end to end: outputs per CONTRACTS.md, accuracy against ground truth, the
crop, caching, and the error every bad input gives (one line, a hint, no manifest)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ds4d_cli import video
from ds4d_cli.cli import main
from ds4d_cli.crop import clip_box, crop_rgba
from ds4d_cli.errors import Ds4dError
from ds4d_cli.segment import model_path
from ds4d_cli.stages.preprocess import PreprocessOptions, run


def _gt(windmill_dir: Path, index: int) -> np.ndarray:
    return np.asarray(Image.open(windmill_dir / "input" / f"{index:03d}.png"))


def _outputs(ws: Path) -> tuple[dict, list[np.ndarray]]:
    meta = json.loads((ws / "preprocess" / "meta.json").read_text())
    frames = [np.asarray(Image.open(p)) for p in sorted((ws / "preprocess" / "frames").glob("*.png"))]
    return meta, frames


def _crop_space_iou(meta: dict, frames: list[np.ndarray], windmill_dir: Path) -> list[float]:
    """IoU of output alpha vs the ground-truth alpha pushed through the same crop and resize."""
    scores = []
    for t, index in enumerate(meta["frame_indices"]):
        gt = _gt(windmill_dir, index)
        gt_crop = crop_rgba(gt[..., :3], gt[..., 3] / 255.0, meta["crop_box"], meta["size"])[..., 3] >= 128
        ours = frames[t][..., 3] >= 128
        scores.append(float((gt_crop & ours).sum() / max((gt_crop | ours).sum(), 1)))
    return scores


def _assert_object_whole(meta: dict, frames: list[np.ndarray], windmill_dir: Path) -> None:
    """No ground-truth alpha touches the crop border, and no output alpha sits on its edge."""
    x0, y0, x1, y1 = meta["crop_box"]
    assert x1 - x0 == y1 - y0
    for index in range(meta["source_frame_count"]):
        ys, xs = np.nonzero(_gt(windmill_dir, index)[..., 3])
        assert x0 < xs.min() and xs.max() < x1 - 1 and y0 < ys.min() and ys.max() < y1 - 1, index
    for f in frames:
        a = f[..., 3]
        assert a[0].max() == 0 and a[-1].max() == 0 and a[:, 0].max() == 0 and a[:, -1].max() == 0


# -- u2netp: one shared slow run ------------------------------------------------------------
@pytest.fixture(scope="session")
def u2netp_run(tmp_path_factory: pytest.TempPathFactory, windmill_dir: Path) -> Path:
    """Preprocess windmill with the real u2netp weights, with every download path sabotaged."""
    if model_path("u2netp") is None:
        pytest.fail("u2netp weights not found: run `make setup` (it installs them offline)")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("preprocess tried to download something")

    ws = tmp_path_factory.mktemp("u2netp") / "ws"
    with pytest.MonkeyPatch.context() as mp:
        import pooch

        mp.setattr(pooch, "retrieve", no_network)
        mp.setattr(urllib.request, "urlopen", no_network)
        result = run(ws, PreprocessOptions(source=str(windmill_dir / "input.mp4"), frames=6, size=256,
                                           segmenter="u2netp"))
    assert not result.cached
    return ws


@pytest.mark.slow
def test_u2netp_mask_iou_against_ground_truth(u2netp_run: Path, windmill_dir: Path) -> None:
    meta, frames = _outputs(u2netp_run)
    assert meta["segmenter"] == "u2netp" and len(frames) == 6
    scores = _crop_space_iou(meta, frames, windmill_dir)
    print(f"u2netp IoU per frame {np.round(scores, 3).tolist()} mean {np.mean(scores):.3f}")
    assert np.mean(scores) >= 0.85, scores


@pytest.mark.slow
def test_u2netp_crop_keeps_the_object_whole(u2netp_run: Path, windmill_dir: Path) -> None:
    meta, frames = _outputs(u2netp_run)
    _assert_object_whole(meta, frames, windmill_dir)


@pytest.mark.slow
@pytest.mark.parametrize("case, bar", [("windmill", 0.78), ("flapper", 0.55)])
def test_hybrid_mask_iou_against_ground_truth(case: str, bar: float, tmp_path: Path, examples_dir: Path) -> None:
    """The default segmenter on the shared examples, no plate (the median of 6 frames): the bars
    are the bench's means (windmill 0.82, flapper 0.68 with 8 frames; flapper 0.61 with these 6)
    less a margin. They are below the issue's 0.92, which the README says and explains."""
    ws = tmp_path / "ws"
    run(ws, PreprocessOptions(source=str(examples_dir / case / "input.mp4"), frames=6, size=256))
    meta, frames = _outputs(ws)
    assert meta["segmenter"] == "hybrid"
    scores = _crop_space_iou(meta, frames, examples_dir / case)
    print(f"hybrid IoU on {case}: {np.round(scores, 3).tolist()} mean {np.mean(scores):.3f}")
    assert np.mean(scores) >= bar, scores


# -- static-bg: fast runs of the whole stage -------------------------------------------------
def _static_opts(windmill_dir: Path, **kw: object) -> PreprocessOptions:
    base = dict(source=str(windmill_dir / "input.mp4"), frames=6, size=64, segmenter="static-bg",
                background=str(windmill_dir / "background.png"))
    base.update(kw)
    return PreprocessOptions(**base)  # type: ignore[arg-type]


def test_static_bg_stage_outputs_follow_the_contract(tmp_path: Path, windmill_dir: Path) -> None:
    ws = tmp_path / "ws"
    result = run(ws, _static_opts(windmill_dir))
    assert not result.cached and result.summary["frames"] == 6
    meta, frames = _outputs(ws)
    assert meta["source"] == str((windmill_dir / "input.mp4").absolute())
    assert (meta["source_fps"], meta["duration_s"], meta["source_frame_count"]) == (12.0, 2.0, 24)
    assert meta["frame_indices"] == [0, 5, 9, 14, 18, 23]
    assert meta["frame_times_s"] == pytest.approx([i / 12 for i in meta["frame_indices"]])
    assert meta["frame_times"] == pytest.approx([i / 24 for i in meta["frame_indices"]])
    assert meta["original_size"] == [256, 256] and meta["size"] == 64 and meta["segmenter"] == "static-bg"
    x0, y0, x1, _ = meta["crop_box"]
    s = 64 / (x1 - x0)
    assert np.array(meta["crop_intrinsics"]) == pytest.approx(np.array([[s, 0, -x0 * s], [0, s, -y0 * s], [0, 0, 1]]))
    assert all(f.shape == (64, 64, 4) and f.dtype == np.uint8 for f in frames)
    assert (ws / "preprocess" / "manifest.json").is_file()
    with Image.open(ws / "preprocess" / "contact_sheet.png") as sheet:
        assert sheet.size == (7 * 128, 128)  # the source with its crop box, then the 6 frames
    scores = _crop_space_iou(meta, frames, windmill_dir)
    assert np.mean(scores) >= 0.90, scores
    _assert_object_whole(meta, frames, windmill_dir)
    # crop_intrinsics maps original pixels onto the output: the GT box lands on the output's box
    A = np.array(meta["crop_intrinsics"])
    gt = _gt(windmill_dir, meta["frame_indices"][0])[..., 3]
    ys, xs = np.nonzero(gt >= 128)
    corners = A @ np.array([[xs.min(), ys.min(), 1.0], [xs.max() + 1, ys.max() + 1, 1.0]]).T
    oy, ox = np.nonzero(frames[0][..., 3] >= 128)
    assert corners[:2, 0] == pytest.approx([ox.min(), oy.min()], abs=1.5)
    assert corners[:2, 1] == pytest.approx([ox.max() + 1, oy.max() + 1], abs=1.5)


def test_rerun_is_cached_and_size_change_is_stale(tmp_path: Path, windmill_dir: Path) -> None:
    ws = tmp_path / "ws"
    run(ws, _static_opts(windmill_dir, frames=4))
    frame0 = ws / "preprocess" / "frames" / "000.png"
    stamp = frame0.stat().st_mtime_ns
    again = run(ws, _static_opts(windmill_dir, frames=4))
    assert again.cached and frame0.stat().st_mtime_ns == stamp
    bigger = run(ws, _static_opts(windmill_dir, frames=4, size=96))
    assert not bigger.cached
    meta, frames = _outputs(ws)
    assert meta["size"] == 96 and frames[0].shape == (96, 96, 4)
    # a different clip into the same workspace is refused unless forced
    with pytest.raises(Ds4dError, match="already holds another clip"):
        run(ws, PreprocessOptions(source=str(windmill_dir / "input"), frames=4, size=64))


def test_rgba_frames_keep_their_alpha(tmp_path: Path, windmill_dir: Path) -> None:
    ws = tmp_path / "ws"
    run(ws, PreprocessOptions(source=str(windmill_dir / "input"), frames=4, size=64, fps=24.0))
    meta, frames = _outputs(ws)
    assert meta["segmenter"] == "input-alpha" and meta["source_kind"] == "images"
    assert meta["source_fps"] == 24.0 and meta["duration_s"] == 1.0
    assert min(_crop_space_iou(meta, frames, windmill_dir)) > 0.99


def test_time_window_selects_frames(tmp_path: Path, windmill_dir: Path) -> None:
    ws = tmp_path / "ws"
    run(ws, _static_opts(windmill_dir, frames=100, start=0.5, end=1.0))
    meta, frames = _outputs(ws)
    assert meta["frame_indices"] == list(range(6, 12)) and len(frames) == 6


def test_crop_premultiplies_so_edges_keep_their_colour() -> None:
    """A white disc with a soft edge over black transparent pixels: no dark fringe after resizing."""
    yy, xx = np.mgrid[0:101, 0:101]
    r = np.hypot(yy - 50, xx - 50)
    alpha = np.clip(30.5 - r, 0.0, 1.0)
    rgb = np.zeros((101, 101, 3), np.uint8)
    rgb[alpha > 0] = 255
    box = clip_box([alpha], margin=0.2)
    out = crop_rgba(rgb, alpha, box, 37)
    edge = out[..., 3] > 0
    assert edge.sum() > 100
    assert out[edge][:, :3].min() >= 250  # straight colour stays white even where alpha is tiny
    assert out[..., 3].max() == 255 and out[0, 0, 3] == 0


def test_clip_box_is_the_union_of_frames_plus_margin() -> None:
    a, b = np.zeros((50, 80)), np.zeros((50, 80))
    a[10:20, 5:15] = 1.0
    b[30:40, 60:70] = 1.0
    x0, y0, x1, y1 = clip_box([a, b], margin=0.0)
    assert (x0, x1) == (5, 70) and x1 - x0 == y1 - y0  # square on the longer side
    assert y0 <= 10 and y1 >= 40
    x0m, _, x1m, _ = clip_box([a, b], margin=0.1)
    assert x1m - x0m == 78 and x0m < 5  # 65 * 1.2, centred: may leave the image (padding)


# -- bad inputs through the CLI: one line + hint, exit 2, no manifest -----------------------
def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    _, err = capsys.readouterr()
    return int(exc.value.code or 0), err


def _make_bad(kind: str, tmp: Path, windmill_dir: Path) -> tuple[list[str], str]:
    """(extra CLI args, expected message) for each row of the README's errors table."""
    if kind == "missing":
        return [str(tmp / "nope.mp4")], "no such file"
    if kind == "text":
        (tmp / "notes.mp4").write_text("not a video\n" * 10)
        return [str(tmp / "notes.mp4")], "cannot read notes.mp4 as a video"
    if kind == "truncated":
        data = (windmill_dir / "input.mp4").read_bytes()
        (tmp / "cut.mp4").write_bytes(data[: len(data) // 2])
        return [str(tmp / "cut.mp4")], "truncated or corrupt"
    if kind == "zero-length":
        import subprocess

        import imageio_ffmpeg

        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                        "color=c=red:s=64x64:d=1", "-frames:v", "0", str(tmp / "empty.mp4")], check=True)
        return [str(tmp / "empty.mp4")], "no video frames"
    if kind == "mixed-sizes":
        (tmp / "mixed").mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp / "mixed" / "000.png")
        Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp / "mixed" / "001.png")
        return [str(tmp / "mixed")], "different sizes"
    if kind == "frames-0":
        return [str(windmill_dir / "input.mp4"), "--frames", "0"], "--frames must be at least 1"
    if kind == "no-object":
        plate = np.asarray(Image.open(windmill_dir / "background.png").convert("RGB"))
        video.write_mp4(tmp / "empty_scene.mp4", [plate] * 8, fps=12)
        return [str(tmp / "empty_scene.mp4"), "--segmenter", "static-bg"], "no object found"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["missing", "text", "truncated", "zero-length", "mixed-sizes", "frames-0", "no-object"]
)
def test_bad_input_is_one_line_with_hint_and_no_manifest(
    kind: str, tmp_path: Path, windmill_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra, expected = _make_bad(kind, tmp_path, windmill_dir)
    ws = tmp_path / "ws"
    code, err = _cli(capsys, "-w", str(ws), "preprocess", *extra)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(errors) == 1 and expected in errors[0] and "—" in errors[0], err  # message — hint
    assert err.rstrip().endswith(errors[0].rstrip()), err  # the error is the last thing printed
    assert "Traceback" not in err
    assert not (ws / "preprocess" / "manifest.json").exists()
    assert not (ws / "preprocess" / "frames").exists()


def test_unwritable_workspace(tmp_path: Path, windmill_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where the workspace's parent folder should be")
    code, err = _cli(capsys, "-w", str(blocker / "ws"), "preprocess", str(windmill_dir / "input.mp4"),
                     "--segmenter", "static-bg", "--frames", "3")
    assert code == 2 and "cannot write the workspace" in err and "Traceback" not in err
