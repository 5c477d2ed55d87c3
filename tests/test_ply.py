"""3DGS PLY: exact round trip, the standard layout, and a saved scene renders back the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ds4d_cli import cameras as cam
from ds4d_cli.errors import Ds4dError
from ds4d_cli.gaussians import Gaussians
from ds4d_cli.ply import load_ply, read_ply_tensors, save_ply, save_ply_tensors
from ds4d_cli.render import render_gaussians


def _scene(n=200, sh_degree=2, seed=0) -> Gaussians:
    gs = Gaussians.random_ball(n, 0.5, seed=seed, sh_degree=sh_degree)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gs.params["quats"].copy_(torch.randn(n, 4, generator=g))
        gs.params["scales"].add_(torch.randn(n, 3, generator=g) * 0.3)
        gs.params["opacities"].copy_(torch.randn(n, generator=g) * 2)
        gs.params["shN"].copy_(torch.randn_like(gs.params["shN"]) * 0.2)
    return gs


def test_round_trip_is_exact(tmp_path):
    gs = _scene()
    path = tmp_path / "scene.ply"
    save_ply(path, gs)
    back = load_ply(path)
    assert back.num_gaussians == gs.num_gaussians and back.sh_degree == 2
    for key in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        assert torch.equal(back.params[key], gs.params[key]), key
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_standard_property_layout(tmp_path):
    from plyfile import PlyData

    gs = _scene(n=3, sh_degree=1)
    path = tmp_path / "s.ply"
    save_ply(path, gs)
    v = PlyData.read(str(path))["vertex"]
    names = [p.name for p in v.properties]
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(9)] + ["opacity"]
    expected += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    assert names == expected
    assert all(p.val_dtype in ("f4", "float32", "float") for p in v.properties)
    # channel-major f_rest: the first K values are all red coefficients
    shN = gs.params["shN"].detach()
    assert np.allclose(v.data["f_rest_0"], shN[:, 0, 0].numpy())
    assert np.allclose(v.data["f_rest_1"], shN[:, 1, 0].numpy())
    assert np.allclose(v.data["f_rest_3"], shN[:, 0, 1].numpy())  # first green
    assert np.allclose(v.data["opacity"], gs.params["opacities"].detach().numpy())  # logit, raw
    assert np.allclose(v.data["scale_0"], gs.params["scales"].detach()[:, 0].numpy())  # log, raw
    assert np.allclose(v.data["rot_0"], gs.params["quats"].detach()[:, 0].numpy())  # w first


def test_saved_scene_renders_back_identically(tmp_path):
    gs = _scene(n=300, sh_degree=1, seed=4)
    W = 48
    vm = cam.c2w_to_viewmat(cam.orbit_camera(torch.tensor([0.0, 200.0]), torch.tensor([10.0, -20.0])))
    K = cam.intrinsics_from_fov(cam.DEFAULT_FOV_DEG, W)[None].expand(2, 3, 3)
    with torch.no_grad():
        before = render_gaussians(gs, vm, K, W, W, backend="cpu")
        save_ply(tmp_path / "a.ply", gs)
        after = render_gaussians(load_ply(tmp_path / "a.ply"), vm, K, W, W, backend="cpu")
    assert before.alpha.mean() > 0.05
    assert torch.equal(before.rgb, after.rgb) and torch.equal(before.alpha, after.alpha)


def test_raw_tensor_writer_without_higher_sh(tmp_path):
    n = 4
    path = tmp_path / "raw.ply"
    save_ply_tensors(path, torch.rand(n, 3), torch.rand(n, 4), torch.rand(n, 3), torch.rand(n), torch.rand(n, 3))
    t = read_ply_tensors(path)
    assert t["shN"].shape == (n, 0, 3) and t["sh0"].shape == (n, 1, 3)
    assert load_ply(path).sh_degree == 0


def test_not_a_gaussian_ply_is_a_clear_error(tmp_path):
    from plyfile import PlyData, PlyElement

    path = tmp_path / "mesh.ply"
    data = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))
    with pytest.raises(Ds4dError, match="not a 3DGS PLY"):
        load_ply(path)
    (tmp_path / "junk.ply").write_bytes(b"not a ply")
    with pytest.raises(Ds4dError):
        load_ply(tmp_path / "junk.ply")


# ------------------------------------------------------------- rotations: rot_0..3 are w, x, y, z
def test_rotation_columns_hold_w_x_y_z_in_order(tmp_path):
    """A hand-made quaternion (w, x, y, z) = (0.5, 0.1, 0.7, -0.3): each rot_i column holds its own component."""
    from plyfile import PlyData

    q = torch.tensor([[0.5, 0.1, 0.7, -0.3]])
    save_ply_tensors(tmp_path / "q.ply", torch.zeros(1, 3), q, torch.zeros(1, 3), torch.zeros(1), torch.zeros(1, 3))
    v = PlyData.read(str(tmp_path / "q.ply"))["vertex"].data
    assert [float(v[f"rot_{i}"][0]) for i in range(4)] == pytest.approx([0.5, 0.1, 0.7, -0.3])
    assert torch.allclose(read_ply_tensors(tmp_path / "q.ply")["quats"], q)


_C, _S = float(np.cos(np.pi / 4)), float(np.sin(np.pi / 4))
#: A needle along its local x axis, turned by a hand-made quaternion (w, x, y, z), and where the
#: needle then points in the world: identity -> x; 90 deg about z -> y; 90 deg about y -> -z.
NEEDLES = {"identity": ((1.0, 0.0, 0.0, 0.0), "x"), "about_z": ((_C, 0.0, 0.0, _S), "y"),
           "about_y": ((_C, 0.0, _S, 0.0), "z")}
#: How a needle along each world axis looks from the front camera (image right = world x, image
#: down = world -z) and from the top camera (image right = world x, image down = world -y).
LOOKS = {"front": {"x": "horizontal", "y": "round", "z": "vertical"},
         "top": {"x": "horizontal", "y": "vertical", "z": "round"}}


def _write_standard_ply(path, quat) -> None:
    """One Gaussian in the standard 3DGS layout, written with plyfile (not with ds4d's writer)."""
    from plyfile import PlyData, PlyElement

    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    names += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    values = [0, 0, 0, 0, 0, 0, 1, 1, 1, 6.0, np.log(0.3), np.log(0.02), np.log(0.02), *quat]
    data = np.array([tuple(values)], dtype=[(n, "f4") for n in names])
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))


def _shape(gaussians: Gaussians, view: str) -> str:
    """Horizontal, vertical or round: the alpha-weighted spread of the render along u and v."""
    W = 64
    c2w = cam.orbit_camera(0.0, 90.0 if view == "top" else 0.0)
    with torch.no_grad():
        alpha = render_gaussians(gaussians, cam.c2w_to_viewmat(c2w)[None],
                                 cam.intrinsics_from_fov(cam.DEFAULT_FOV_DEG, W)[None], W, W, backend="cpu").alpha[0, ..., 0]
    v, u = torch.meshgrid(torch.arange(W, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    w = alpha / alpha.sum()
    su = ((u - (w * u).sum()) ** 2 * w).sum().sqrt()
    sv = ((v - (w * v).sum()) ** 2 * w).sum().sqrt()
    assert alpha.max() > 0.5
    return "horizontal" if su > 3 * sv else "vertical" if sv > 3 * su else "round" if max(su, sv) < 1.5 * min(su, sv) else "?"


@pytest.mark.parametrize("needle", sorted(NEEDLES))
def test_a_standard_file_is_read_with_its_rotation(tmp_path, needle):
    """A file written by another tool renders with the needle where the quaternion puts it
    (reading rot_1 as z and rot_3 as x, say, turns it to another axis)."""
    quat, axis = NEEDLES[needle]
    _write_standard_ply(tmp_path / "n.ply", quat)
    g = load_ply(tmp_path / "n.ply")
    assert {view: _shape(g, view) for view in LOOKS} == {view: LOOKS[view][axis] for view in LOOKS}


@pytest.mark.parametrize("needle", sorted(NEEDLES))
def test_a_written_file_renders_with_its_rotation(tmp_path, needle):
    """Through ds4d's writer and reader: the re-read needle still points where its quaternion says."""
    quat, axis = NEEDLES[needle]
    save_ply_tensors(tmp_path / "n.ply", torch.zeros(1, 3), torch.tensor([quat]),
                     torch.log(torch.tensor([[0.3, 0.02, 0.02]])), torch.tensor([6.0]), torch.ones(1, 3))
    g = load_ply(tmp_path / "n.ply")
    assert {view: _shape(g, view) for view in LOOKS} == {view: LOOKS[view][axis] for view in LOOKS}
