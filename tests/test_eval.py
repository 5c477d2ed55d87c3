"""Evaluation: metrics against direct computations, GT layout, time matching, train vs held-out."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_model import FakeModel
from PIL import Image
from skimage.metrics import structural_similarity

from ds4d_cli import metrics
from ds4d_cli.cameras import c2w_to_viewmat, intrinsics_from_fov, orbit_camera
from ds4d_cli.errors import Ds4dError
from ds4d_cli.render import render
from ds4d_cli.stages import evaluate as ev
from ds4d_cli.tables import eval_table
from ds4d_cli.workspace import Workspace

VIEWS = {"input": (0.0, 0.0), "az090": (90.0, 0.0), "az180": (180.0, 0.0), "az045_el30": (45.0, 30.0)}
SIZE = 40


def write_gt(root: Path, model, frames: int, size: int = SIZE, views=VIEWS) -> Path:
    """A ground-truth folder in the shared examples' layout, rendered from ``model``."""
    K = intrinsics_from_fov(49.1, size)
    cams = {"convention": "OpenCV; world Z up", "frames": frames, "size": size,
            "intrinsics": {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": size / 2, "cy": size / 2,
                           "width": size, "height": size},
            "frame_times": [i / frames for i in range(frames)], "views": {}}
    for name, (az, el) in views.items():
        c2w = orbit_camera(az, el).double()
        cams["views"][name] = {"azimuth_deg": az, "elevation_deg": el, "camera_to_world": c2w.tolist()}
        folder = root / ("input" if name == "input" else f"gt/{name}")
        folder.mkdir(parents=True, exist_ok=True)
        for t in range(frames):
            out = model.render(t, c2w_to_viewmat(c2w).float()[None], K[None], size, size, None)
            alpha = out.alpha[0].clamp(0, 1)
            straight = torch.where(alpha > 1e-4, out.rgb[0] / alpha.clamp_min(1e-4), torch.zeros(()))
            rgba = torch.cat([straight.clamp(0, 1), alpha], dim=-1)
            Image.fromarray((rgba.numpy() * 255 + 0.5).astype(np.uint8)).save(folder / f"{t:03d}.png")
    (root / "cameras.json").write_text(json.dumps(cams))
    return root


def make_ws(tmp_path: Path, train_views: list[str] | None = None) -> Workspace:
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"x")
    ws = Workspace.create(tmp_path / "ws", src)
    if train_views is not None:
        gen = ws.stage_dir("generate")
        gen.mkdir(parents=True)
        (gen / "cameras.json").write_text(json.dumps({"prior": "import", "views": [{"name": v} for v in train_views]}))
    return ws


def composite(path: Path) -> np.ndarray:
    a = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float64) / 255.0
    return a[..., :3] * a[..., 3:] + 1.0 * (1 - a[..., 3:])  # over white


# ---------------------------------------------------------------- metrics


def test_psnr_ssim_masked_against_direct_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 32, 32, 3, generator=g)
    pred = (gt + 0.05 * torch.randn(2, 32, 32, 3, generator=g)).clamp(0, 1)
    mse = ((pred - gt) ** 2).double().mean(dim=(1, 2, 3))
    assert torch.allclose(metrics.psnr(pred, gt).double(), -10 * torch.log10(mse), atol=1e-4)
    assert metrics.psnr(gt, gt)[0] == metrics.PSNR_CAP
    ours = metrics.ssim(pred, gt)
    for i in range(2):
        ref = structural_similarity(pred[i].numpy(), gt[i].numpy(), channel_axis=-1, data_range=1.0,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert abs(float(ours[i]) - ref) < 0.02
    assert float(metrics.ssim(gt, gt).min()) > 0.999

    seq = torch.zeros(3, 8, 8, 3)
    seq[1, 2:4, 2:4] = 1.0  # a square that appears only in frame 1
    mask = metrics.moving_mask(seq)
    assert int(mask.sum()) == 4 and bool(mask[2, 2]) and not bool(mask[0, 0])
    sq, count = metrics.masked_mse(torch.zeros(3, 8, 8, 3), seq, mask)
    assert count == 3 * 4 * 3 and sq == pytest.approx(4 * 3)


def test_sharpness_ratio_sees_blur_and_noise() -> None:
    g = torch.Generator().manual_seed(1)
    gt = torch.full((2, 32, 32, 3), 0.3)
    gt[:, 8:24:2, 8:24] = 0.7  # thin stripes: a fine, moving-part-like pattern
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[6:26, 6:26] = True
    e_gt, n = metrics.gradient_energy(gt, mask)
    assert n == 2 * 20 * 20 and e_gt > 0
    # Energy by hand: vertical differences of luminance (stripes are horizontal lines).
    lum = gt[..., 0] * 0.299 + gt[..., 1] * 0.587 + gt[..., 2] * 0.114
    gy = torch.zeros_like(lum)
    gy[:, :-1] = lum[:, 1:] - lum[:, :-1]
    gx = torch.zeros_like(lum)
    gx[:, :, :-1] = lum[:, :, 1:] - lum[:, :, :-1]
    assert e_gt == pytest.approx(float((gx ** 2 + gy ** 2)[:, mask].sum()), rel=1e-5)
    assert metrics.sharpness_ratio(e_gt, e_gt) == pytest.approx(1.0)
    blurred = torch.nn.functional.avg_pool2d(gt.permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1)
    assert metrics.sharpness_ratio(metrics.gradient_energy(blurred, mask)[0], e_gt) < 0.6
    noisy = (gt + 0.2 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    assert metrics.sharpness_ratio(metrics.gradient_energy(noisy, mask)[0], e_gt) > 1.1
    assert metrics.sharpness_ratio(1.0, 0.0) is None  # a flat truth has nothing to compare


def test_silhouette_iou_and_near_debris_on_hand_made_images() -> None:
    pred, gt = torch.zeros(2, 10, 10), torch.zeros(2, 10, 10)
    pred[0, :, :6], gt[0, :, 3:9] = 1.0, 0.8  # 3 shared columns of 9 covered: IoU 1/3
    assert metrics.silhouette_iou(pred, gt).tolist() == pytest.approx([1 / 3, 1.0])  # both empty: 1
    assert float(metrics.silhouette_iou(pred[0] * 0.4, gt[0])[0]) == 0.0  # alpha 0.4 is not covered
    alpha = torch.zeros(1, 10, 10, 1)
    alpha[0, :2, :5] = 0.9  # 10 covered pixels nearer than 1.5, 20 covered at 2.0, 5 faint ones near
    alpha[0, 2:6, :5] = 0.9
    alpha[0, 6, :5] = 0.3
    depth = torch.full((1, 10, 10, 1), 2.0)
    depth[0, :2] = 1.0
    depth[0, 6] = 1.0
    assert float(metrics.near_debris(alpha, depth, near_limit=1.5)[0]) == pytest.approx(10 / 100)
    assert float(metrics.near_debris(alpha, depth, near_limit=0.5)[0]) == 0.0


def test_bounding_sphere_from_silhouettes_holds_the_object() -> None:
    """Silhouettes of a ball (radius 0.3 at (0.1, 0, 0.2)) from ten cameras: the carved sphere holds
    it, a few voxels larger at most (the visual hull of a ball is a little larger than the ball)."""
    from ds4d_cli.bounds import sphere_from_silhouettes

    centre, radius, size = torch.tensor([0.1, 0.0, 0.2]), 0.3, 64
    az = torch.tensor([0.0, 45, 90, 135, 180, 225, 270, 315, 30, 200])
    el = torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 0, 60, -60])
    vm = c2w_to_viewmat(orbit_camera(az, el))
    K = intrinsics_from_fov(49.1, size)[None].expand(len(az), 3, 3)
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    alphas = []
    for m, k in zip(vm, K):
        c = m[:3, :3] @ centre + m[:3, 3]
        rays = torch.stack([(xs - k[0, 2]) / k[0, 0], (ys - k[1, 2]) / k[1, 1], torch.ones_like(xs)], -1)
        rays = rays / rays.norm(dim=-1, keepdim=True)
        dist_to_centre = (c - (rays @ c)[..., None] * rays).norm(dim=-1)  # ray-to-centre distance
        alphas.append((dist_to_centre < radius).float())
    sphere = sphere_from_silhouettes(alphas, vm, K)
    assert sphere is not None
    assert torch.tensor(sphere.center).sub(centre).norm() < 0.06
    assert radius <= sphere.radius < radius + 0.1
    # the input camera (distance 2 from the origin) cannot see the object nearer than this
    assert sphere.near_limit(vm[0]) == pytest.approx(float(vm[0, 2, :3] @ torch.tensor(sphere.center) + vm[0, 2, 3]) - sphere.radius)


def test_frames_matched_by_normalised_time() -> None:
    assert ev.match_frames([0.0, 0.25, 0.5, 0.75], [i / 8 for i in range(8)]) == [(0, 0), (1, 2), (2, 4), (3, 6)]


# ---------------------------------------------------------------- evaluate


def test_eval_matches_direct_computation_and_masked_psnr_sees_motion(tmp_path: Path) -> None:
    truth = FakeModel(num_frames=4, travel=0.5)
    gt_dir = write_gt(tmp_path / "gt", truth, frames=4)
    ws = make_ws(tmp_path)
    still = FakeModel(num_frames=4, travel=0.0)  # right shape, never moves

    res = ev.run(ws, ev.EvalOptions(gt=str(gt_dir), views=["input", "az090"]), model=still)
    assert [v["view"] for v in res["views"]] == ["input", "az090"]
    row = res["views"][0]
    # Direct computation from the PNGs on disk and a fresh render.
    K = intrinsics_from_fov(49.1, SIZE)[None]
    vm = c2w_to_viewmat(orbit_camera(0.0, 0.0))[None]
    psnrs, preds, gts = [], [], []
    for t in range(4):
        pred = render(*_activated(still, t), vm, K, SIZE, SIZE, background=torch.ones(3)).rgb[0].double().numpy()
        gt = composite(gt_dir / "input" / f"{t:03d}.png")
        psnrs.append(-10 * math.log10(np.mean((pred - gt) ** 2)))
        preds.append(pred), gts.append(gt)
    assert row["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-3)
    gts_all = np.stack(gts)
    moving = (gts_all.max(0) - gts_all.min(0) > metrics.MOVING_THRESHOLD).any(-1)
    err = np.stack([(p - g) ** 2 for p, g in zip(preds, gts)])[:, moving]
    assert row["masked_psnr"] == pytest.approx(-10 * math.log10(err.mean()), abs=1e-3)
    assert 0 < row["moving_fraction"] < 0.2
    # A model that never moves loses far more on moving pixels than on the whole image.
    assert row["masked_psnr"] < row["psnr"] - 10
    # Sharpness is about blur, not place: a still but crisp model keeps about the truth's gradient.
    assert row["moving_sharpness"] == pytest.approx(1.0, abs=0.2)
    # The true model scores near the PNG quantisation limit everywhere.
    exact = ev.run(ws, ev.EvalOptions(gt=str(gt_dir), views=["input", "az090"]), model=truth)
    assert exact["overall"]["psnr"] > 40 and exact["overall"]["masked_psnr"] > 35
    assert exact["overall"]["ssim"] > 0.99
    assert exact["overall"]["moving_sharpness"] == pytest.approx(1.0, abs=0.05)
    assert json.loads(json.dumps(exact)) == exact  # the --json form round-trips


def _shrunk(model: FakeModel) -> FakeModel:
    """``model`` at 60% size, so that no view's frame cuts it off."""
    model.base_means = model.base_means * 0.6
    model.travel *= 0.6
    return model


def _with_blob(model: FakeModel, centre: tuple[float, float, float], n: int = 30) -> FakeModel:
    """``model`` plus a static opaque blob of ``n`` Gaussians around ``centre`` (debris)."""
    g = torch.Generator().manual_seed(9)
    blob = torch.tensor(centre) + 0.02 * torch.randn(n, 3, generator=g)
    model.base_means = torch.cat([model.base_means, blob])
    model.moving = torch.cat([model.moving, torch.zeros(n, dtype=torch.bool)])
    model.quats = torch.cat([model.quats, torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4)])
    model.log_scales = torch.cat([model.log_scales, torch.full((n, 3), math.log(0.03))])
    model.opacity_logits = torch.cat([model.opacity_logits, torch.full((n,), 5.0)])
    model.sh0 = torch.cat([model.sh0, torch.zeros(n, 1, 3)])
    model.shN = torch.cat([model.shN, torch.zeros(n, model.shN.shape[1], 3)])
    return model


def test_eval_reports_silhouette_iou_and_near_plane_debris(tmp_path: Path) -> None:
    truth = _shrunk(FakeModel(num_frames=3, travel=0.3))
    gt_dir = write_gt(tmp_path / "gt", truth, frames=3)
    ws = make_ws(tmp_path)
    exact = ev.run(ws, ev.EvalOptions(gt=str(gt_dir)), model=truth)
    for row in exact["views"]:
        assert row["iou"] > 0.95 and row["near_debris"] == 0.0 and row["near_debris_frames"] == 0, row
    assert exact["overall"]["iou"] > 0.95 and exact["overall"]["near_debris"] == 0.0
    # the truth's Gaussians all lie inside the sphere carved from its silhouettes
    sph = exact["object_sphere"]
    assert (truth.means_at(0) - torch.tensor(sph["center"])).norm(dim=-1).max() < sph["radius"]

    # a blob half-way between the input camera (on -Y, distance 2) and the object: near-plane debris
    # in the input view only, as large as the blob's own silhouette there; IoU drops with it
    debris = _with_blob(_shrunk(FakeModel(num_frames=3, travel=0.3)), (0.05, -1.0, 0.0))
    res = ev.run(ws, ev.EvalOptions(gt=str(gt_dir)), model=debris)
    rows = {r["view"]: r for r in res["views"]}
    blob_only = _with_blob(FakeModel(num_frames=3, n_static=0, n_moving=0), (0.05, -1.0, 0.0))
    K, vm = intrinsics_from_fov(49.1, SIZE)[None], c2w_to_viewmat(orbit_camera(0.0, 0.0))[None]
    covered = float((blob_only.render(0, vm, K, SIZE, SIZE).alpha > 0.5).float().mean())
    assert covered > 0.02
    assert rows["input"]["near_debris"] == pytest.approx(covered, abs=0.01)
    assert rows["input"]["near_debris_frames"] == 3
    assert rows["input"]["iou"] < exact["views"][0]["iou"] - 0.1
    assert rows["az180"]["near_debris"] == 0.0  # seen from behind, the blob is beyond the object
    from ds4d_cli.tables import eval_table

    text = _table_text(eval_table(res))
    assert "IoU" in text and "near debris" in text and f"{100 * rows['input']['near_debris']:.1f}%" in text


def _table_text(table) -> str:
    from rich.console import Console

    console = Console(width=250, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def _activated(model: FakeModel, t: int):
    return (model.means_at(t), model.quats, torch.exp(model.log_scales), torch.sigmoid(model.opacity_logits),
            0.5 + 0.28209479177387814 * model.sh0[:, 0, :])


def test_eval_errors(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    with pytest.raises(Ds4dError, match="does not exist"):
        ev.run(ws, ev.EvalOptions(gt=str(tmp_path / "nope")), model=FakeModel())
    (tmp_path / "empty").mkdir()
    with pytest.raises(Ds4dError, match="cameras.json"):
        ev.run(ws, ev.EvalOptions(gt=str(tmp_path / "empty")), model=FakeModel())
    gt_dir = write_gt(tmp_path / "gt", FakeModel(num_frames=2), frames=2, views={"input": (0.0, 0.0)})
    with pytest.raises(Ds4dError, match="az999"):
        ev.run(ws, ev.EvalOptions(gt=str(gt_dir), views=["az999"]), model=FakeModel())
    with pytest.raises(Ds4dError, match="fit"):  # no fitted model in the workspace
        ev.run(ws, ev.EvalOptions(gt=str(gt_dir)))


def test_eval_reads_the_shared_example_layout(windmill_dir: Path, tmp_path: Path) -> None:
    ws = make_ws(tmp_path, train_views=["az090"])
    res = ev.run(ws, ev.EvalOptions(gt=str(windmill_dir), views=["input", "az180"]), model=FakeModel(num_frames=3))
    rows = {r["view"]: r for r in res["views"]}
    assert rows["input"]["role"] == "train" and rows["az180"]["role"] == "held-out"
    assert all(r["frames"] == 3 for r in rows.values())
    assert 0 < rows["input"]["moving_fraction"] < 0.5  # the windmill's blades and flag
    assert res["max_time_gap"] == pytest.approx(0.0, abs=0.03)
    from rich.console import Console

    out = Console(width=200, record=True, file=io.StringIO())
    out.print(eval_table(res))
    text = out.export_text()
    assert "az180" in text and "held-out" in text and f"{rows['input']['psnr']:.2f}" in text


@pytest.mark.slow
def test_fit_to_training_views_scores_higher_on_them_than_held_out(tmp_path: Path) -> None:
    """Fit colours to two oracle views (front, +X side); eval must rank them above held-out views."""
    truth = _solid_object()
    gt_dir = write_gt(tmp_path / "gt", truth, frames=1, size=32)
    fitted = _fit_colors(truth, train=[(0.0, 0.0), (90.0, 0.0)], size=32, steps=50)
    ws = make_ws(tmp_path, train_views=["az090"])
    res = ev.run(ws, ev.EvalOptions(gt=str(gt_dir)), model=fitted)
    rows = {r["view"]: r for r in res["views"]}
    assert res["train"]["views"] == 2 and res["held_out"]["views"] == 2
    assert res["train"]["psnr"] > res["held_out"]["psnr"] + 8
    # The back was never seen: it is the worst view.
    assert min(rows.values(), key=lambda r: r["psnr"])["view"] == "az180"


def _solid_object() -> FakeModel:
    """A box densely filled with Gaussians, so each view sees mostly its own side of the object."""
    model = FakeModel(num_frames=1, n_static=200, n_moving=0, seed=5)
    model.base_means = (torch.rand(200, 3, generator=torch.Generator().manual_seed(1)) - 0.5) * torch.tensor([0.5, 0.5, 0.8])
    model.log_scales = torch.full_like(model.log_scales, -2.8)
    return model


def _fit_colors(truth: FakeModel, train, size: int, steps: int) -> FakeModel:
    """Start from the true geometry with grey colours; learn colours from the training views only."""
    model = _solid_object()
    K = intrinsics_from_fov(49.1, size)[None].expand(len(train), 3, 3)
    vm = c2w_to_viewmat(orbit_camera(torch.tensor([a for a, _ in train]), torch.tensor([e for _, e in train])))
    with torch.no_grad():
        target = truth.render(0, vm, K, size, size, torch.ones(3)).rgb
    sh0 = torch.zeros_like(model.sh0, requires_grad=True)
    opt = torch.optim.Adam([sh0], lr=0.1)
    for _ in range(steps):
        model.sh0 = sh0
        rgb = model.render(0, vm, K, size, size, torch.ones(3)).rgb
        loss = (rgb - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.sh0 = sh0.detach()
    return model
