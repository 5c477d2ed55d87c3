"""DSFD on hand-made features: static clips have no dynamic part; motion is picked out."""

from __future__ import annotations

import torch

from ds4d_cli.model.dsfd import decouple, dsfd, reference_from_clip


def test_static_clip_has_zero_dynamic_part():
    gen = torch.Generator().manual_seed(0)
    f0 = torch.randn(1, 5, 100, 16, generator=gen)  # [1, V, N, C]
    clip = f0.expand(8, -1, -1, -1)  # identical over 8 frames
    ref = reference_from_clip(clip, time_dim=0)
    static, dynamic = decouple(clip, ref)
    assert dynamic.abs().max() < 1e-5
    torch.testing.assert_close(static, clip, atol=1e-5, rtol=1e-5)
    g = dsfd(clip, ref)
    assert g.shape == (8, 5, 100, 32)
    torch.testing.assert_close(g[..., :16], clip)


def test_brightness_change_is_static():
    """A feature that only scales over time stays parallel to R: no dynamic part (projection)."""
    base = torch.randn(1, 50, 8)
    clip = base * torch.linspace(0.5, 1.5, 6).view(6, 1, 1)
    _, dynamic = decouple(clip, reference_from_clip(clip))
    assert dynamic.abs().max() < 1e-5


def test_moving_region_is_picked_out():
    """Feature maps [T, C, H, W]: a blob moves across a static textured background."""
    gen = torch.Generator().manual_seed(1)
    T, C, H, W = 8, 12, 32, 32
    background = torch.randn(C, H, W, generator=gen)
    blob = torch.randn(C, 1, 1, generator=gen) * 3
    clip = background.expand(T, -1, -1, -1).clone()
    moving = torch.zeros(H, W, dtype=torch.bool)
    for t in range(T):
        x0 = 4 + 3 * t
        clip[t, :, 10:16, x0 : x0 + 4] = blob
        moving[10:16, x0 : x0 + 4] = True
    ref = reference_from_clip(clip, time_dim=0).unsqueeze(0)  # [1, C, H, W]
    _, dynamic = decouple(clip, ref, dim=1)
    mag = dynamic.norm(dim=1).amax(0)  # [H, W], over time
    assert mag[~moving].max() < 1e-4  # static pixels: exactly zero dynamic part
    assert mag[moving].min() > 0.5  # every pixel the blob crosses is flagged
    # the dynamic magnitude at a given time is largest where the blob is (or was) at that time
    t = 5
    m_t = dynamic[t].norm(dim=0)
    assert m_t[10:16, 4 + 3 * t : 8 + 3 * t].mean() > 5 * m_t[~moving].mean() + 0.5


def test_dynamic_part_is_orthogonal_to_reference():
    f = torch.randn(4, 30, 16)
    ref = torch.randn(30, 16)
    _, d = decouple(f, ref)
    assert (d * ref).sum(-1).abs().max() < 1e-4
