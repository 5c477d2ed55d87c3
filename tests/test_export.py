"""Export: per-frame PLYs in the viewer's axes, turntable MP4, grid; cached and atomic."""

from __future__ import annotations

import math
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from fake_model import FakeModel
from PIL import Image
from plyfile import PlyData

from ds4d_cli.cameras import c2w_to_viewmat, intrinsics_from_fov, orbit_camera
from ds4d_cli.errors import Ds4dError
from ds4d_cli.export.axes import VIEWER_FROM_WORLD, rotate_gaussians
from ds4d_cli.export.turntable import schedule
from ds4d_cli.render import render
from ds4d_cli.render.projection import quat_to_rotmat
from ds4d_cli.stages import export as export_stage
from ds4d_cli.stages.export import ExportOptions, parse_frames
from ds4d_cli.workspace import Workspace

STANDARD = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def make_ws(tmp_path: Path, frames: int = 0) -> Workspace:
    """A workspace whose fit (and optionally preprocess with RGBA frames) looks done."""
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"not really a clip")
    ws = Workspace.create(tmp_path / "ws", src)
    if frames:
        fdir = ws.stage_dir("preprocess") / "frames"
        fdir.mkdir(parents=True)
        for i in range(frames):
            rgba = np.zeros((64, 64, 4), np.uint8)
            rgba[16:48, 16 + 2 * i:40 + 2 * i] = (0, 200, 0, 255)
            Image.fromarray(rgba).save(fdir / f"{i:03d}.png")
        ws.write_manifest("preprocess", {}, {}, 1, {})
    ws.write_manifest("fit", {"steps": 1}, {}, 1, {})
    return ws


def read_vertices(path: Path) -> np.ndarray:
    return PlyData.read(str(path))["vertex"].data


# ---------------------------------------------------------------- up axis


def test_up_axis_maps_world_up_to_viewer_minus_y_and_composes_rotations() -> None:
    # A Gaussian at world +Z, elongated along world +Z (its local x axis rotated onto +Z).
    means = torch.tensor([[0.0, 0.0, 1.0], [0.3, -0.2, 0.1]])
    about_y = torch.tensor([math.cos(-math.pi / 4), 0.0, math.sin(-math.pi / 4), 0.0])  # local x -> +Z
    quats = torch.stack([about_y, torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.2, 0.7]), dim=0)])
    assert torch.allclose(quat_to_rotmat(quats[:1])[0][:, 0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)

    m2, q2, _ = rotate_gaussians(means, quats)
    assert torch.allclose(m2[0], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6)  # world up -> viewer -Y
    # The long axis follows the position: it now points along -Y too.
    assert torch.allclose(quat_to_rotmat(q2[:1])[0][:, 0], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6)
    # Composition: rot(q_file) == R @ rot(q_world) for an arbitrary rotation.
    R = VIEWER_FROM_WORLD.float()
    assert torch.allclose(quat_to_rotmat(q2), R @ quat_to_rotmat(quats), atol=1e-6)
    # World -Y (where the input camera stands) becomes viewer -Z: the default viewer camera side.
    assert torch.allclose(R @ torch.tensor([0.0, -1.0, 0.0]), torch.tensor([0.0, 0.0, -1.0]))


def test_rotated_scene_renders_identically_from_the_rotated_camera() -> None:
    """Means, quaternions and view-dependent SH all rotate consistently (checked by rendering)."""
    model = FakeModel(num_frames=1, n_static=30, n_moving=0, sh_degree=2, seed=3)
    g = model.gaussians_at(0)
    means, quats = g["means"], g["quats"]
    scales, opac = torch.exp(g["scales"]), torch.sigmoid(g["opacities"])
    sh = torch.cat([g["sh0"], g["shN"]], dim=1)
    m2, q2, shN2 = rotate_gaussians(means, quats, g["shN"])
    sh2 = torch.cat([g["sh0"], shN2], dim=1)

    c2w = orbit_camera(torch.tensor([35.0, 200.0]), torch.tensor([20.0, -10.0]))
    R4 = torch.eye(4, dtype=torch.float64)
    R4[:3, :3] = VIEWER_FROM_WORLD
    vm_world = c2w_to_viewmat(c2w)
    vm_file = (vm_world.double() @ R4.T).float()  # the same camera expressed in file axes
    Ks = intrinsics_from_fov(49.1, 48)[None].expand(2, 3, 3)
    a = render(means, quats, scales, opac, sh, vm_world.float(), Ks, 48, 48, sh_degree=2).rgb
    b = render(m2, q2, scales, opac, sh2, vm_file, Ks, 48, 48, sh_degree=2).rgb
    assert a.std() > 0.05  # a real image, not empty
    assert torch.allclose(a, b, atol=2e-4)
    # ...whereas ignoring the SH rotation would show different view-dependent colour.
    c = render(m2, q2, scales, opac, sh, vm_file, Ks, 48, 48, sh_degree=2).rgb
    assert (a - c).abs().max() > 0.02


# ---------------------------------------------------------------- PLY


def test_ply_per_frame_standard_layout_moving_and_cleaned(tmp_path: Path) -> None:
    model = FakeModel(num_frames=3, sh_degree=1, extra_bad=True)
    ws = make_ws(tmp_path)
    res = export_stage.run(ws, ExportOptions(format="ply"), model=model)
    out = ws.stage_dir("export/ply")
    assert not res.cached and res.summary["files"] == ["frame_0000.ply", "frame_0001.ply", "frame_0002.ply"]
    assert sorted(p.name for p in out.glob("*.ply")) == res.summary["files"]
    assert res.summary["dropped_total"] == 3 * 2  # the NaN one and the transparent one, every frame

    R = VIEWER_FROM_WORLD.numpy()
    n_good = len(model.moving) - 2
    positions = []
    for i in range(3):
        v = read_vertices(out / f"frame_{i:04d}.ply")
        names = list(v.dtype.names)
        assert names == STANDARD + [f"f_rest_{k}" for k in range(9)] + TAIL
        table = np.stack([v[n] for n in names], axis=1)
        assert np.isfinite(table).all() and len(v) == n_good
        xyz = np.stack([v["x"], v["y"], v["z"]], axis=1)
        # Back in world axes the positions are the model's own, deformation applied.
        np.testing.assert_allclose(xyz @ R, model.means_at(i)[:n_good].numpy(), atol=1e-6)
        np.testing.assert_allclose(v["opacity"], model.opacity_logits[:n_good].numpy(), atol=1e-6)
        # f_rest is channel-major: the 3 red coefficients, then green, then blue.
        _, _, shN = rotate_gaussians(model.means_at(i)[:n_good], model.quats[:n_good], model.shN[:n_good])
        np.testing.assert_allclose(v["f_rest_3"], shN[:, 0, 1].numpy(), atol=1e-5)
        positions.append(xyz)
    moved = np.linalg.norm(positions[2] - positions[0], axis=1)
    moving = model.moving[:n_good].numpy()
    assert (moved[moving] > 0.2).all() and (moved[~moving] < 1e-6).all()
    seq = (out / "sequence.json").read_text()
    assert '"up_axis": "-Y"' in seq


def test_ply_frames_subset_and_cache(tmp_path: Path) -> None:
    model = FakeModel(num_frames=6)
    ws = make_ws(tmp_path)
    opts = ExportOptions(format="ply", frames="1,3-4")
    first = export_stage.run(ws, opts, model=model)
    assert first.summary["files"] == ["frame_0001.ply", "frame_0003.ply", "frame_0004.ply"]
    again = export_stage.run(ws, opts, model=model)
    assert again.cached and again.summary == first.summary
    # Options only the video uses do not invalidate the PLYs.
    assert export_stage.run(ws, ExportOptions(format="ply", frames="1,3-4", size=64, orbits=2), model=model).cached


def test_parse_frames_and_errors() -> None:
    assert parse_frames(None, 4) == [0, 1, 2, 3]
    assert parse_frames("3, 0-1", 4) == [0, 1, 3]
    for bad in ("0-9", "x", "2-1", "-1"):
        with pytest.raises(Ds4dError):
            parse_frames(bad, 4)
    with pytest.raises(Ds4dError, match="background"):
        export_stage.run(None, ExportOptions(format="mp4", background="plaid"))  # type: ignore[arg-type]


def test_export_needs_fit(tmp_path: Path) -> None:
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"x")
    ws = Workspace.create(tmp_path / "ws", src)
    with pytest.raises(Ds4dError, match="fit"):
        export_stage.run(ws, ExportOptions(format="ply"))


# ---------------------------------------------------------------- MP4 and grid


def test_turntable_schedule_loops_clip_for_a_smooth_orbit() -> None:
    plan = schedule([0, 1, 2, 3], orbits=1.0)
    assert len(plan) % 4 == 0 and 360.0 / len(plan) <= 6.0
    assert [p.frame_index for p in plan[:6]] == [0, 1, 2, 3, 0, 1]
    assert plan[0].azimuth_deg == 0.0 and plan[-1].azimuth_deg < 360.0
    assert len(schedule(list(range(100)), orbits=1.0)) == 100  # a long clip plays once


def test_mp4_decodes_with_expected_frames_and_size(tmp_path: Path) -> None:
    model = FakeModel(num_frames=4)
    ws = make_ws(tmp_path)
    opts = ExportOptions(format="mp4", orbits=0.25, size=48, fps=10, elevation=10.0)
    res = export_stage.run(ws, opts, model=model)
    path = ws.stage_dir("export/mp4") / "turntable.mp4"
    assert res.summary["outputs"] == [str(path)]
    expected = len(schedule(list(range(4)), 0.25))
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = gen.__next__()
    frames = [np.frombuffer(f, np.uint8).reshape(48, 48, 3) for f in gen]
    assert tuple(meta["size"]) == (48, 48) and meta["codec"] == "h264"
    assert len(frames) == expected == res.summary["video_frames"]
    # The object is there (not a blank background) and the view changes along the video.
    assert frames[0].min() < 200
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1.0
    assert not list(path.parent.glob(".*tmp*"))  # no temporary left behind


def test_grid_png_and_video(tmp_path: Path) -> None:
    model = FakeModel(num_frames=3)
    ws = make_ws(tmp_path, frames=3)
    res = export_stage.run(ws, ExportOptions(format="grid", size=32, background="black"), model=model)
    png = Image.open(ws.stage_dir("export/grid") / "grid.png")
    assert png.size[0] == 4 * 32 and png.size[1] > 3 * 32
    sheet = np.asarray(png)
    header = sheet.shape[0] - 3 * 32
    first_input = sheet[header:header + 32, :32]
    assert first_input[..., 1].max() > 150 and first_input[0, 0].tolist() == [0, 0, 0]  # green object on black
    assert np.abs(sheet[header:, 32:].astype(int)).max() > 50  # renders are not empty
    assert res.summary["frames"] == 3


def test_saved_ply_renders_like_the_model_and_loads_through_load_fitted(tmp_path: Path) -> None:
    """Through the real fit loader: a PLY read back renders as the model does (in file axes)."""
    from ds4d_cli.ply import load_ply

    fake = FakeModel(num_frames=2, sh_degree=1, seed=2)
    baked = {"means": torch.stack([fake.means_at(i) for i in range(2)]), "quats": fake.quats.expand(2, -1, -1),
             "scales": fake.log_scales.expand(2, -1, -1), "opacities": fake.opacity_logits, "sh0": fake.sh0,
             "shN": fake.shN, "frame_times": torch.tensor(fake.frame_times), "sh_degree": 1}
    ws = make_ws(tmp_path)
    torch.save(baked, ws.stage_dir("fit") / "model.pt")
    res = export_stage.run(ws, ExportOptions(format="ply", frames="1"))  # no model= : load_fitted
    g = load_ply(ws.stage_dir("export/ply") / "frame_0001.ply")
    assert res.summary["files"] == ["frame_0001.ply"] and len(g) == len(fake.quats)

    c2w = orbit_camera(torch.tensor([20.0, 160.0]), torch.tensor([15.0, 5.0]))
    R4 = torch.eye(4, dtype=torch.float64)
    R4[:3, :3] = VIEWER_FROM_WORLD
    vm_world = c2w_to_viewmat(c2w)
    vm_file = (vm_world.double() @ R4.T).float()
    Ks = intrinsics_from_fov(49.1, 40)[None].expand(2, 3, 3)
    expected = fake.render(1, vm_world.float(), Ks, 40, 40, torch.ones(3)).rgb
    got = render(g.means, g.quats, g.scales, g.opacities, g.sh, vm_file, Ks, 40, 40,
                 background=torch.ones(3), sh_degree=1).rgb
    assert expected.min() < 0.5 and torch.allclose(expected, got, atol=1e-4)
