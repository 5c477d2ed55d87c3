"""The rasterizer: CPU backends against the dense reference and closed forms, and in use."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ds4d_cli import cameras as cam
from ds4d_cli.errors import Ds4dError
from ds4d_cli.gaussians import Gaussians
from ds4d_cli.render import build as render_build
from ds4d_cli.render import render, render_gaussians

CPU_IMPLS = ["cpu-ext", "cpu-torch"]


def _cameras(azimuths, elevations, width, height, dtype=torch.float32):
    vm = cam.c2w_to_viewmat(
        cam.orbit_camera(torch.tensor(azimuths, dtype=torch.float64), torch.tensor(elevations, dtype=torch.float64),
                         dtype=torch.float64)
    ).to(dtype)
    K = cam.intrinsics_from_fov(cam.DEFAULT_FOV_DEG, width, height, dtype=dtype)
    return vm, K[None].expand(len(azimuths), 3, 3).contiguous()


def _hard_scene(dtype, seed=0):
    """Random Gaussians plus the awkward cases: behind the camera, off-screen, tiny, huge,
    and an opaque stack that drives transmittance below the cut-off."""
    g = torch.Generator().manual_seed(seed)
    n = 160
    means = torch.randn(n, 3, generator=g) * 0.5
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.12 + 0.01
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g)
    means[0:4] = torch.tensor([0.0, -2.6, 0.0]) + torch.randn(4, 3, generator=g) * 0.1  # behind cam 0
    means[4:8] = torch.tensor([3.5, 0.0, 0.0]) + torch.randn(4, 3, generator=g) * 0.1  # off-screen for cam 0
    scales[8:12] = 1e-4  # tiny: footprint is the 0.3 px^2 dilation
    scales[12:14] = 1.5  # huge: larger than the image
    opac[12:14] = 0.2
    means[14:20] = torch.tensor([0.05, 0.0, 0.02]) + torch.linspace(-0.3, 0.3, 6)[:, None] * torch.tensor([0.0, 1.0, 0.0])
    scales[14:20] = 0.25
    opac[14:20] = 0.9995  # clamped at 0.999, opaque stack: T < 1e-4 after three
    return [t.to(dtype) for t in (means, quats, scales, opac, colors)]


def _render_with_grads(backend, params, vm, K, W, H, bg, **kw):
    leaves = [p.clone().requires_grad_(True) for p in params]
    bg_leaf = bg.clone().requires_grad_(True)
    out = render(*leaves, vm, K, W, H, background=bg_leaf, backend=backend, **kw)
    out.info["means2d"].retain_grad()
    weights = torch.linspace(0.2, 1.0, 3, dtype=out.rgb.dtype)
    loss = (out.rgb * weights).sum() + (out.alpha ** 2).sum() + 0.3 * out.depth.sum() + out.rgb[:, 5:9, 3:20].pow(2).sum()
    loss.backward()
    grads = [p.grad for p in leaves] + [bg_leaf.grad, out.info["means2d"].grad]
    return out, grads


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


GRAD_NAMES = ["means", "quats", "scales", "opacities", "colors", "background", "means2d"]


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_backend_matches_dense_reference(impl, dtype):
    W, H = 48, 37  # not multiples of the tile size
    params = _hard_scene(dtype)
    vm, K = _cameras([0.0, 75.0], [0.0, 25.0], W, H, dtype)
    bg = torch.tensor([[0.2, 0.3, 0.4], [1.0, 1.0, 1.0]], dtype=dtype)
    ref, ref_grads = _render_with_grads("dense", params, vm, K, W, H, bg)
    out, grads = _render_with_grads(impl, params, vm, K, W, H, bg)

    # The scene exercises what it claims to.
    radii = ref.info["radii"]
    assert (radii[0, 0:4] == 0).all(), "behind-camera Gaussians must be culled"
    assert (radii[0, 4:8] == 0).all(), "off-screen Gaussians must be culled"
    assert (radii[:, 12:14] > max(W, H) / 2).all(), "huge Gaussians must cover the image"
    assert ref.alpha.max() > 0.9995, "the opaque stack must saturate some pixels"

    for name in ("rgb", "alpha", "depth"):
        diff = (getattr(out, name) - getattr(ref, name)).abs().max().item()
        assert diff < 1e-5, f"{name} differs by {diff}"
    for name, g, r in zip(GRAD_NAMES, grads, ref_grads):
        assert r is not None and g is not None, name
        assert r.abs().max() > 0, f"reference gradient of {name} is zero: test is vacuous"
        assert _rel(g, r) < 1e-4, f"gradient of {name}: relative error {_rel(g, r)}"


def test_transmittance_cutoff_is_exclusive():
    """Opaque stack: compositing stops (exclusive) once T would reach <= 1e-4, as gsplat does."""
    W = H = 16
    vm, K = _cameras([0.0], [0.0], W, H, torch.float64)
    n = 4
    means = torch.tensor([[0.0, y, 0.0] for y in (-0.3, -0.2, -0.1, 0.0)], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * n, dtype=torch.float64)
    scales = torch.full((n, 3), 20.0, dtype=torch.float64)  # flat over the image centre
    colors = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0]]
    opac = torch.tensor([0.9, 0.99, 0.999, 0.999], dtype=torch.float64)
    for backend in ["dense"] + CPU_IMPLS:
        out = render(means, quats, scales, opac, colors, vm, K, W, H, backend=backend)
        centre = out.rgb[0, H // 2, W // 2]
        # T: 1 -> 0.1 -> 0.001; the third would leave T = 1e-6 <= 1e-4, so the ray stops there.
        expected = torch.tensor([0.9, 0.1 * 0.99, 0.0], dtype=torch.float64)
        assert torch.allclose(centre, expected, atol=1e-4), (backend, centre)
        assert out.alpha[0, H // 2, W // 2, 0].item() == pytest.approx(0.999, abs=1e-4)


@pytest.mark.parametrize("backend", ["dense"] + CPU_IMPLS)
def test_single_gaussian_matches_closed_form(backend):
    W = H = 64
    vm, K = _cameras([0.0], [0.0], W, H, torch.float64)
    s, o, z = 0.05, 0.8, 2.0
    color = torch.tensor([[0.9, 0.4, 0.1]], dtype=torch.float64)
    bg = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    out = render(
        torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[0.3, 0.1, -0.5, 0.2]], dtype=torch.float64),
        torch.full((1, 3), s, dtype=torch.float64), torch.tensor([o], dtype=torch.float64), color,
        vm, K, W, H, background=bg, backend=backend,
    )
    f = K[0, 0, 0].item()
    var = (f * s / z) ** 2 + 0.3  # isotropic: rotation-invariant; plus the low-pass dilation
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                            indexing="ij")
    r2 = (xs - W / 2) ** 2 + (ys - H / 2) ** 2
    alpha = torch.clamp(o * torch.exp(-0.5 * r2 / var), max=0.999)
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
    expected_rgb = alpha[..., None] * color[0] + (1 - alpha[..., None]) * bg
    assert torch.allclose(out.alpha[0, ..., 0], alpha, atol=1e-9)
    assert torch.allclose(out.rgb[0], expected_rgb, atol=1e-9)
    assert torch.allclose(out.depth[0, ..., 0], alpha * z, atol=1e-9)
    assert (out.alpha[0, ..., 0] == 0).sum() > 0 and out.alpha.max() > 0.7


def test_batched_per_camera_means_equal_separate_renders():
    W = H = 40
    g = torch.Generator().manual_seed(3)
    C, n = 3, 120
    base = torch.randn(n, 3, generator=g) * 0.4
    means = torch.stack([base + 0.05 * c * torch.randn(n, 3, generator=g) for c in range(C)])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.1 + 0.02
    opac = torch.rand(C, n, generator=g)
    colors = torch.rand(C, n, 3, generator=g)
    vm, K = _cameras([0.0, 120.0, 240.0], [0.0, 20.0, -10.0], W, H)
    leaf = means.clone().requires_grad_(True)
    batched = render(leaf, quats, scales, opac, colors, vm, K, W, H, backend="cpu")
    batched.rgb.square().sum().backward()
    for c in range(C):
        single_leaf = means[c].clone().requires_grad_(True)
        single = render(single_leaf, quats, scales, opac[c], colors[c], vm[c : c + 1], K[c : c + 1], W, H, backend="cpu")
        single.rgb.square().sum().backward()
        assert torch.allclose(batched.rgb[c], single.rgb[0], atol=1e-6)
        assert torch.allclose(batched.depth[c], single.depth[0], atol=1e-6)
        assert _rel(leaf.grad[c], single_leaf.grad) < 1e-5  # float32 sums in another order


def test_spherical_harmonics_view_dependent_and_consistent():
    W = H = 32
    g = torch.Generator().manual_seed(5)
    n = 80
    means = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.1 + 0.03
    opac = torch.rand(n, generator=g, dtype=torch.float64)
    sh = torch.randn(n, 4, 3, generator=g, dtype=torch.float64) * 0.5
    vm, K = _cameras([0.0, 180.0], [0.0, 0.0], W, H, torch.float64)
    # degree 0 of the SH equals rendering the RGB colour 0.5 + C0 * dc
    deg0 = render(means, quats, scales, opac, sh, vm, K, W, H, sh_degree=0, backend="cpu")
    rgb = render(means, quats, scales, opac, (0.5 + 0.28209479177387814 * sh[:, 0]).clamp_min(0), vm, K, W, H,
                 backend="cpu")
    assert torch.allclose(deg0.rgb, rgb.rgb, atol=1e-9)
    # degree 1 differs from degree 0 (view-dependent)
    deg1 = render(means, quats, scales, opac, sh, vm, K, W, H, sh_degree=1, backend="cpu")
    assert (deg1.rgb - deg0.rgb).abs().max() > 1e-2
    # every degree the kernel evaluates (colours depend on the means through the view direction)
    # matches the dense reference, which differentiates gsplat's torch SH with autograd
    sh16 = torch.randn(n, 16, 3, generator=g, dtype=torch.float64) * 0.5
    for degree in (1, 2, 3):
        grads = []
        for backend in ("cpu-ext", "dense"):
            leaves = [means.clone().requires_grad_(True), sh16.clone().requires_grad_(True)]
            out = render(leaves[0], quats, scales, opac, leaves[1], vm, K, W, H, sh_degree=degree, backend=backend)
            (out.rgb * torch.tensor([0.3, 1.0, -0.5], dtype=torch.float64)).sum().backward()
            grads.append((out.rgb, leaves[0].grad, leaves[1].grad))
        (rgb, g_means, g_sh), (ref_rgb, ref_means, ref_sh) = grads
        assert torch.allclose(rgb, ref_rgb, atol=1e-12), degree
        assert _rel(g_means, ref_means) < 1e-9 and _rel(g_sh, ref_sh) < 1e-9, degree
        assert (g_sh[:, (degree + 1) ** 2 :] == 0).all()  # unused bands get no gradient
        assert g_sh[:, degree**2 : (degree + 1) ** 2].abs().max() > 0


def test_fused_projection_backward_matches_finite_differences():
    """The kernel's hand-written projection backward (float64) against finite differences:
    RGB and SH degree 3, shared [N,...] and per-camera [C,N,...] inputs, unnormalised
    quaternions, a Gaussian behind one camera and one outside the Jacobian's 1.3x FOV clamp."""
    from ds4d_cli.render import cpu

    lib = render_build.load()
    if lib is None:
        pytest.skip(f"C++ kernel unavailable: {render_build._error}")
    W, H, C, n = 40, 30, 2, 8
    g = torch.Generator().manual_seed(7)
    vm, K = _cameras([0.0, 75.0], [0.0, 25.0], W, H, torch.float64)
    means = torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.4
    means[0] = torch.tensor([0.0, -2.6, 0.0])  # behind camera 0
    means[1] = torch.tensor([2.5, 0.0, 0.0])  # far outside camera 0's view
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64) * 3
    scales = torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.1 + 0.01
    opac = torch.rand(n, generator=g, dtype=torch.float64)
    p0 = vm[0, :3, :3] @ means[:2].T + vm[0, :3, 3:]
    assert p0[2, 0] < 0.01 and abs(p0[0, 1] / p0[2, 1]) > 1.3 * 0.5 * W / K[0, 0, 0]  # the cases hold
    for degree in (None, 3):
        colors = (torch.rand(n, 3, generator=g, dtype=torch.float64) if degree is None
                  else torch.randn(n, 16, 3, generator=g, dtype=torch.float64))
        for per_camera in (False, True):
            inputs = [means, quats, scales, opac, colors]
            if per_camera:  # distinct copies per camera, as the trainer's deformed batches
                inputs = [x.expand(C, *x.shape) + 0.01 * torch.randn(C, *x.shape, generator=g, dtype=torch.float64)
                          for x in inputs]
            inputs = [x.detach().clone().requires_grad_(True) for x in inputs]

            def project(*x):
                return cpu._ExtProject.apply(*x, vm, K, W, H, degree, lib, 1)[:4]

            assert torch.autograd.gradcheck(project, inputs, eps=1e-6, atol=1e-7, rtol=1e-5), (degree, per_camera)


def test_per_camera_and_shared_inputs_agree():
    """[C,N,...] copies of shared Gaussians render the same images, and their gradients sum
    to the shared ones (the trainer's batches pass per-camera tensors, the export shared)."""
    W, H = 40, 32
    params = _hard_scene(torch.float32, seed=2)
    vm, K = _cameras([0.0, 120.0, 240.0], [0.0, 20.0, -10.0], W, H)
    C = vm.shape[0]
    shared = [p.clone().requires_grad_(True) for p in params]
    copies = [p.detach().expand(C, *p.shape).clone().requires_grad_(True) for p in params]
    images = []
    for leaves in (shared, copies):
        out = render(*leaves, vm, K, W, H, backend="cpu-ext")
        (out.rgb * torch.tensor([0.2, 0.5, 1.0])).sum().add(out.depth.sum() * 0.1).backward()
        images.append(out.rgb)
    assert torch.allclose(images[0], images[1], atol=1e-6)
    for name, a, b in zip(GRAD_NAMES, shared, copies):
        assert a.grad.abs().max() > 0, name
        assert _rel(b.grad.sum(0), a.grad) < 1e-5, name


def test_kernel_threads_do_not_change_results(monkeypatch):
    """Every write in the kernel has one owner, so any thread count gives identical bits."""
    W, H = 48, 40
    params = _hard_scene(torch.float32, seed=4)
    vm, K = _cameras([0.0, 75.0, 150.0], [0.0, 25.0, 5.0], W, H)
    runs = []
    for threads in ("1", "3"):
        monkeypatch.setenv("DS4D_RENDER_THREADS", threads)
        leaves = [p.clone().requires_grad_(True) for p in params]
        out = render(*leaves, vm, K, W, H, backend="cpu-ext")
        (out.rgb.square().sum() + out.alpha.sum()).backward()
        runs.append([out.rgb, out.alpha] + [p.grad for p in leaves])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_camera_gradients_match_dense_reference():
    """Cameras that need gradients take the torch projection in front of the C++ compositor."""
    W, H = 32, 24
    params = _hard_scene(torch.float64, seed=6)
    vm, K = _cameras([0.0, 60.0], [0.0, 15.0], W, H, torch.float64)
    grads = []
    for backend in ("cpu-ext", "dense"):
        vm_leaf = vm.clone().requires_grad_(True)
        out = render(*params, vm_leaf, K, W, H, backend=backend)
        (out.rgb.sum() + out.depth.sum()).backward()
        grads.append((out.rgb, vm_leaf.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-12)
    assert grads[1][1].abs().max() > 0 and _rel(grads[0][1], grads[1][1]) < 1e-9


def test_info_dict_drives_gsplat_default_strategy():
    from gsplat.strategy import DefaultStrategy

    W = H = 48
    gs = Gaussians.random_ball(300, radius=0.5, seed=1)
    opts = {k: torch.optim.Adam([p], lr=1e-3) for k, p in gs.params.items()}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1, grow_grad2d=1e-9, prune_opa=0.0)
    strategy.check_sanity(gs.params, opts)
    state = strategy.initialize_state(scene_scale=1.0)
    vm, K = _cameras([0.0, 90.0], [0.0, 10.0], W, H)
    target = torch.rand(2, H, W, 3, generator=torch.Generator().manual_seed(0))
    out = render_gaussians(gs, vm, K, W, H, backend="cpu")
    assert out.info["means2d"].shape == (2, 300, 2) and out.info["radii"].shape == (2, 300, 2)
    strategy.step_pre_backward(gs.params, opts, state, 1, out.info)
    (out.rgb - target).abs().mean().backward()
    assert out.info["means2d"].grad is not None and out.info["means2d"].grad.abs().sum() > 0
    strategy.step_post_backward(gs.params, opts, state, 1, out.info)
    assert gs.num_gaussians > 300, "strategy should have duplicated/split Gaussians"
    n = gs.num_gaussians
    for key, p in gs.params.items():
        assert p.shape[0] == n, key
        assert opts[key].param_groups[0]["params"][0] is p
    # the grown set renders and trains on
    out2 = render_gaussians(gs, vm, K, W, H, backend="cpu")
    out2.rgb.mean().backward()
    assert gs.params["means"].grad.shape == (n, 3)


@pytest.mark.slow
def test_fit_static_image_reaches_28db(windmill_dir):
    from PIL import Image

    W = 64
    img = Image.open(windmill_dir / "input" / "000.png").convert("RGB").resize((W, W), Image.BILINEAR)
    target = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
    vm, K = _cameras([0.0], [0.0], W, W)
    g = torch.Generator().manual_seed(0)
    n = 1024
    pts = torch.rand(n, 3, generator=g) * torch.tensor([1.8, 0.2, 1.8]) - torch.tensor([0.9, 0.1, 0.9])
    gs = Gaussians.from_points(pts, torch.rand(n, 3, generator=g), opacity=0.5)
    lrs = {"means": 1e-3, "sh0": 2e-2, "scales": 1e-2, "opacities": 5e-2, "quats": 1e-2}
    opt = torch.optim.Adam([{"params": [gs.params[k]], "lr": lr} for k, lr in lrs.items()])

    def psnr() -> float:
        with torch.no_grad():
            out = render_gaussians(gs, vm, K, W, W, background=torch.zeros(3), backend="cpu")
        return -10 * math.log10(((out.rgb - target) ** 2).mean().item())

    start = psnr()
    for _ in range(200):
        out = render_gaussians(gs, vm, K, W, W, background=torch.zeros(3), backend="cpu")
        loss = (out.rgb - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = psnr()
    assert start < 15 and final > 28, (start, final)


def test_two_backward_passes_accumulate():
    """Losses backpropagated separately (retain_graph) add up like one combined loss."""
    W = H = 24
    vm, K = _cameras([0.0], [0.0], W, H)
    gs = Gaussians.random_ball(60, 0.4, 2)
    out = render_gaussians(gs, vm, K, W, H, backend="cpu")
    out.rgb.sum().backward(retain_graph=True)
    out.alpha.sum().backward()
    split = gs.params["means"].grad.clone()
    gs.zero_grad()
    out = render_gaussians(gs, vm, K, W, H, backend="cpu")
    (out.rgb.sum() + out.alpha.sum()).backward()
    assert _rel(split, gs.params["means"].grad) < 1e-5


def test_backend_selection_and_errors():
    W = H = 16
    vm, K = _cameras([0.0], [0.0], W, H)
    gs = Gaussians.random_ball(20, 0.3, 0)
    out = render_gaussians(gs, vm, K, W, H)  # auto
    assert out.info["backend"] == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(Ds4dError):
        render_gaussians(gs, vm, K, W, H, backend="opengl")
    if not torch.cuda.is_available():
        with pytest.raises(Ds4dError):
            render_gaussians(gs, vm, K, W, H, backend="cuda")


def test_empty_and_fully_culled_scenes():
    W = H = 20
    vm, K = _cameras([0.0], [0.0], W, H)
    bg = torch.tensor([0.1, 0.2, 0.3])
    behind = torch.tensor([[0.0, -3.0, 0.0]])
    for means in (torch.zeros(0, 3), behind):
        n = means.shape[0]
        leaf = means.clone().requires_grad_(True)
        out = render(leaf, torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4), torch.full((n, 3), 0.1),
                     torch.full((n,), 0.9), torch.rand(n, 3), vm, K, W, H, background=bg, backend="cpu")
        assert torch.allclose(out.rgb, bg.expand(1, H, W, 3))
        assert out.alpha.abs().max() == 0
        out.rgb.sum().backward()
        assert torch.isfinite(leaf.grad).all()


def test_extension_builds_from_scratch(tmp_path):
    """A fresh cache builds the kernel with g++ alone and the build command reports success."""
    if render_build.compiler() is None:
        pytest.skip("no C++ compiler")
    env = dict(os.environ, DS4D_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "ds4d_cli.render.build"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    built = list((tmp_path / "render").glob("ds4d_raster_*.so"))
    assert len(built) == 1 and "ready" in proc.stdout


def test_fallback_when_extension_disabled():
    code = (
        "import warnings, torch\n"
        "from ds4d_cli.render import build, cpu\n"
        "assert build.load() is None\n"
        "print('fallback-ok')\n"
    )
    env = dict(os.environ, DS4D_RENDER_EXT="0")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "fallback-ok" in proc.stdout, proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat kernels)")
def test_cuda_backend_matches_cpu():  # pragma: no cover - no GPU in CI
    W, H = 64, 48
    params = _hard_scene(torch.float32)
    vm, K = _cameras([0.0, 75.0], [0.0, 25.0], W, H)
    bg = torch.tensor([[0.2, 0.3, 0.4], [1.0, 1.0, 1.0]])
    cpu_out, cpu_grads = _render_with_grads("cpu", params, vm, K, W, H, bg)
    dev = torch.device("cuda")
    gpu_params = [p.to(dev) for p in params]
    gpu_out, gpu_grads = _render_with_grads("cuda", gpu_params, vm.to(dev), K.to(dev), W, H, bg.to(dev))
    for name in ("rgb", "alpha", "depth"):
        assert (getattr(gpu_out, name).cpu() - getattr(cpu_out, name)).abs().max() < 1e-4, name
    for name, g, r in zip(GRAD_NAMES, gpu_grads, cpu_grads):
        assert _rel(g.cpu(), r) < 1e-3, name
