"""The generate stage: import round trip and validation, none, auto fallback, zero123pp end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ds4d_cli.cameras import intrinsics_from_fov, orbit_camera
from ds4d_cli.errors import Ds4dError, MissingWeightsError
from ds4d_cli.fsutil import write_json_atomic
from ds4d_cli.priors.layout import zero123pp_views
from ds4d_cli.stages.generate import GenerateOptions, run
from ds4d_cli.workspace import Workspace

CROP = (28, 20, 228, 220)  # a 200 px square crop of the 256 px video, resized to S
S = 128


def _fake_preprocess(tmp_path: Path, windmill: Path, frames: list[int]) -> Workspace:
    """A preprocess stage as CONTRACTS.md describes it, made from the windmill's input frames."""
    ws = Workspace.create(tmp_path / "ws", windmill / "input.mp4")
    pre = ws.stage_dir("preprocess")
    cams = json.loads((windmill / "cameras.json").read_text())
    x0, y0, x1, y1 = CROP
    s = S / (x1 - x0)
    for i, f in enumerate(frames):
        im = Image.open(windmill / "input" / f"{f:03d}.png").crop(CROP).resize((S, S), Image.Resampling.LANCZOS)
        (pre / "frames").mkdir(parents=True, exist_ok=True)
        im.save(pre / "frames" / f"{i:03d}.png")
    times = [cams["frame_times"][f] for f in frames]
    write_json_atomic(pre / "meta.json", {
        "source": str(windmill / "input.mp4"), "source_fps": 12.0, "duration_s": 2.0, "source_frame_count": 24,
        "frame_indices": frames, "frame_times_s": [t * 2.0 for t in times], "frame_times": times,
        "original_size": [256, 256], "crop_box": list(CROP), "size": S, "segmenter": "u2netp",
        "crop_intrinsics": [[s, 0, -x0 * s], [0, s, -y0 * s], [0, 0, 1]],
    })
    ws.write_manifest("preprocess", {"size": S}, ws.current_inputs("preprocess"), 1, {"frames": len(frames)})
    return ws


@pytest.fixture()
def ws(tmp_path: Path, windmill_dir: Path) -> Workspace:
    return _fake_preprocess(tmp_path, windmill_dir, [0, 5, 11, 23])


def _small_import_dir(tmp_path: Path, windmill: Path, views=("az090", "az180"), frames: int = 24) -> Path:
    """A copy of the windmill's import layout with fewer views (fast to corrupt in tests)."""
    root = tmp_path / "mv"
    cams = json.loads((windmill / "cameras.json").read_text())
    cams["views"] = {k: v for k, v in cams["views"].items() if k == "input" or k in views}
    root.mkdir()
    (root / "cameras.json").write_text(json.dumps(cams))
    for v in views:
        shutil.copytree(windmill / "gt" / v, root / "gt" / v)
    return root


# -- import ---------------------------------------------------------------------------------------
def test_import_round_trips_the_windmill_subset(ws: Workspace, windmill_dir: Path) -> None:
    opts = GenerateOptions(prior="import", import_dir=str(windmill_dir), views=["az090", "az270"])
    result = run(ws, opts)
    assert not result.cached and result.summary["views"] == ["az090", "az270"]
    cams = json.loads((ws.stage_dir("generate") / "cameras.json").read_text())
    src = json.loads((windmill_dir / "cameras.json").read_text())
    assert cams["prior"] == "import" and cams["frames"] == 4
    assert [v["name"] for v in cams["views"]] == ["az090", "az270"]
    assert cams["views"][0]["camera_to_world"] == src["views"]["az090"]["camera_to_world"]
    # frames of the preprocessed clip map to the same instants in DIR (nearest normalised time)
    assert cams["source_frames"] == [0, 5, 11, 23]
    for i, f in enumerate([0, 5, 11, 23]):
        for v, name in enumerate(["az090", "az270"]):
            got = (ws.stage_dir("generate") / "views" / f"{i:03d}" / f"{v:02d}.png").read_bytes()
            assert got == (windmill_dir / "gt" / name / f"{f:03d}.png").read_bytes()
    # the input camera is DIR's, with K mapped into the cropped frames: K = A @ K_original
    assert cams["input"]["camera_to_world"] == src["views"]["input"]["camera_to_world"]
    K = np.array(cams["input"]["K"])
    s = S / (CROP[2] - CROP[0])
    fx = src["intrinsics"]["fx"]
    assert K[0, 0] == pytest.approx(fx * s) and K[0, 2] == pytest.approx((128 - CROP[0]) * s)
    assert K[1, 2] == pytest.approx((128 - CROP[1]) * s) and cams["input"]["width"] == S
    # a world point projects to the same place in the crop as in the original frame, mapped by the crop
    c2w = np.array(cams["input"]["camera_to_world"])
    p_cam = np.linalg.inv(c2w) @ np.array([0.2, 0.1, 0.3, 1.0])
    K0 = np.array([[fx, 0, 128], [0, fx, 128], [0, 0, 1]])
    uv0, uv = K0 @ p_cam[:3], K @ p_cam[:3]
    assert uv[:2] / uv[2] == pytest.approx(((uv0[:2] / uv0[2]) - CROP[:2]) * s)
    assert run(ws, opts).cached


def test_import_maps_frames_by_nearest_time(tmp_path: Path, windmill_dir: Path) -> None:
    ws = _fake_preprocess(tmp_path, windmill_dir, [0, 1, 2])
    meta_path = ws.stage_dir("preprocess") / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["frame_times"] = [0.0, 0.49, 0.97]  # e.g. a clip sampled at another rate
    meta_path.write_text(json.dumps(meta))
    run(ws, GenerateOptions(prior="import", import_dir=str(windmill_dir), views=["az180"]))
    cams = json.loads((ws.stage_dir("generate") / "cameras.json").read_text())
    assert cams["source_frames"] == [0, 12, 23]
    assert cams["frame_times"] == [0.0, 0.49, 0.97]


@pytest.mark.parametrize("breakage,pattern", [
    ("no_cameras", "no cameras.json"),
    ("bad_json", "not valid JSON"),
    ("no_view_folder", "no folder for view"),
    ("unknown_view", "unknown view"),
    ("frame_count", "PNG frames but cameras.json describes 24"),
    ("not_rgba", "not RGBA"),
    ("wrong_size", "its camera says 256x256"),
    ("no_input", "no \"input\" view"),
    ("bad_matrix", "not a 4x4 matrix"),
])
def test_import_rejects_malformed_folders(ws: Workspace, tmp_path: Path, windmill_dir: Path,
                                          breakage: str, pattern: str) -> None:
    root = _small_import_dir(tmp_path, windmill_dir)
    views = None
    cams_path = root / "cameras.json"
    cams = json.loads(cams_path.read_text())
    if breakage == "no_cameras":
        cams_path.unlink()
    elif breakage == "bad_json":
        cams_path.write_text("{not json")
    elif breakage == "no_view_folder":
        shutil.rmtree(root / "gt" / "az180")
    elif breakage == "unknown_view":
        views = ["az090", "az999"]
    elif breakage == "frame_count":
        (root / "gt" / "az090" / "023.png").unlink()
    elif breakage == "not_rgba":
        Image.open(root / "gt" / "az090" / "004.png").convert("RGB").save(root / "gt" / "az090" / "004.png")
    elif breakage == "wrong_size":
        Image.open(root / "gt" / "az180" / "002.png").resize((128, 128)).save(root / "gt" / "az180" / "002.png")
    elif breakage == "no_input":
        del cams["views"]["input"]
        cams_path.write_text(json.dumps(cams))
    elif breakage == "bad_matrix":
        cams["views"]["az090"]["camera_to_world"] = [[1, 0, 0], [0, 1, 0]]
        cams_path.write_text(json.dumps(cams))
    with pytest.raises(Ds4dError, match=pattern) as info:
        run(ws, GenerateOptions(prior="import", import_dir=str(root), views=views))
    assert info.value.hint and "\n" not in info.value.message
    assert not (ws.stage_dir("generate") / "manifest.json").exists()


# -- none / auto ----------------------------------------------------------------------------------
def test_none_prior_writes_input_camera_only_and_warns(ws: Workspace, reported) -> None:
    result = run(ws, GenerateOptions(prior="none"))
    assert result.summary["views"] == []
    cams = json.loads((ws.stage_dir("generate") / "cameras.json").read_text())
    assert cams["views"] == [] and cams["prior"] == "none" and cams["frames"] == 4
    assert np.allclose(cams["input"]["camera_to_world"], orbit_camera(0, 0, 2.0).numpy(), atol=1e-6)
    assert np.allclose(cams["input"]["K"], intrinsics_from_fov(49.1, S).numpy(), atol=1e-4)
    assert any("guessed" in w for w in reported.warnings())


def test_none_prior_with_input_camera_places_it_as_import_does(ws: Workspace, tmp_path: Path,
                                                                windmill_dir: Path) -> None:
    """--prior none --input-camera DIR: the same input camera as --prior import DIR, and no view."""
    result = run(ws, GenerateOptions(prior="none", input_camera=str(windmill_dir)))
    none_cams = json.loads((ws.stage_dir("generate") / "cameras.json").read_text())
    assert result.summary["views"] == [] and none_cams["views"] == [] and none_cams["prior"] == "none"
    assert not (ws.stage_dir("generate") / "views").exists()
    assert run(ws, GenerateOptions(prior="none", input_camera=str(windmill_dir))).cached
    run(ws, GenerateOptions(prior="import", import_dir=str(windmill_dir), views=["az090"]))
    import_cams = json.loads((ws.stage_dir("generate") / "cameras.json").read_text())
    assert none_cams["input"] == import_cams["input"]
    assert not np.allclose(none_cams["input"]["K"], intrinsics_from_fov(49.1, S).numpy(), atol=1e-2)  # the crop's K
    # a malformed DIR is refused before the stage is touched; and import keeps its own camera
    with pytest.raises(Ds4dError, match="no cameras.json"):
        run(ws, GenerateOptions(prior="none", input_camera=str(tmp_path)), force=True)
    with pytest.raises(Ds4dError, match="--input-camera goes with --prior none"):
        run(ws, GenerateOptions(prior="import", import_dir=str(windmill_dir), input_camera=str(windmill_dir)))


def test_auto_without_weights_falls_back_to_none(ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 reported) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = run(ws, GenerateOptions(prior="auto"))
    assert result.summary["prior"] == "none"
    err = " ".join(reported.warnings())
    assert "zero123plus-v1.1" in err and "hf download" in err
    with pytest.raises(MissingWeightsError, match="zero123plus-v1.1"):
        run(ws, GenerateOptions(prior="zero123pp"))


# -- zero123pp end to end with a tiny random model --------------------------------------------------
def test_zero123pp_stage_with_tiny_model(tmp_path: Path, windmill_dir: Path) -> None:
    from ds4d_cli.priors.testing import build_tiny_zero123pp

    model = tmp_path / "tiny"
    build_tiny_zero123pp(tmp_path / "scratch").save_pretrained(model)
    ws = _fake_preprocess(tmp_path, windmill_dir, [0, 12])
    opts = GenerateOptions(prior="zero123pp", model=str(model), steps=1, seed=3, device="cpu", anchor=True)
    result = run(ws, opts)
    assert result.summary["prior"] == "zero123pp" and len(result.summary["views"]) == 6
    out = ws.stage_dir("generate")
    cams = json.loads((out / "cameras.json").read_text())
    expected = zero123pp_views("v1.1")
    assert [v["name"] for v in cams["views"]] == [v["name"] for v in expected]
    assert np.allclose([v["camera_to_world"] for v in cams["views"]], [v["camera_to_world"] for v in expected])
    for i in range(2):
        for v in range(6):
            im = Image.open(out / "views" / f"{i:03d}" / f"{v:02d}.png")
            assert im.mode == "RGBA" and im.size == (320, 320)
        assert Image.open(out / "grids" / f"{i:03d}.png").size == (640, 960)
    assert run(ws, opts).cached
    # the same seed reproduces the same views; a view subset keeps the chosen poses in order
    first = (out / "views" / "001" / "04.png").read_bytes()
    sub = GenerateOptions(prior="zero123pp", model=str(model), steps=1, seed=3, device="cpu", anchor=True,
                          views=["az270_el30", "az090_el-20"])
    result = run(ws, sub)
    assert result.summary["views"] == ["az270_el30", "az090_el-20"]
    assert (out / "views" / "001" / "00.png").read_bytes() == first
    with pytest.raises(Ds4dError, match="unknown view"):
        run(ws, GenerateOptions(prior="zero123pp", model=str(model), views=["az091_el0"]))
