"""TSSF on hand-made per-view features: agreement is rewarded, hidden views are ignored."""

from __future__ import annotations

import torch

from ds4d_cli.model.tssf import TSSF, mean_fusion


def _views(disagree: int = 3, B: int = 2, V: int = 5, N: int = 40, C: int = 8):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(B, 1, N, C, generator=gen)
    g = base + 0.05 * torch.randn(B, V, N, C, generator=gen)
    g[:, disagree] = torch.randn(B, N, C, generator=gen) * 2  # an inconsistent generated view
    return g


def test_da_gives_disagreeing_view_lower_weight():
    g = _views(disagree=3)
    vis = torch.ones(5, 40)
    w = TSSF(5, "da").weights(g, vis)  # [B, V, N]
    torch.testing.assert_close(w.sum(1), torch.ones(2, 40))
    others = torch.cat([w[:, :3], w[:, 4:]], dim=1)
    assert (w[:, 3] < others.min(1).values).all()
    # and the fused feature stays near the consistent ones
    fused = TSSF(5, "da")(g, vis)
    consistent = g[:, [0, 1, 2, 4]].mean(1)
    assert (fused - consistent).abs().mean() < (mean_fusion(g, vis) - consistent).abs().mean()


def test_hidden_views_get_zero_weight_and_do_not_leak():
    g = _views()
    vis = torch.ones(5, 40)
    vis[2, :20] = 0  # view 2 hides the first 20 points
    for mode in ("da", "ga", "mean"):
        m = TSSF(5, mode)
        w = m.weights(g, vis)
        assert w[:, 2, :20].abs().max() == 0
        g2 = g.clone()
        g2[:, 2, :20] = 1e3  # garbage where hidden must not change the output
        torch.testing.assert_close(m(g2, vis)[:, :20], m(g, vis)[:, :20])


def test_point_hidden_in_input_view_still_fused():
    g = _views()
    vis = torch.ones(5, 40)
    vis[0] = 0  # input view sees nothing
    out = TSSF(5, "da")(g, vis)
    assert torch.isfinite(out).all()
    assert (out - g[:, 1:].mean(1)).abs().mean() < 0.5


def test_ga_weights_are_learned_per_view():
    m = TSSF(4, "ga")
    with torch.no_grad():
        m.view_logits.copy_(torch.tensor([2.0, 0.0, 0.0, -2.0]))
    w = m.weights(torch.randn(1, 4, 10, 6), torch.ones(4, 10))
    assert (w[:, 0] > w[:, 1]).all() and (w[:, 1] > w[:, 3]).all()


def test_mean_fusion_is_visibility_weighted_mean():
    g = torch.arange(3.0).view(1, 3, 1, 1).expand(1, 3, 2, 4)
    vis = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    out = TSSF(3, "mean")(g, vis)
    torch.testing.assert_close(out[0, 0], torch.full((4,), 0.5))
    torch.testing.assert_close(out[0, 1], torch.full((4,), 1.0))


def test_forward_combines_the_views_with_exactly_its_weights():
    """forward() = sum_v weights()_v g_v (+ the input view's feature for da), with weights that are
    far from uniform: a forward that ignored them (e.g. a plain mean) fails this."""
    g = _views(disagree=3)
    vis = torch.ones(5, 40)
    vis[4, :10] = 0.3  # soft visibility
    for mode in ("da", "ga", "mean"):
        m = TSSF(5, mode)
        if mode == "ga":
            with torch.no_grad():
                m.view_logits.copy_(torch.tensor([1.5, 0.0, -1.0, 0.5, -2.0]))
        w = m.weights(g, vis)  # [B, V, N]
        combined = (w.unsqueeze(-1) * g).sum(1)
        expected = combined if mode != "da" else 0.5 * (g[:, 0] + combined)  # input view sees all points
        torch.testing.assert_close(m(g, vis), expected)
        if mode != "mean":
            assert (w - w.mean(1, keepdim=True)).abs().max() > 0.05, mode
            assert (m(g, vis) - mean_fusion(g, vis)).abs().max() > 0.05, mode


def _da_case(dtype, seed=0, B=2, V=5, N=300, C=6):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, V, N, C, generator=g, dtype=dtype)
    vis = torch.rand(V, N, generator=g, dtype=dtype)
    vis[:, :40] = (vis[:, :40] > 0.5).to(dtype)  # hard visibility: hidden views, hidden in the input view
    vis[:, 40:50] = 0.0  # hidden everywhere
    vis[1:, 50:60] = 1e-4  # visible in the input view only (the others below the mask threshold)
    return feats.requires_grad_(True), vis


def test_fused_da_equals_the_torch_fusion_and_its_gradients():
    from ds4d_cli.render import build

    if build.load() is None:
        import pytest

        pytest.skip("C++ kernel library not built")
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        feats, vis = _da_case(dtype)
        t = TSSF(feats.shape[1], "da").to(dtype)
        with torch.no_grad():
            t.log_tau.fill_(0.3)
        assert t._kernel_for(feats, vis) is not None
        ours, ref = t(feats, vis), t.forward_torch(feats, vis)
        assert torch.allclose(ours, ref, atol=tol, rtol=0)
        w = torch.randn(ours.shape, dtype=dtype)
        g_ours = torch.autograd.grad((ours * w).sum(), [feats, t.log_tau])
        g_ref = torch.autograd.grad((ref * w).sum(), [feats, t.log_tau])
        for a, b in zip(g_ours, g_ref):
            assert torch.allclose(a, b, atol=tol * max(1.0, float(b.abs().max())) * 10, rtol=tol * 10), (a - b).abs().max()


def test_fused_da_gradcheck_in_double():
    from ds4d_cli.render import build

    if build.load() is None:
        import pytest

        pytest.skip("C++ kernel library not built")
    feats, vis = _da_case(torch.float64, seed=1, B=1, V=3, N=12, C=4)
    vis = vis.clamp(0.2, 1.0)  # soft visibility, away from the mask threshold
    t = TSSF(3, "da").to(torch.float64)
    log_tau = t.log_tau.detach().clone().requires_grad_(True)

    def fused(f, lt):
        from ds4d_cli.model.tssf import _FusedDA

        return _FusedDA.apply(f, vis, lt, build.load())

    assert torch.autograd.gradcheck(fused, (feats, log_tau), eps=1e-6, atol=1e-6)
