"""Gaussians: constructors, activations, and state-dict round trips across changing N."""

from __future__ import annotations

import math

import pytest
import torch

from ds4d_cli.gaussians import SH_C0, Gaussians, nearest_neighbour_scale, rgb_to_sh0


def test_from_points_nearest_neighbour_scale_and_colours():
    # a 5x5x5 grid with spacing 0.1: every point's 3 nearest neighbours are 0.1 away
    g = torch.arange(5, dtype=torch.float32) * 0.1
    pts = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), dim=-1).reshape(-1, 3)
    colors = torch.rand(pts.shape[0], 3)
    gs = Gaussians.from_points(pts, colors, sh_degree=2)
    assert gs.num_gaussians == 125 and len(gs) == 125
    assert torch.allclose(gs.scales, torch.full((125, 3), 0.1), rtol=1e-5)
    assert torch.allclose(gs.colors, colors, atol=1e-6)
    assert torch.allclose(gs.means, pts)
    assert gs.sh_degree == 2 and gs.params["shN"].shape == (125, 8, 3)
    assert gs.sh.shape == (125, 9, 3)
    assert torch.allclose(gs.opacities, torch.full((125,), 0.1), atol=1e-6)
    assert torch.allclose(gs.quats, torch.tensor([1.0, 0, 0, 0]).expand(125, 4))


def test_nearest_neighbour_scale_handles_duplicates_and_single_point():
    pts = torch.tensor([[0.0, 0, 0], [0.0, 0, 0], [1.0, 0, 0], [0.0, 2.0, 0]])
    s = nearest_neighbour_scale(pts)
    assert (s > 0).all() and torch.isfinite(s).all()
    assert nearest_neighbour_scale(torch.zeros(1, 3)).shape == (1,)


def test_random_ball_is_seeded_and_inside():
    a = Gaussians.random_ball(500, radius=0.7, seed=3)
    b = Gaussians.random_ball(500, radius=0.7, seed=3)
    c = Gaussians.random_ball(500, radius=0.7, seed=4)
    assert torch.equal(a.means, b.means) and not torch.equal(a.means, c.means)
    r = a.means.norm(dim=-1)
    assert r.max() <= 0.7 + 1e-6 and r.min() < 0.3  # fills the ball, not just the shell
    assert ((a.colors >= -1e-6) & (a.colors <= 1 + 1e-6)).all()


def test_activations_follow_stored_parameters():
    gs = Gaussians.from_tensors(
        torch.zeros(2, 3), quats=torch.tensor([[2.0, 0, 0, 0], [0, 0, 3.0, 4.0]]),
        scales=torch.log(torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])),
        opacities=torch.tensor([0.0, 2.0]), sh0=torch.tensor([[[1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0]]]),
    )
    assert torch.allclose(gs.quats, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0.6, 0.8]]))
    assert torch.allclose(gs.scales[0], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(gs.opacities, torch.sigmoid(torch.tensor([0.0, 2.0])))
    assert torch.allclose(gs.colors[0], torch.tensor([0.5 + SH_C0, 0.5, 0.5 - SH_C0]))
    assert torch.allclose(rgb_to_sh0(gs.colors), gs.params["sh0"][:, 0])
    assert gs.sh_degree == 0 and gs.params["shN"].shape == (2, 0, 3)


def test_state_dict_round_trip_with_different_count_and_extra_keys():
    src = Gaussians.random_ball(50, 0.5, seed=0, sh_degree=1)
    src.params["embedding"] = torch.nn.Parameter(torch.randn(50, 8))  # registered by other code
    dst = Gaussians.random_ball(7, 0.5, seed=1)
    dst.load_state_dict(src.state_dict())
    assert dst.num_gaussians == 50 and dst.sh_degree == 1
    for key, value in src.params.items():
        assert torch.equal(dst.params[key], value), key
        assert isinstance(dst.params[key], torch.nn.Parameter) and dst.params[key].requires_grad

    # nested inside a larger model (the fit's model), through torch.save
    class Model(torch.nn.Module):
        def __init__(self, g):
            super().__init__()
            self.gaussians = g
            self.head = torch.nn.Linear(2, 2)

    import io

    buf = io.BytesIO()
    torch.save(Model(src).state_dict(), buf)
    buf.seek(0)
    m = Model(Gaussians.random_ball(3, 0.5, seed=2))
    m.load_state_dict(torch.load(buf))
    assert m.gaussians.num_gaussians == 50
    assert torch.equal(m.gaussians.params["embedding"], src.params["embedding"])


def test_missing_core_parameter_is_refused():
    with pytest.raises(ValueError):
        Gaussians({"means": torch.zeros(1, 3)})


def test_from_activated_inverts_activations():
    n = 10
    q = torch.nn.functional.normalize(torch.randn(n, 4), dim=-1)
    s = torch.rand(n, 3) + 0.01
    o = torch.rand(n) * 0.98 + 0.01
    c = torch.rand(n, 3)
    gs = Gaussians.from_activated(torch.randn(n, 3), q, s, o, c)
    assert torch.allclose(gs.quats, q, atol=1e-6)
    assert torch.allclose(gs.scales, s, rtol=1e-5)
    assert torch.allclose(gs.opacities, o, atol=1e-5)
    assert torch.allclose(gs.colors, c, atol=1e-6)
    assert math.isclose(SH_C0, 0.28209479, rel_tol=1e-7)
