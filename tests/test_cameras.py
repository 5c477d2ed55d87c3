"""The camera convention: orbit cameras match the examples' ground truth, conversions invert."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ds4d_cli import cameras as cam


@pytest.fixture
def windmill_cameras(windmill_dir: Path) -> dict:
    return json.loads((windmill_dir / "cameras.json").read_text())


def test_orbit_camera_matches_example_cameras_json(windmill_cameras):
    data = windmill_cameras
    assert data["views"], "no views in cameras.json"
    for name, view in data["views"].items():
        expected = torch.tensor(view["camera_to_world"], dtype=torch.float64)
        got = cam.orbit_camera(view["azimuth_deg"], view["elevation_deg"], radius=data["radius"],
                               dtype=torch.float64)
        assert torch.allclose(got, expected, atol=1e-6), name


def test_intrinsics_match_example(windmill_cameras):
    data = windmill_cameras
    intr = data["intrinsics"]
    K = cam.intrinsics_from_fov(data["fov_deg"], intr["width"], intr["height"], dtype=torch.float64)
    assert K[0, 0].item() == pytest.approx(intr["fx"], rel=1e-9)
    assert K[1, 1].item() == pytest.approx(intr["fy"], rel=1e-9)
    assert K[0, 2].item() == pytest.approx(intr["cx"])
    assert K[1, 2].item() == pytest.approx(intr["cy"])
    assert cam.DEFAULT_FOV_DEG == data["fov_deg"] and cam.DEFAULT_RADIUS == data["radius"]


def test_orbit_axes_follow_convention():
    c2w = cam.orbit_camera(0.0, 0.0)
    assert torch.allclose(c2w[:3, 3], torch.tensor([0.0, -2.0, 0.0]), atol=1e-6)  # on -Y
    assert torch.allclose(c2w[:3, 2], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)  # looks at +Y
    assert torch.allclose(c2w[:3, 1], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)  # image y = down
    c2w90 = cam.orbit_camera(90.0, 0.0)
    assert torch.allclose(c2w90[:3, 3], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)  # az 90 on +X
    above = cam.orbit_camera(0.0, 30.0)
    assert above[2, 3] > 0


def test_orbit_poles_are_rotations():
    for el in (90.0, -90.0):
        c2w = cam.orbit_camera(45.0, el, dtype=torch.float64)
        rot = c2w[:3, :3]
        assert torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-9)
        assert torch.det(rot).item() == pytest.approx(1.0)


def test_look_at_agrees_with_orbit_and_handles_vertical():
    c2w = cam.orbit_camera(torch.tensor([10.0, 123.0]), torch.tensor([-15.0, 40.0]), radius=3.0)
    la = cam.look_at(c2w[:, :3, 3], torch.zeros(3))
    assert torch.allclose(la, c2w, atol=1e-5)
    vert = cam.look_at((0.0, 0.0, 2.0), (0.0, 0.0, 0.0))
    assert torch.allclose(vert[:3, 2], torch.tensor([0.0, 0.0, -1.0]))
    assert torch.det(vert[:3, :3]).item() == pytest.approx(1.0, abs=1e-6)


def test_viewmat_inverse_batched():
    c2w = cam.orbit_camera(torch.rand(2, 3) * 360, torch.rand(2, 3) * 60 - 30, radius=2.5)
    vm = cam.c2w_to_viewmat(c2w)
    assert vm.shape == (2, 3, 4, 4)
    eye = torch.eye(4).expand(2, 3, 4, 4)
    assert torch.allclose(vm @ c2w, eye, atol=1e-5)
    assert torch.allclose(cam.viewmat_to_c2w(vm), c2w, atol=1e-5)
    assert torch.allclose(cam.camera_centers(vm), c2w[..., :3, 3], atol=1e-5)


def test_zero123pp_angles():
    v11 = cam.zero123pp_view_angles("v1.1")
    v12 = cam.zero123pp_view_angles("v1.2")
    assert [a for a, _ in v11] == [30, 90, 150, 210, 270, 330]
    assert [e for _, e in v11] == [30, -20, 30, -20, 30, -20]
    assert [e for _, e in v12] == [20, -10, 20, -10, 20, -10]
    from ds4d_cli.errors import Ds4dError

    with pytest.raises(Ds4dError):
        cam.zero123pp_view_angles("v9")


def test_opengl_roundtrip_and_axes():
    c2w = cam.orbit_camera(30.0, 20.0)
    gl = cam.opencv_to_opengl(c2w)
    # OpenGL camera looks down its -z axis: -z_gl equals OpenCV's +z
    assert torch.allclose(-gl[:3, 2], c2w[:3, 2])
    assert torch.allclose(gl[:3, 1], -c2w[:3, 1])  # y up
    assert torch.allclose(cam.opengl_to_opencv(gl), c2w)


def test_project_points_centre_and_gradient():
    W = 256
    K = cam.intrinsics_from_fov(cam.DEFAULT_FOV_DEG, W)[None]
    vm = cam.c2w_to_viewmat(cam.orbit_camera(0.0, 0.0))[None]
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.3, 0.0, 0.0]], requires_grad=True)
    uv, depth = cam.project_points(pts, vm, K)
    assert uv.shape == (1, 3, 2) and depth.shape == (1, 3)
    assert torch.allclose(uv[0, 0], torch.tensor([128.0, 128.0]), atol=1e-4)
    assert depth[0, 0].item() == pytest.approx(2.0)
    assert uv[0, 1, 1] < 128  # +Z (up) is toward the image top
    assert uv[0, 2, 0] > 128  # +X is to the right for the azimuth-0 camera
    f = K[0, 0, 0].item()
    assert uv[0, 2, 0].item() == pytest.approx(128 + f * 0.3 / 2.0, rel=1e-5)
    uv.sum().backward()
    assert pts.grad is not None and torch.isfinite(pts.grad).all()
    # per-camera point sets [C,N,3]
    uv2, _ = cam.project_points(pts.detach()[None].expand(2, 3, 3), vm.expand(2, 4, 4), K.expand(2, 3, 3))
    assert torch.allclose(uv2[1], uv[0].detach())


def test_fov_focal():
    assert cam.focal_from_fov(90.0, 200) == pytest.approx(100.0)
    assert math.isclose(cam.intrinsics_from_fov(49.1, 256)[0, 0].item(), 280.222, rel_tol=1e-5)
