"""The fused SSIM kernel is the loss pytorch_msssim computed: same values, same gradients."""

from __future__ import annotations

import pytest
import torch
from pytorch_msssim import ssim as reference_ssim

from ds4d_cli.model import ssim as fused
from ds4d_cli.model.losses import image_losses
from ds4d_cli.render import build

pytestmark = pytest.mark.skipif(build.load() is None, reason="C++ kernel library not built")


def _pair(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=dtype)
    y = (0.6 * x + 0.4 * torch.rand(*shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x.requires_grad_(True), y


@pytest.mark.parametrize("shape,win", [((3, 3, 40, 37), 7), ((2, 3, 100, 97), 11), ((1, 1, 11, 11), 11)])
def test_values_and_gradients_match_pytorch_msssim(shape, win):
    x, y = _pair(shape, torch.float64)
    w = torch.rand(shape[0], dtype=torch.float64)
    ref = reference_ssim(x, y, data_range=1.0, size_average=False, win_size=win)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    assert fused._kernel_for(x, y, win) is not None  # the fused path, not the fallback
    ours = fused.ssim_per_image(x, y, win)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), x)
    # pytorch_msssim rounds its window to float32; the rest is double precision
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
    assert torch.allclose(g_ours, g_ref, atol=1e-6 * float(g_ref.abs().max()), rtol=1e-5)


def test_gradcheck_in_double():
    x, y = _pair((2, 2, 12, 13), torch.float64, seed=3)
    assert torch.autograd.gradcheck(lambda a: fused.ssim_per_image(a, y, 7), (x,), eps=1e-6, atol=1e-7)


def test_float32_step_shape_matches_reference():
    x, y = _pair((4, 3, 128, 128), torch.float32, seed=1)
    ref = reference_ssim(x, y, data_range=1.0, size_average=False, win_size=11)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    ours = fused.ssim_per_image(x, y, 11)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    assert torch.allclose(ours, ref, atol=2e-6)
    assert torch.allclose(g_ours, g_ref, atol=1e-4 * float(g_ref.abs().max()))


def test_identical_images_score_one_and_thread_count_does_not_matter(monkeypatch):
    x, _ = _pair((3, 3, 64, 64), torch.float32, seed=2)
    assert torch.allclose(fused.ssim_per_image(x, x.detach(), 11), torch.ones(3), atol=1e-5)
    y = x.detach().flip(-1)
    outs = []
    for threads in ("1", "2"):
        monkeypatch.setenv("DS4D_RENDER_THREADS", threads)
        s = fused.ssim_per_image(x, y, 11)
        (g,) = torch.autograd.grad(s.sum(), x)
        outs.append((s, g))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_inputs_the_kernel_does_not_take_use_the_reference():
    x, y = _pair((2, 3, 20, 20), torch.float64)
    y.requires_grad_(True)  # a target with a gradient: not the loss's case
    assert fused._kernel_for(x, y, 7) is None
    assert torch.allclose(fused.ssim_per_image(x, y, 7),
                          reference_ssim(x, y, data_range=1.0, size_average=False, win_size=7))
    small = torch.rand(1, 3, 5, 5)
    assert fused._kernel_for(small, small.clone(), 7) is None  # smaller than the window
    with pytest.raises(ValueError, match="odd"):
        fused.ssim_per_image(x.detach(), y.detach(), 8)


def test_image_losses_dssim_is_the_reference_dssim():
    g = torch.Generator().manual_seed(5)
    pred = torch.rand(3, 48, 48, 3, generator=g, dtype=torch.float64)
    target = torch.rand(3, 48, 48, 4, generator=g, dtype=torch.float64)
    alpha = torch.rand(3, 48, 48, 1, generator=g, dtype=torch.float64)
    bg = torch.ones(3, dtype=torch.float64)
    weights = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    out = image_losses(pred, alpha, target, bg, weights)
    tgt = target[..., :3] * target[..., 3:] + bg * (1 - target[..., 3:])
    s = reference_ssim(pred.permute(0, 3, 1, 2), tgt.permute(0, 3, 1, 2), data_range=1.0, size_average=False,
                       win_size=7)
    assert float(out["dssim"]) == pytest.approx(float(((1 - s) * weights).sum() / weights.sum()), abs=1e-6)



def _render_batch(C, H, W, dtype, seed=0):
    """A premultiplied render (rgb, alpha), a straight-alpha target, a background, per-pixel weights."""
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(C, H, W, 1, generator=g, dtype=dtype)
    alpha[:, : H // 4] = 0.0  # empty rows: |a - a_t| at exactly 0 where the target is empty too
    rgb = torch.rand(C, H, W, 3, generator=g, dtype=dtype) * alpha
    target = torch.rand(C, H, W, 4, generator=g, dtype=dtype)
    target[:, : H // 4, :, 3] = 0.0
    bg = torch.rand(3, generator=g, dtype=dtype)
    pw = 1 + 2 * torch.rand(C, H, W, 1, generator=g, dtype=dtype)
    return rgb.requires_grad_(True), alpha.requires_grad_(True), target, bg, pw


@pytest.mark.parametrize("size,pixel_weights", [((3, 40, 37), True), ((2, 100, 97), False), ((2, 100, 97), True)])
def test_fused_render_losses_equal_the_torch_losses(size, pixel_weights):
    from ds4d_cli.model.losses import _loss_kernel, render_losses, ssim_window

    C, H, W = size
    rgb, alpha, target, bg, pw = _render_batch(C, H, W, torch.float64)
    pw = pw if pixel_weights else None
    weights = torch.linspace(0.5, 2.0, C, dtype=torch.float64)
    assert _loss_kernel(rgb, alpha, target, ssim_window(H, W), 0.2) is not None  # the fused path
    ours = render_losses(rgb, alpha, target, bg, weights, 0.2, 1.0, pw)
    ref = image_losses(rgb + (1 - alpha) * bg, alpha, target, bg, weights, 0.2, 1.0, pw)
    for k in ("l1", "dssim", "mask", "total"):
        assert torch.allclose(ours[k], ref[k], atol=1e-6, rtol=0), k
    g_ours = torch.autograd.grad(ours["total"], [rgb, alpha])
    g_ref = torch.autograd.grad(ref["total"], [rgb, alpha])
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-6 * float(b.abs().max()), rtol=1e-5)


def test_fused_render_losses_float32_and_gradcheck():
    from ds4d_cli.model.losses import render_losses

    rgb, alpha, target, bg, pw = _render_batch(2, 24, 21, torch.float32, seed=2)
    w = torch.tensor([1.0, 0.5])
    ours = render_losses(rgb, alpha, target, bg, w, 0.2, 1.0, pw)["total"]
    ref = image_losses(rgb + (1 - alpha) * bg, alpha, target, bg, w, 0.2, 1.0, pw)["total"]
    assert torch.allclose(ours, ref, atol=1e-5)

    rgb, alpha, target, bg, pw = _render_batch(2, 12, 13, torch.float64, seed=3)
    alpha = (alpha.detach() * 0.8 + 0.1).requires_grad_(True)  # away from the |.| kinks
    target[..., 3] = 0.5 + 0.4 * target[..., 3]

    def total(r, a):
        return render_losses(r, a, target, bg, torch.tensor([1.0, 2.0], dtype=torch.float64), 0.2, 1.0, pw)["total"]

    assert torch.autograd.gradcheck(total, (rgb, alpha), eps=1e-7, atol=1e-6)


def test_render_losses_read_the_composited_features_in_place():
    """The render's [C,H,W,4] (rgb + depth) gives the losses and rgb gradients of its rgb slice;
    the depth channel gets none. A fit step passes ``RenderOutput.features`` this way."""
    from ds4d_cli.model.losses import render_losses
    from ds4d_cli.render import render

    rgb, alpha, target, bg, pw = _render_batch(2, 40, 37, torch.float64, seed=4)
    depth = torch.rand(2, 40, 37, 1, dtype=torch.float64)
    feats = torch.cat([rgb.detach(), depth], -1).requires_grad_(True)
    w = torch.tensor([1.0, 0.5], dtype=torch.float64)
    whole = render_losses(feats, alpha, target, bg, w, 0.2, 1.0, pw)
    sliced = render_losses(feats[..., :3], alpha, target, bg, w, 0.2, 1.0, pw)
    for k in ("l1", "dssim", "mask", "total"):
        assert torch.equal(whole[k], sliced[k]), k
    g_whole = torch.autograd.grad(whole["total"], feats)[0]
    g_sliced = torch.autograd.grad(sliced["total"], feats)[0]
    assert torch.equal(g_whole, g_sliced)
    assert float(g_whole[..., 3].abs().max()) == 0.0 and float(g_whole[..., :3].abs().max()) > 0

    # the CPU kernel's render exposes that tensor, and its rgb and depth are views of it
    n = 50
    g = torch.Generator().manual_seed(0)
    means = torch.randn(n, 3, generator=g) * 0.3
    quats = torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4)
    scales = torch.full((n, 3), 0.05)
    vm = torch.eye(4)[None].clone()
    vm[0, 2, 3] = 3.0
    K = torch.tensor([[[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]])
    out = render(means, quats, scales, torch.full((n,), 0.8), torch.rand(n, 3, generator=g), vm, K, 32, 32,
                 backend="cpu")
    if out.features is not None:  # the C++ kernel is built
        assert torch.equal(out.features[..., :3], out.rgb) and torch.equal(out.features[..., 3:], out.depth)
