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
