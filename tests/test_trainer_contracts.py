"""What the trainer runs is what it claims to run: DSFD's dynamic half, TSSF's fused feature, the
ablations, and a checkpoint that reloads to the very same model. Each of these was once broken
without any test noticing (DSFD returning concat(f, 0); TSSF's forward ignoring its weights; the
trainer ignoring --no-dsfd; resume skipping the deformation network): these tests fail then.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ds4d_cli.model import dsfd as dsfd_mod
from ds4d_cli.model.dsfd import dsfd, reference_from_clip
from ds4d_cli.model.sampling import project, sample_maps, to_grid
from ds4d_cli.model.tssf import mean_fusion

sys.path.insert(0, str(Path(__file__).parent))
from fit_workspace import build_workspace  # noqa: E402

FRAMES = [0, 3, 6, 9]


def test_dsfd_second_half_is_the_part_orthogonal_to_the_reference():
    gen = torch.Generator().manual_seed(0)
    clip = torch.randn(6, 3, 20, 8, generator=gen)  # [T, V, N, C], every point changes over time
    ref = reference_from_clip(clip, time_dim=0)
    g = dsfd(clip, ref)
    coef = (clip * ref).sum(-1, keepdim=True) / ((ref * ref).sum(-1, keepdim=True) + 1e-6)
    expected = clip - coef * ref  # by hand: f minus its projection on R
    torch.testing.assert_close(g[..., :8], clip)
    torch.testing.assert_close(g[..., 8:], expected)
    assert g[..., 8:].abs().mean() > 0.3  # neither zero nor ...
    assert (g[..., 8:] - coef * ref).abs().mean() > 0.3  # ... the static part


def _trainer(windmill_dir, tmp_path, **cfg):
    from ds4d_cli.model.trainer import Trainer
    from ds4d_cli.stages.fit import FitOptions, load_fit_data, resolve_options, train_config

    ws = build_workspace(tmp_path / "ws", windmill_dir, ["az090", "az270"], FRAMES, size=64)
    o = resolve_options(FitOptions(resolution=32, device="cpu", num_gaussians=300, steps=cfg.pop("steps", 20)))
    data, _ = load_fit_data(ws, o)
    c = train_config(o)
    c.densify = False
    for k, v in cfg.items():
        setattr(c, k, v)
    return Trainer(data, c)


def _by_hand(tr, frames: list[int], use_dsfd: bool) -> torch.Tensor:
    """The fused per-Gaussian feature, recomputed from the trainer's own maps without its code path."""
    uv, _ = project(tr.gaussians.means.detach(), tr.data.viewmats, tr.data.Ks)
    grid = to_grid(uv, tr.W, tr.H)
    bank = tr._feat_cache if tr._feat_cache is not None else tr._all_features()
    f = sample_maps(bank[frames], grid)
    if use_dsfd:
        ref = sample_maps(reference_from_clip(bank, time_dim=0).unsqueeze(0), grid)[0]
        coef = (f * ref).sum(-1, keepdim=True) / ((ref * ref).sum(-1, keepdim=True) + 1e-6)
        f = torch.cat([f, f - coef * ref], -1)
    return f


@pytest.mark.parametrize("use_dsfd,fusion", [(True, "mean"), (False, "mean"), (True, "da")])
def test_trainer_feeds_the_head_exactly_the_recorded_modules(windmill_dir, tmp_path, use_dsfd, fusion):
    tr = _trainer(windmill_dir, tmp_path, use_dsfd=use_dsfd, fusion=fusion, encoder="image")
    frames = [1, 2]
    fused = tr.fused_features(frames)
    f = _by_hand(tr, frames, use_dsfd)
    vis = tr._visibility()
    fdim = tr.encoder.out_dim
    assert fused.shape[-1] == (2 * fdim if use_dsfd else fdim)
    assert tr.deform.join.in_features == fused.shape[-1] + tr.deform.hexplane.out_dim
    if fusion == "mean":
        torch.testing.assert_close(fused, mean_fusion(f, vis))
    else:
        assert tr.tssf.mode == "da"
        assert (fused - mean_fusion(f, vis)).abs().max() > 1e-3  # DA is not the mean


def test_no_dsfd_never_decouples(windmill_dir, tmp_path, monkeypatch):
    calls = []
    real = dsfd_mod.dsfd
    monkeypatch.setattr(dsfd_mod, "dsfd", lambda *a, **k: calls.append(1) or real(*a, **k))
    _trainer(windmill_dir, tmp_path / "a", use_dsfd=False, encoder="image").step()
    assert not calls
    tr = _trainer(windmill_dir, tmp_path / "b", use_dsfd=True, encoder="image", static_fraction=0.0)
    tr.step()
    assert calls


def test_checkpoint_reloads_to_the_same_renders(windmill_dir, tmp_path):
    """state_dict -> a fresh trainer (other seed) -> load: every frame renders identically, and the
    next steps continue identically (deformation net, TSSF, encoder, optimisers, RNG all restored)."""
    a = _trainer(windmill_dir, tmp_path / "a", encoder="conv", fusion="da", steps=12)
    for _ in range(6):
        a.step()
    sd = a.state_dict()
    b = _trainer(windmill_dir, tmp_path / "b", encoder="conv", fusion="da", steps=12, seed=7)
    assert (b.render_frames([0, 3]) - a.render_frames([0, 3])).abs().max() > 1e-3  # different before
    b.load_state_dict(sd)
    torch.testing.assert_close(b.render_frames(list(range(4))), a.render_frames(list(range(4))))
    # the global torch RNG is shared in this process: each continuation starts from the saved state
    torch.set_rng_state(sd["rng_torch"])
    losses_a = [a.step().loss for _ in range(2)]
    torch.set_rng_state(sd["rng_torch"])
    losses_b = [b.step().loss for _ in range(2)]
    assert losses_b == pytest.approx(losses_a, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(b.render_frames([0, 3]), a.render_frames([0, 3]))


def test_dsfd_dynamic_map_weighs_the_moving_pixels_and_the_ablation_drops_it(windmill_dir, tmp_path):
    """--dynamic-weight: the loss weights come from DSFD's dynamic part -- high where the clip
    moves (the blades), 1 where it never does -- and --no-dsfd removes them with DSFD."""
    from ds4d_cli.metrics import moving_mask

    tr = _trainer(windmill_dir, tmp_path, dynamic_weight=2.0)
    w = tr._pixel_weights([0, 1])
    assert w is not None and w.shape == (2 * tr.data.num_views, tr.H, tr.W, 1)
    assert float(w.min()) >= 1.0 and float(w.max()) <= 3.0 + 1e-6
    rgb = tr.data.images[:, 0, ..., :3] * tr.data.images[:, 0, ..., 3:]  # the input view over black
    moving = moving_mask(rgb)
    still = ~moving & (tr.data.images[:, 0, ..., 3].amax(0) < 0.01)  # never covered: the empty background
    w_in = w[0, ..., 0]
    assert float(w_in[moving].mean()) > float(w_in[still].mean()) + 0.3
    assert float(w_in[still].mean()) < 1.2
    assert _trainer(windmill_dir, tmp_path / "abl", dynamic_weight=2.0, use_dsfd=False)._pixel_weights([0, 1]) is None
    assert _trainer(windmill_dir, tmp_path / "off", dynamic_weight=0.0)._pixel_weights([0, 1]) is None


def test_views_per_step_renders_the_input_view_and_a_random_subset(windmill_dir, tmp_path):
    tr = _trainer(windmill_dir, tmp_path / "vps", views_per_step=2)
    V = tr.data.num_views
    assert V == 3 and tr.views_per_step == 2
    seen = set()
    for _ in range(12):
        views, w = tr._pick_views()
        assert views[0] == 0 and len(views) == 2 and len(set(views)) == 2
        # the other's weight scaled so every view keeps its expected share of the loss
        assert torch.allclose(w[1:], tr.data.view_weights[views[1:]] * (V - 1))
        seen.update(views[1:])
    assert seen == set(range(1, V))
    stats = tr.step()
    assert stats.num_gaussians > 0 and stats.psnr > 0
    assert tr._pixel_weights([0, 1], [0, 2]).shape[0] == 4
    for k in (0, V, V + 3):  # 0 or more than there are: every view, with the weights as given
        tr.cfg.views_per_step = k
        views, w = tr._pick_views()
        assert tr.views_per_step == V and views == list(range(V)) and torch.equal(w, tr.data.view_weights)


def test_view_correction_trains_the_prior_views_only_and_survives_a_reload(windmill_dir, tmp_path):
    from ds4d_cli.model.trainer import Trainer
    from ds4d_cli.stages.fit import FitOptions, _ran, resolve_options, train_config

    assert train_config(resolve_options(FitOptions(device="cpu", view_correction=True))).view_correction
    assert not train_config(resolve_options(FitOptions(device="cpu"))).view_correction  # auto, unresolved: off
    assert _trainer(windmill_dir, tmp_path / "off").view_fix is None  # off by default
    tr = _trainer(windmill_dir, tmp_path / "on", view_correction=True)
    assert _ran(tr)["view_correction"]
    for _ in range(8):
        tr.step()
    vf = tr.view_fix.requires_grad_(False)
    assert float(vf.rotation[:, 1:].abs().sum()) > 0 and float(vf.log_gain[:, 1:].abs().sum()) > 0
    # view 0 is the camera of the clip: its entries get no gradient and never move
    assert float(vf.rotation[:, 0].abs().sum()) == 0 and float(vf.offset[:, 0].abs().sum()) == 0
    other = Trainer(tr.data, tr.cfg)
    other.load_state_dict(tr.state_dict())
    assert torch.equal(other.view_fix.rotation, vf.rotation)
    assert torch.equal(other.render_frames([1, 2]), tr.render_frames([1, 2]))


def test_view_correction_auto_is_checked_and_a_given_choice_is_not(tmp_path):
    """Auto: with generated or imported views the corrections are learnt and checked part-way; with
    none they are off; --view-correction / --no-view-correction are kept as given, unchecked."""
    import json

    from ds4d_cli.stages.fit import VIEW_CHECK, FitOptions, fit_view_correction
    from ds4d_cli.workspace import Workspace

    ws = Workspace(tmp_path)
    assert fit_view_correction(ws, FitOptions()).view_correction is False  # nothing generated yet
    for prior, on in (("zero123pp", True), ("import", True), ("none", False)):
        (tmp_path / "generate").mkdir(exist_ok=True)
        (tmp_path / "generate" / "manifest.json").write_text(json.dumps({"options": {"prior": prior}}))
        auto = fit_view_correction(ws, FitOptions())
        assert auto.view_correction is on and auto.view_check == (VIEW_CHECK if on else 0.0)
        for given in (True, False):
            chosen = fit_view_correction(ws, FitOptions(view_correction=given))
            assert chosen.view_correction is given and chosen.view_check == 0.0


@pytest.mark.parametrize("rotation_deg, kept", [(0.3, False), (2.5, True)])
def test_view_check_keeps_corrections_only_where_the_views_needed_them(windmill_dir, tmp_path, rotation_deg, kept):
    """At the check the corrections stay if their mean learnt rotation reaches view_check_deg and
    are dropped otherwise; a dropped correction stays dropped through a checkpoint."""
    import math

    from ds4d_cli.model.trainer import Trainer
    from ds4d_cli.stages.fit import _ran

    tr = _trainer(windmill_dir, tmp_path, view_correction=True, view_check=0.5, steps=6)
    for _ in range(2):
        tr.step()
    with torch.no_grad():  # as if the fit had learnt this much by now
        tr.view_fix.rotation[:, 1:] = torch.tensor([0.0, 0.0, math.radians(rotation_deg)])
    for _ in range(2):
        tr.step()  # the check runs at step 3 = 0.5 x 6
    assert tr.view_check == pytest.approx(rotation_deg, rel=0.2)
    assert (tr.view_fix is not None) is kept and _ran(tr)["view_correction"] is kept
    other = Trainer(tr.data, tr.cfg)
    other.load_state_dict(tr.state_dict())
    assert (other.view_fix is not None) is kept and other.view_check == tr.view_check
    assert torch.equal(other.render_frames([1]), tr.render_frames([1]))
    tr.step()  # a dropped correction's parameters get no gradient: the step runs without them
