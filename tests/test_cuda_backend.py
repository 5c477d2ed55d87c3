"""The ``cuda`` backend proven on the CPU.

- Our EWA projection against gsplat 1.5.3's own pure-torch ``_fully_fused_projection`` (the maths
  its CUDA kernel implements), values and gradients, on scenes where the field-of-view clamp and
  the Jacobian's off-diagonal terms matter.
- The backend's glue (:mod:`ds4d_cli.render.cuda`) run through gsplat's real Python wrappers with
  the compiled kernels replaced by pure-torch stand-ins (:mod:`ds4d_cli.render.testing`), against
  the CPU backend: image, alpha, depth, ``info`` and every gradient.
"""

from __future__ import annotations

import math

import pytest
import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _isect_offset_encode, _isect_tiles

from ds4d_cli.render import render
from ds4d_cli.render.projection import ALPHA_MIN, MAX_EXTENT, covariance_3d, project
from ds4d_cli.render.testing import emulated_gsplat_cuda, intersect_offset, intersect_tile
from test_render import GRAD_NAMES, _cameras, _hard_scene, _rel, _render_with_grads


# --------------------------------------------------------------------------- projection parity
def _random_rotation(g: torch.Generator, n: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.linalg.det(q))[:, None, None]


def _projection_scene(fov: str, seed: int = 0):
    """Anisotropic, rotated Gaussians spread well beyond a 1.3x field of view, 3 off-centre cameras."""
    g = torch.Generator().manual_seed(seed)
    W, H, N, C = 64, 48, 300, 3
    depth = 1.0 + 4.0 * torch.rand(N, generator=g, dtype=torch.float64)
    # lateral spread in units of depth: within and up to ~3x beyond the image's half-angle
    half = {"wide": 1.6, "narrow": 0.06}[fov]
    lateral = (torch.rand(N, 2, generator=g, dtype=torch.float64) * 2 - 1) * half * 3.0 * depth[:, None]
    local = torch.cat([lateral, depth[:, None]], dim=1)
    # scales from 1e-3 to 0.3 of the depth, up to 100:1 anisotropy
    scales = depth[:, None] * 10 ** (-3 + 2.5 * torch.rand(N, 3, generator=g, dtype=torch.float64))
    quats = torch.randn(N, 4, generator=g, dtype=torch.float64)
    # cameras: slightly rotated and translated; the points are placed in camera 0's frame
    tilt = _random_rotation(g, C)
    tilt = torch.eye(3, dtype=torch.float64) + 0.15 * (tilt - torch.eye(3, dtype=torch.float64))
    tilt, _ = torch.linalg.qr(tilt)
    tilt = tilt * torch.sign(torch.diagonal(tilt, dim1=-2, dim2=-1))[:, None, :]
    viewmats = torch.eye(4, dtype=torch.float64).repeat(C, 1, 1)
    viewmats[:, :3, :3] = tilt
    viewmats[:, :3, 3] = torch.randn(C, 3, generator=g, dtype=torch.float64) * 0.05 * depth.mean()
    viewmats[0] = torch.eye(4, dtype=torch.float64)
    means = local
    focal = {"wide": 0.3, "narrow": 8.0}[fov]  # fx as a fraction of the width: ~118 deg and ~7 deg
    Ks = torch.zeros(C, 3, 3, dtype=torch.float64)
    Ks[:, 0, 0] = focal * W * torch.tensor([1.0, 1.1, 0.9], dtype=torch.float64)
    Ks[:, 1, 1] = focal * W * torch.tensor([1.0, 0.95, 1.2], dtype=torch.float64)
    Ks[:, 0, 2] = torch.tensor([0.5, 0.3, 0.62], dtype=torch.float64) * W  # off-centre principal points
    Ks[:, 1, 2] = torch.tensor([0.5, 0.7, 0.41], dtype=torch.float64) * H
    Ks[:, 2, 2] = 1.0
    return means, quats, scales, viewmats, Ks, W, H


def _outputs_and_grads(fn, means, quats, scales, weights):
    leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales)]
    means2d, conics, depths, radii = fn(*leaves)
    valid = depths.detach() > 0.01
    w2, wc, wd = weights
    loss = ((means2d * w2).sum(-1) + (conics * wc).sum(-1) + depths * wd)[valid].sum()
    grads = torch.autograd.grad(loss, leaves)
    return (means2d.detach(), conics.detach(), depths.detach(), radii), grads, valid


@pytest.mark.parametrize("fov", ["wide", "narrow"])
def test_projection_matches_gsplat_reference(fov):
    means, quats, scales, viewmats, Ks, W, H = _projection_scene(fov)
    C, N = viewmats.shape[0], means.shape[0]
    # opacity >= 1/255 * e^(3.33^2/2) ~ 1.004 clamps our opacity-aware extent at gsplat's 3.33
    full = torch.full((C, N), 1.5, dtype=torch.float64)

    def ours(m, q, s):
        p = project(m.expand(C, N, 3), q, s, full, viewmats, Ks, W, H)
        return p.means2d, p.conics, p.depths, p.radii

    def reference(m, q, s):
        radii, means2d, depths, conics, _ = _fully_fused_projection(m, covariance_3d(q, s), viewmats, Ks, W, H)
        return means2d, conics, depths, radii

    g = torch.Generator().manual_seed(1)
    weights = (torch.randn(C, N, 2, generator=g, dtype=torch.float64),
               torch.randn(C, N, 3, generator=g, dtype=torch.float64) * 10.0,
               torch.randn(C, N, generator=g, dtype=torch.float64))
    (m2, con, dep, rad), grads, valid = _outputs_and_grads(ours, means, quats, scales, weights)
    (m2_r, con_r, dep_r, rad_r), grads_r, valid_r = _outputs_and_grads(reference, means, quats, scales, weights)

    # the scene exercises the clamp: many Gaussians beyond 1.3x the field of view, some still on screen
    fx, cx = Ks[:, 0, 0, None], Ks[:, 0, 2, None]
    u = ((m2_r[..., 0] - cx) / fx)
    beyond = valid_r & ((u > (W - cx) / fx + 0.3 * 0.5 * W / fx) | (u < -cx / fx - 0.3 * 0.5 * W / fx))
    assert beyond.sum() > 20, int(beyond.sum())
    assert (beyond & (rad_r > 0).all(-1)).sum() >= 3, "some clamped Gaussians must still reach the image"
    assert (valid_r & ~beyond & (rad_r > 0).all(-1)).sum() > 20
    assert (con_r[..., 1][valid_r].abs() > 1e-3 * con_r[..., 0][valid_r].abs()).float().mean() > 0.5, "anisotropic"

    assert torch.equal(valid, valid_r)
    assert torch.allclose(m2[valid], m2_r[valid], rtol=1e-12, atol=1e-9)
    assert torch.allclose(dep, dep_r, rtol=1e-13, atol=1e-13)
    scale = con_r[valid].abs().amax(dim=-1, keepdim=True)
    assert ((con[valid] - con_r[valid]).abs() / scale).max() < 1e-9
    assert torch.equal(rad, rad_r)
    for name, a, b in zip(("means", "quats", "scales"), grads, grads_r):
        assert b.abs().max() > 0
        assert _rel(a, b) < 1e-9, f"gradient of {name}: relative error {_rel(a, b)}"


def test_opacity_aware_radius_is_gsplat_cuda_kernels():
    """Below full opacity the extent is min(3.33, sqrt(2 ln(o / (1/255)))) (ProjectionEWA3DGSFused.cu);
    under 1/255 the Gaussian is culled."""
    means, quats, scales, viewmats, Ks, W, H = _projection_scene("wide", seed=2)
    C, N = viewmats.shape[0], means.shape[0]
    g = torch.Generator().manual_seed(3)
    opac = torch.rand(C, N, generator=g, dtype=torch.float64) ** 3
    p = project(means.expand(C, N, 3), quats, scales, opac, viewmats, Ks, W, H)
    radii, means2d, depths, conics, _ = _fully_fused_projection(means, covariance_3d(quats, scales), viewmats, Ks, W, H)
    a, b, c = conics.unbind(-1)
    det = a * c - b * b
    cov00, cov11 = c / det, a / det  # the blurred 2D covariance's diagonal
    extent = torch.sqrt(2 * torch.log(opac.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp(max=MAX_EXTENT)
    rx, ry = torch.ceil(extent * cov00.sqrt()), torch.ceil(extent * cov11.sqrt())
    on = (opac >= ALPHA_MIN) & (depths > 0.01) & (rx > 0) & (ry > 0)
    on &= (means2d[..., 0] + rx > 0) & (means2d[..., 0] - rx < W) & (means2d[..., 1] + ry > 0) & (means2d[..., 1] - ry < H)
    expected = torch.where(on[..., None], torch.stack([rx, ry], -1), torch.zeros_like(means2d)).int()
    assert ((opac < ALPHA_MIN) & (radii > 0).all(-1)).any(), "the scene must hold faint Gaussians the kernel culls"
    assert (expected < radii).any(), "faint Gaussians must get smaller boxes"
    assert torch.equal(p.radii, expected)


# --------------------------------------------------------------------------- emulated kernels
def _screen_scene(seed: int, I: int = 2, N: int = 40, W: int = 50, H: int = 35):
    g = torch.Generator().manual_seed(seed)
    means2d = torch.rand(I, N, 2, generator=g) * torch.tensor([W * 1.4, H * 1.4]) - torch.tensor([W * 0.2, H * 0.2])
    radii = torch.randint(0, 20, (I, N, 2), generator=g, dtype=torch.int32)
    radii[:, ::7, 1] = 0  # culled on one axis only
    depths = torch.rand(I, N, generator=g) * 5 + 0.1
    depths[:, 3] = depths[:, 4]  # a tie: the stable sort keeps index order
    return means2d, radii, depths


def test_tile_intersection_stand_ins_match_gsplat_torch_reference():
    tile, W, H = 16, 50, 35
    tw, th = math.ceil(W / tile), math.ceil(H / tile)
    means2d, radii, depths = _screen_scene(0, W=W, H=H)
    I = means2d.shape[0]
    ref = _isect_tiles(means2d, radii, depths, tile, tw, th)
    ours = intersect_tile(means2d, radii, depths, None, None, I, tile, tw, th, True, False)
    for a, b, name in zip(ours, ref, ("tiles_per_gauss", "isect_ids", "flatten_ids")):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert ours[1].numel() > 50
    offsets = intersect_offset(ours[1], I, tw, th)
    ref_offsets = _isect_offset_encode(ref[1], I, tw, th)
    assert offsets.dtype == torch.int32 and torch.equal(offsets, ref_offsets)
    # packed layout: the visible (image, Gaussian) pairs as a flat list give the same intersections
    vis = (radii > 0).all(-1)
    image_ids, gaussian_ids = torch.nonzero(vis, as_tuple=True)
    packed = intersect_tile(means2d[vis].contiguous(), radii[vis].contiguous(), depths[vis].contiguous(),
                            image_ids, gaussian_ids, I, tile, tw, th, True, False)
    assert torch.equal(packed[1], ref[1])
    assert torch.equal((image_ids * means2d.shape[1] + gaussian_ids)[packed[2].long()], ref[2].long())
    # what the compiled kernels refuse, the stand-ins refuse
    with pytest.raises(RuntimeError, match="contiguous"):
        intersect_tile(means2d.transpose(0, 1), radii, depths, None, None, I, tile, tw, th, True, False)
    with pytest.raises(RuntimeError, match="int32"):
        intersect_tile(means2d, radii.long(), depths, None, None, I, tile, tw, th, True, False)


# --------------------------------------------------------------------------- the backend's glue
def _cuda_vs_cpu(params, vm, K, W, H, bg, tol: float = 2e-6, grad_tol: float = 1e-5, **kw):
    ref, ref_grads = _render_with_grads("cpu", params, vm, K, W, H, bg, **kw)
    with emulated_gsplat_cuda() as calls:
        out, grads = _render_with_grads("cuda", params, vm, K, W, H, bg, **kw)
        assert calls["rasterize_to_pixels_3dgs_fwd"] == 1 and calls["rasterize_to_pixels_3dgs_bwd"] == 1
        assert calls["intersect_tile"] == 1 and calls["intersect_offset"] == 1
    assert out.info["backend"] == "cuda" and ref.info["backend"] == "cpu"
    for name in ("rgb", "alpha", "depth"):
        a, b = getattr(out, name), getattr(ref, name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
        # float32 depths of a few units: a tolerance relative to their size (a kernel built with other
        # SIMD instructions, e.g. AVX-512's FMA, rounds the last bit differently)
        scale = max(1.0, float(b.abs().max()))
        assert (a - b).abs().max() < tol * scale, f"{name} differs by {(a - b).abs().max()}"
    assert out.info.keys() == ref.info.keys()
    for key in ref.info:
        a, b = out.info[key], ref.info[key]
        if key == "backend":
            continue
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and torch.allclose(a.detach(), b.detach(), atol=tol, rtol=tol), key
        else:
            assert a == b, key
    for name, g, r in zip(GRAD_NAMES, grads, ref_grads):
        assert r is not None and g is not None, name
        assert r.abs().max() > 0, f"reference gradient of {name} is zero: test is vacuous"
        assert _rel(g, r) < grad_tol, f"gradient of {name}: relative error {_rel(g, r)}"
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_glue_matches_cpu_backend_on_the_hard_scene(dtype):
    """float64 too: the rasterizer is float32 only, so the glue composites in float32 and casts back."""
    W, H = 48, 37  # not multiples of the tile size
    params = _hard_scene(dtype)
    vm, K = _cameras([0.0, 75.0], [0.0, 25.0], W, H, dtype)
    bg = torch.tensor([[0.2, 0.3, 0.4], [1.0, 1.0, 1.0]], dtype=dtype)
    loose = dtype == torch.float64  # float32 compositing against a float64 reference
    out = _cuda_vs_cpu(params, vm, K, W, H, bg, tol=1e-5 if loose else 2e-6, grad_tol=1e-4 if loose else 1e-5)
    radii = out.info["radii"]
    assert (radii[0, 0:4] == 0).all() and (radii[:, 12:14] > max(W, H) / 2).all()
    assert out.alpha.max() > 0.9995, "the opaque stack must hit the transmittance cut-off"


def test_cuda_glue_matches_cpu_backend_with_per_camera_gaussians_and_sh():
    """What the trainer renders: one deformed copy per camera [C,N,...], shared opacities, SH colours."""
    W, H = 40, 33
    g = torch.Generator().manual_seed(3)
    C, n = 4, 150
    base = torch.randn(n, 3, generator=g) * 0.4
    means = torch.stack([base + 0.05 * c * torch.randn(n, 3, generator=g) for c in range(C)])
    quats = torch.randn(C, n, 4, generator=g)
    scales = torch.rand(C, n, 3, generator=g) * 0.1 + 0.02
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    sh = torch.randn(n, 4, 3, generator=g) * 0.4
    vm, K = _cameras([0.0, 90.0, 200.0, 300.0], [0.0, 20.0, -10.0, 35.0], W, H)
    bg = torch.rand(C, 3, generator=g)
    out = _cuda_vs_cpu([means, quats, scales, opac, sh], vm, K, W, H, bg, sh_degree=1)
    assert out.info["n_cameras"] == C and out.info["means2d"].shape == (C, n, 2)


def test_cuda_glue_on_empty_and_fully_culled_scenes():
    W = H = 20
    vm, K = _cameras([0.0], [0.0], W, H)
    bg = torch.tensor([0.1, 0.2, 0.3])
    with emulated_gsplat_cuda():
        for means in (torch.zeros(0, 3), torch.tensor([[0.0, -3.0, 0.0]])):
            n = means.shape[0]
            leaf = means.clone().requires_grad_(True)
            out = render(leaf, torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4), torch.full((n, 3), 0.1),
                         torch.full((n,), 0.9), torch.rand(n, 3), vm, K, W, H, background=bg, backend="cuda")
            assert torch.allclose(out.rgb, bg.expand(1, H, W, 3)) and out.alpha.abs().max() == 0
            out.rgb.sum().backward()
            assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
