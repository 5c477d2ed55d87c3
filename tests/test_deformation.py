"""The deformation head: starts at the identity, and its scale offset obeys its bound."""

from __future__ import annotations

import torch

from ds4d_cli.model.deformation import DeformationNet


def _net(scale_bound: float) -> DeformationNet:
    torch.manual_seed(0)
    net = DeformationNet(feat_dim=4, time_resolution=4, hex_resolutions=(8,), width=16, scale_bound=scale_bound)
    return net


def test_starts_as_the_identity():
    net = _net(0.3)
    means, quats, scales = torch.randn(50, 3) * 0.5, torch.randn(50, 4), torch.randn(50, 3)
    d = net(means, quats, scales, torch.tensor([0.0, 1.0]), torch.randn(2, 50, 4))
    assert torch.equal(d.means[1], means) and torch.equal(d.quats[0], quats) and torch.equal(d.scales[1], scales)


def test_scale_offset_is_bounded_only_when_asked():
    x, t, f = torch.randn(200, 3) * 0.5, torch.tensor([0.0, 0.5, 1.0]), torch.randn(3, 200, 4)
    free, bounded = _net(0.0), _net(0.3)
    with torch.no_grad():  # a head that asks for large scale changes (fading a part away)
        free.head_scale.weight.normal_(0, 20.0)
        free.head_scale.bias.fill_(-5.0)
    bounded.load_state_dict(free.state_dict())
    _, _, ds_free = free.offsets(x, t, f)
    _, _, ds_bounded = bounded.offsets(x, t, f)
    assert ds_free.abs().max() > 1.0
    assert ds_bounded.abs().max() <= 0.3 + 1e-6
    assert ds_bounded.abs().max() > 0.29  # a clamp, not a zeroing
    small = ds_free.abs() < 0.01  # and near zero the bound leaves the offset as it is
    assert torch.allclose(ds_bounded[small], ds_free[small], atol=1e-5)
    d_means_free, _, _ = free.offsets(x, t, f)
    d_means_bounded, _, _ = bounded.offsets(x, t, f)
    assert torch.equal(d_means_free, d_means_bounded)  # only the scale head is bounded


def test_a_frame_entering_the_curriculum_starts_from_its_neighbours():
    """Row 0 from rows 1 and 2: 2a - b (constant velocity) or a copy of row 1 (velocity off)."""
    from ds4d_cli.model.hexplane import HexPlane

    for velocity, expect in ((True, lambda a, b: 2 * a - b), (False, lambda a, b: a)):
        hp = HexPlane(1.0, channels=2, resolutions=(4,), time_resolution=5)
        with torch.no_grad():
            for plane in hp.time:
                plane.copy_(torch.randn_like(plane))
        before = [p.detach().clone() for p in hp.time]
        hp.extrapolate_time_row(0, towards=2, velocity=velocity)
        for old, new in zip(before, hp.time):
            assert torch.allclose(new[:, :, 0], expect(old[:, :, 1], old[:, :, 2]))
            assert torch.equal(new[:, :, 1:], old[:, :, 1:])


def _random_field(dtype=torch.float32, seed=0):
    from ds4d_cli.model.hexplane import HexPlane

    torch.manual_seed(seed)
    hp = HexPlane(1.0, channels=8, resolutions=(5, 9), time_resolution=7).to(dtype)
    with torch.no_grad():
        for q in hp.parameters():
            q.copy_(torch.rand_like(q) * 2 - 0.5)
    # points inside, on the faces of and outside the bound (clamped), times on the grid rows and between
    xyz = torch.cat([torch.rand(40, 3, dtype=dtype) * 2.4 - 1.2, torch.tensor([[1.0, -1.0, 0.0]], dtype=dtype)])
    t = torch.tensor([0.0, 0.37, 0.5, 1.0], dtype=dtype)
    return hp, xyz, t


def _field_and_grads(hp, xyz, t, fused: bool):
    from ds4d_cli.render import build

    if fused:
        assert build.load() is not None, "the C++ kernel library did not build"
        assert hp._kernel_for(xyz, t) is not None
        out = hp(xyz, t)
    else:
        out = hp.forward_torch((xyz / hp.bound).clamp(-1, 1), (t * 2 - 1).clamp(-1, 1))
    weights = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)
    grads = torch.autograd.grad((out * weights).sum(), list(hp.parameters()))
    return out, grads


def test_fused_hexplane_equals_the_torch_field_and_its_gradients():
    hp, xyz, t = _random_field()
    out_k, g_k = _field_and_grads(hp, xyz, t, fused=True)
    out_t, g_t = _field_and_grads(hp, xyz, t, fused=False)
    assert out_k.shape == (4, 41, hp.out_dim)
    assert torch.allclose(out_k, out_t, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_k, g_t):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()


def test_fused_hexplane_gradcheck_in_double():
    hp, xyz, t = _random_field(torch.float64)
    planes = list(hp.parameters())

    def field(*ps):
        with torch.no_grad():
            for q, v in zip(planes, ps):
                q.copy_(v)
        from ds4d_cli.model.hexplane import _FusedHexPlane
        from ds4d_cli.render import build

        return _FusedHexPlane.apply((xyz / hp.bound).clamp(-1, 1), t * 2 - 1, build.load(), hp.channels,
                                    hp.num_levels, *ps)

    inputs = [q.detach().clone().requires_grad_(True) for q in planes]
    assert torch.autograd.gradcheck(field, inputs, eps=1e-6, atol=1e-7)


def test_fused_hexplane_does_not_depend_on_the_thread_count(monkeypatch):
    hp, xyz, t = _random_field()
    xyz = torch.rand(5000, 3) * 2 - 1  # several chunks in the backward
    results = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("DS4D_RENDER_THREADS", threads)
        out, grads = _field_and_grads(hp, xyz, t, fused=True)
        results.append((out, grads))
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))


def test_hexplane_uses_torch_where_gradients_reach_the_points():
    hp, xyz, t = _random_field()
    assert hp._kernel_for(xyz.requires_grad_(True), t) is None
    out = hp(xyz, t)
    (g,) = torch.autograd.grad(out.sum(), [xyz])
    assert g.abs().sum() > 0
