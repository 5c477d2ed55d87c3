"""Animated mesh export: glb (morph targets) and obj (per frame) from a fitted model.

The glb is read back with pygltflib and checked by the Khronos glTF validator (npm
gltf-validator, installed by `make setup`); its silhouette is compared with the splats'.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from viewer_workspace import CLIP_SECONDS, dense_fake_model, fitted_workspace

from ds4d_cli.errors import Ds4dError
from ds4d_cli.export.glb import GLTF_FROM_WORLD
from ds4d_cli.export.views import Framing, orbit_views
from ds4d_cli.stages import export as export_stage
from ds4d_cli.stages.export import ExportOptions
from ds4d_cli.fitted import load_fitted

REPO = Path(__file__).resolve().parents[1]
FRAMES = 6


@pytest.fixture(scope="module")
def mesh_ws(tmp_path_factory: pytest.TempPathFactory):
    fake = dense_fake_model(FRAMES)
    ws = fitted_workspace(tmp_path_factory.mktemp("mesh"), fake)
    glb = export_stage.run(ws, ExportOptions(format="glb", mesh_resolution=64))
    return ws, fake, glb


def read_glb(path: Path) -> dict:
    """Every array the tests need, decoded from the file with pygltflib + numpy."""
    import pygltflib

    gltf = pygltflib.GLTF2().load(str(path))
    blob = gltf.binary_blob()
    dtypes = {pygltflib.FLOAT: np.float32, pygltflib.UNSIGNED_INT: np.uint32}
    widths = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}

    def array(index: int) -> np.ndarray:
        acc = gltf.accessors[index]
        view = gltf.bufferViews[acc.bufferView]
        start = (view.byteOffset or 0) + (acc.byteOffset or 0)
        width = widths[acc.type]
        data = np.frombuffer(blob, dtypes[acc.componentType], acc.count * width, start)
        return data.reshape(acc.count, width) if width > 1 else data

    (mesh,) = gltf.meshes
    (prim,) = mesh.primitives
    anim = gltf.animations[0]
    sampler = anim.samplers[anim.channels[0].sampler]
    return {
        "positions": array(prim.attributes.POSITION), "colors": array(prim.attributes.COLOR_0),
        "faces": array(prim.indices).reshape(-1, 3), "targets": [array(t["POSITION"]) for t in prim.targets],
        "times": array(sampler.input), "weights": array(sampler.output), "channel": anim.channels[0].target,
        "names": mesh.extras["targetNames"], "interpolation": sampler.interpolation,
    }


def silhouette_of_mesh(vertices_world: np.ndarray, faces: np.ndarray, viewmat: torch.Tensor, K: torch.Tensor,
                       size: int) -> np.ndarray:
    """Pixels covered by any triangle of the mesh (no depth needed for a silhouette)."""
    cam = vertices_world @ viewmat[:3, :3].numpy().T + viewmat[:3, 3].numpy()
    k = K.numpy()
    uv = np.stack([k[0, 0] * cam[:, 0] / cam[:, 2] + k[0, 2], k[1, 1] * cam[:, 1] / cam[:, 2] + k[1, 2]], 1)
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for tri in uv[faces]:
        draw.polygon([tuple(p) for p in tri], fill=255)
    return np.asarray(img) > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_glb_plays_every_frame_with_constant_topology_and_real_motion(mesh_ws) -> None:
    ws, fake, result = mesh_ws
    g = read_glb(ws.stage_dir("export/glb") / "animated.glb")
    v = len(g["positions"])
    assert v > 500 and result.summary["vertices"] == v
    assert g["faces"].max() < v
    # One morph target per clip frame, each with the base's vertex count; named after the frames.
    assert len(g["targets"]) == FRAMES and all(t.shape == (v, 3) for t in g["targets"])
    assert g["names"] == [f"frame_{i:04d}" for i in range(FRAMES)]
    # Timing from the clip: frame i at frame_time_i x clip duration, starting at 0 s.
    np.testing.assert_allclose(g["times"], [CLIP_SECONDS * i / FRAMES for i in range(FRAMES)], atol=1e-6)
    assert g["interpolation"] == "LINEAR" and g["channel"].path == "weights"
    np.testing.assert_array_equal(g["weights"].reshape(FRAMES, FRAMES), np.eye(FRAMES))
    # The reference (middle) frame is the base itself; other frames move the travelling part only.
    ref = FRAMES // 2
    assert np.abs(g["targets"][ref]).max() == 0
    last = g["targets"][-1]
    expected = fake.travel * (fake.frame_times[-1] - fake.frame_times[ref])  # along +X (unchanged in glTF)
    assert last[:, 0].max() == pytest.approx(expected, rel=0.05)
    assert np.abs(last[:, 1:]).max() < 1e-5  # the fake only moves along X
    still = np.linalg.norm(last, axis=1) < 1e-4
    assert 0.3 < still.mean() < 0.97  # most of the surface is the static blob, some of it moves
    # Vertex colours come from the Gaussians: the moving part is red in the fake model.
    moving = last[:, 0] > 0.9 * expected
    assert g["colors"][moving].mean(0)[0] > 0.6 and g["colors"][moving].mean(0)[1] < 0.35


def test_glb_silhouette_matches_the_splats_over_the_clip(mesh_ws) -> None:
    ws, _, _ = mesh_ws
    g = read_glb(ws.stage_dir("export/glb") / "animated.glb")
    model = load_fitted(ws)
    size = 96
    viewmats, Ks = orbit_views([0.0, 90.0], 10.0, size, Framing())
    scores = []
    for t in (0, FRAMES - 1):
        world = (g["positions"] + g["targets"][t]) @ GLTF_FROM_WORLD  # back to ds4d's world axes
        alpha = model.render(t, viewmats, Ks, size, size).alpha[..., 0].numpy() > 0.5
        for c in range(2):
            scores.append(iou(silhouette_of_mesh(world, g["faces"].astype(np.int64), viewmats[c], Ks[c], size), alpha[c]))
    print("mesh vs splat silhouette IoU", scores)
    assert min(scores) >= 0.75, scores


def test_glb_passes_the_khronos_validator(mesh_ws) -> None:
    ws, _, _ = mesh_ws
    if shutil.which("node") is None or not (REPO / "node_modules" / "gltf-validator").is_dir():
        pytest.fail("node and the npm package gltf-validator are needed: run `make setup`")
    out = subprocess.run(["node", str(REPO / "tests" / "browser" / "validate_gltf.mjs"),
                          str(ws.stage_dir("export/glb") / "animated.glb")], capture_output=True, text=True,
                         timeout=120, check=True)
    report = json.loads(out.stdout)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
    assert report["info"]["hasMorphTargets"] and report["info"]["animationCount"] == 1


def test_obj_frames_share_topology_and_match_the_glb(mesh_ws) -> None:
    ws, _, _ = mesh_ws
    res = export_stage.run(ws, ExportOptions(format="obj", mesh_resolution=64))
    g = read_glb(ws.stage_dir("export/glb") / "animated.glb")
    assert res.summary["files"] == [f"frame_{i:04d}.obj" for i in range(FRAMES)]
    for t in (0, FRAMES - 1):
        lines = (ws.stage_dir("export/obj") / f"frame_{t:04d}.obj").read_text().splitlines()
        verts = np.array([[float(x) for x in ln.split()[1:7]] for ln in lines if ln.startswith("v ")])
        faces = [ln for ln in lines if ln.startswith("f ")]
        assert len(verts) == len(g["positions"]) and len(faces) == len(g["faces"])
        np.testing.assert_allclose(verts[:, :3], g["positions"] + g["targets"][t], atol=2e-6)
        np.testing.assert_allclose(verts[:, 3:], g["colors"], atol=1e-4)


def test_mesh_options_are_checked(mesh_ws) -> None:
    ws, _, _ = mesh_ws
    with pytest.raises(Ds4dError, match="mesh-frame"):
        export_stage.run(ws, ExportOptions(format="glb", mesh_frame=1, frames="0,2", mesh_resolution=32))
    with pytest.raises(Ds4dError, match="mesh-resolution"):
        export_stage.run(ws, ExportOptions(format="glb", mesh_resolution=4))
    with pytest.raises(Ds4dError, match="no surface"):
        export_stage.run(ws, ExportOptions(format="glb", iso=99.9, mesh_resolution=32))
    assert not (ws.stage_dir("export/glb") / "manifest.json").exists()  # failed runs leave nothing done
