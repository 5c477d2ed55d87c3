"""Per (frame, view) pose and colour corrections: identity at zero, exact camera geometry, view 0 fixed."""

from __future__ import annotations

import math

import torch

from ds4d_cli.cameras import c2w_to_viewmat, intrinsics_from_fov, orbit_camera
from ds4d_cli.model.view_correction import ViewCorrection, _axis_angle_quat
from ds4d_cli.render import render
from ds4d_cli.render.projection import quat_to_rotmat

S = 48


def _splats(n: int = 300, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.25
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    scales = torch.rand(n, 3, generator=g) * 0.04 + 0.01
    opac = torch.rand(n, generator=g) * 0.5 + 0.4
    colors = torch.rand(n, 3, generator=g)
    return means, quats, scales, opac, colors


def _camera(az: float, el: float) -> tuple[torch.Tensor, torch.Tensor]:
    return c2w_to_viewmat(orbit_camera(az, el, 2.0))[None], intrinsics_from_fov(40.0, S)[None]


def test_zero_correction_is_the_identity():
    means, quats, *_ = _splats()
    vc = ViewCorrection(3, 4)
    m, q = vc.move(means.expand(2, -1, -1), quats.expand(2, -1, -1), [1], [0, 2])
    assert torch.allclose(m, means.expand(2, -1, -1)) and torch.allclose(q, quats.expand(2, -1, -1))
    rgb, alpha = torch.rand(2, 5, 5, 3), torch.rand(2, 5, 5, 1)
    assert torch.equal(vc.colour(rgb, alpha, [1], [0, 2]), rgb)


def test_moving_the_splats_equals_moving_the_camera_and_view_0_stays():
    """Rotating every splat by R about the origin and rendering from camera V gives the image
    of the unmoved splats from the camera V R (the orbit camera rotated by R^-1)."""
    means, quats, scales, opac, colors = _splats()
    vm, K = _camera(30.0, 15.0)
    vc = ViewCorrection(2, 3)
    w = torch.tensor([0.05, -0.08, 0.12])
    with torch.no_grad():
        vc.rotation[1, 2] = w
        vc.rotation[1, 0] = w  # view 0's parameters are never used
        vc.translation[1, 2] = torch.tensor([0.01, 0.02, -0.03])
    m, q = vc.move(means.expand(2, -1, -1), quats.expand(2, -1, -1), [1], [0, 2])
    assert torch.equal(m[0], means) and torch.allclose(q[0], quats)  # view 0 untouched

    R = quat_to_rotmat(_axis_angle_quat(w))
    moved_cam = vm.clone()
    moved_cam[0, :3, :3] = vm[0, :3, :3] @ R
    moved_cam[0, :3, 3] = vm[0, :3, :3] @ torch.tensor([0.01, 0.02, -0.03]) + vm[0, :3, 3]
    a = render(m[1], q[1], scales, opac, colors, vm, K, S, S, backend="cpu")
    b = render(means, quats, scales, opac, colors, moved_cam, K, S, S, backend="cpu")
    assert float(a.alpha.detach().sum()) > 50  # the splats are in view
    assert torch.allclose(a.rgb, b.rgb, atol=1e-4) and torch.allclose(a.alpha, b.alpha, atol=1e-4)


def test_a_jittered_camera_and_colour_are_recovered():
    """Targets rendered from a camera 3 degrees off its nominal pose, with 5% gain: fitting only
    the correction brings the image error down by most of the way and finds the rotation."""
    means, quats, scales, opac, colors = _splats(seed=1)
    vm, K = _camera(60.0, 10.0)
    true_w = torch.tensor([0.0, 0.0, math.radians(3.0)])  # about the world's up axis: azimuth jitter
    R = quat_to_rotmat(_axis_angle_quat(true_w))
    target_cam = vm.clone()
    target_cam[0, :3, :3] = vm[0, :3, :3] @ R
    ref = render(means, quats, scales, opac, colors, target_cam, K, S, S, backend="cpu")
    target = ref.rgb * torch.tensor([1.05, 0.95, 1.0])

    vc = ViewCorrection(1, 2)
    opt = torch.optim.Adam(vc.parameters(), lr=3e-3)

    def loss_now() -> torch.Tensor:
        m, q = vc.move(means[None], quats[None], [0], [1])
        out = render(m[0], q[0], scales, opac, colors, vm, K, S, S, backend="cpu")
        return (vc.colour(out.rgb, out.alpha, [0], [1]) - target).abs().mean()

    start = float(loss_now().detach())
    for _ in range(150):
        opt.zero_grad()
        loss = loss_now()
        loss.backward()
        opt.step()
    assert float(loss_now().detach()) < 0.35 * start
    learnt = vc.rotation[0, 1].detach()
    assert float((learnt - true_w).norm()) < 0.4 * float(true_w.norm())
