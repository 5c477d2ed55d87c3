"""The DS4D optimisation loop over tensors (no files, no terminal: it reports through a callback).

One step:
  1. pick B frames (t, t+1 and random others: the neighbour pair gives the temporal-smoothness
     term for free);
  2. frame features F[t, v] of every view of those frames (encoder; cached if frozen);
  3. canonical Gaussian centres sample F by projection (visibility from a render of the canonical
     set, refreshed whenever the set changes);
  4. DSFD against the clip reference R (feature maps of the middle frame and the temporal mean),
     from a feature bank of every (frame, view): computed once if the encoder is frozen; with the
     joint encoder, the batch's fresh features are written back each step (and the whole bank
     re-encoded every ``ref_refresh_every`` steps) so R follows the encoder smoothly;
  5. TSSF over the V views -> fused per-Gaussian feature; HexPlane + MLP -> deformation;
  6. ONE batched render of all B x V (frame, view) pairs (or of the input view and
     ``views_per_step`` - 1 random others); weighted RGB/D-SSIM/mask losses, fused on the CPU;
  7. backward, gsplat DefaultStrategy densify/prune, optimiser steps, our own opacity reset
     (gsplat 1.5.3's never fires).
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import remove, reset_opa
from torch import Tensor, nn

from ds4d_cli.gaussians import Gaussians
from ds4d_cli.metrics import psnr_from_mse
from ds4d_cli.render import render

from . import dsfd as dsfd_mod
from .deformation import DeformationNet
from .features import DinoEncoder, build_encoder
from .init import init_points
from .losses import composite, render_losses
from .sampling import project, sample_maps, to_grid, visibility
from .single_view import SingleViewPrior, SingleViewSettings
from .tssf import TSSF
from .view_correction import ViewCorrection

GAUSSIAN_LRS = {"means": 1.6e-3, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3, "shN": 1.25e-4}


@dataclass
class FitData:
    """Everything the optimisation sees. View 0 is the input (reference) view."""

    images: Tensor  # [T, V, H, W, 4] float in [0, 1], straight alpha
    viewmats: Tensor  # [V, 4, 4] world-to-camera (OpenCV)
    Ks: Tensor  # [V, 3, 3] pixel intrinsics at H x W
    frame_times: Tensor  # [T] in [0, 1)
    view_weights: Tensor  # [V] loss weight per view

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.images.shape[1])


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_frames: int = 2
    num_gaussians: int = 2000  # initial count
    max_gaussians: int = 6000  # densification stops growing beyond this
    lr: float = 1.0  # multiplier on every learning rate
    ssim_weight: float = 0.2
    mask_weight: float = 1.0
    smooth_weight: float = 0.1  # |deformation(t) - deformation(t+1)|^2
    plane_smooth_weight: float = 0.01  # HexPlane time-plane 2nd differences
    densify: bool = True
    densify_from: int = 100
    densify_every: int = 100
    densify_until: float = 0.6  # fraction of the steps
    grow_grad2d: float = 0.0002
    prune_opacity: float = 0.005
    opacity_reset_every: int = 0  # 0 = never (short fits); our reset, gsplat 1.5.3's is dead
    # Remove Gaussians whose centre leaves the input view's image (or goes behind its camera) in
    # any frame, every ``densify_every`` steps and after the last step. The input view is the
    # preprocessed crop, which holds every silhouette: such a Gaussian is a floater that no loss
    # sees there, and it shows up when the input camera is rendered over the full frame.
    prune_outside_input: bool = True
    use_dsfd: bool = True
    fusion: str = "da"  # "da" | "ga" | "mean" ("mean" = --no-tssf)
    feat_dim: int = 16
    encoder_path: Optional[str] = None  # where the caller loaded ``backbone`` from (recorded only)
    encoder: str = "conv"  # without a backbone: "image" (fixed multi-scale features) or "conv" (joint)
    bound: float = 1.0
    sh_degree: int = 0
    hex_resolutions: tuple[int, ...] = (32, 64)
    mlp_width: int = 64
    # High rates (decayed 10x over the fit) so that large motions are learnt in a few hundred
    # steps; measured on the windmill, 1e-2/1e-3 left the blades static.
    grid_lr: float = 1e-1  # HexPlane planes
    mlp_lr: float = 1e-2  # deformation MLP, TSSF temperature/logits
    encoder_lr: float = 1e-2  # the jointly-trained conv encoder
    # Full re-encode of the feature bank (joint encoder). Every step: a bank refreshed only every
    # 10-100 steps made R lag the encoder and cost 1-2 dB on the moving pixels (windmill).
    ref_refresh_every: int = 1
    encoder_size: int = 64  # input side of the joint conv encoder
    image_feature_size: int = 128  # input side of the fixed image features (stride 1)
    # DSFD steers the loss: pixels where the frame's dynamic part |D| is large (relative to the
    # view's clip) weigh 1 + dynamic_weight in the RGB/mask losses, so the few moving pixels are
    # not swamped by the static ones (and densification, driven by those gradients, follows).
    # 2 measured at 256 px, seeds 0 and 1, every shared example (README, "Experiments"): windmill
    # input/held-out moving about +3.5/+1.5 dB, flapper within its seed spread.
    dynamic_weight: float = 2.0
    # Largest log-scale change the deformation may make (0 = unbounded); see DeformationNet.
    scale_deform_bound: float = 0.0
    net_lr_final: float = 0.1  # deformation learning rates decay exponentially to this fraction
    # Temporal curriculum. Large motions (a blade turning 15 deg per frame) cannot be found by
    # the photometric gradient from the canonical (middle) frame: measured on the windmill, the
    # blades of far frames were lost (5 deg/frame learnt instead of 15). So: a static stage fits
    # the canonical Gaussians to the middle frame alone, then the trained frames grow outward
    # from the middle one frame at a time, each new frame's time row starting from the
    # constant-velocity extrapolation of its neighbours'.
    static_fraction: float = 0.0  # share of the steps on the middle frame only, no deformation
    grow_fraction: float = 0.0  # share of the steps over which the window grows to the whole clip
    grow_velocity: bool = True  # a new frame's row: constant-velocity extrapolation (False: a copy)
    # Cameras rendered per step: the input view and views_per_step - 1 of the others drawn at
    # random (their loss weights scaled so that every view keeps its share in expectation);
    # 0 = all views every step.
    views_per_step: int = 0
    # Per (frame, prior view) pose and colour corrections (ds4d_cli.model.view_correction). The
    # translation stays off: with exact views it drifted by 1% of the object's size and cost 0.8-2.2 dB
    # held out, where the rotation alone costs 0.2-0.3 and gains 1.0-1.4 with degraded views (README).
    view_correction: bool = False
    view_lr: float = 1e-3
    view_translation: bool = False
    # > 0: at this share of the steps the corrections are kept only if the views needed them (mean
    # learnt rotation >= view_check_deg); otherwise they are dropped and the fit goes on without.
    # At 15% of the default fit exact views had learnt 0.52-1.03 deg, views a few degrees off about
    # 1.9-2.2 (README, "Experiments")
    view_check: float = 0.0
    view_check_deg: float = 1.4
    visibility_every: int = 100
    random_background: bool = True
    backend: str = "auto"
    seed: int = 0
    # -- single-view prior (ds4d_cli.model.single_view): only when the fit has the input view alone
    single_view_prior: bool = True
    single_view: SingleViewSettings = field(default_factory=SingleViewSettings)


@dataclass
class StepStats:
    step: int
    loss: float
    psnr: float  # input view of the step's first frame, over the step's background
    num_gaussians: int
    losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class StepTimer:
    """Wall seconds per named part of the step, summed over steps (for the step profile).

    Only wall-clock stamps between parts (no synchronisation): on the CPU every op has finished
    when the next Python line runs, so the parts add up to the step.
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.steps = 0
        self._t = time.perf_counter()

    def start(self) -> None:
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.totals[name] = self.totals.get(name, 0.0) + now - self._t
        self._t = now

    def per_step_ms(self) -> dict[str, float]:
        return {k: 1000 * v / max(1, self.steps) for k, v in self.totals.items()}


def _rows(x: Tensor, idx: list[int]) -> Tensor:
    """``x[idx]``, as a view (no copy of the images) when ``idx`` is a run of consecutive rows."""
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return x[idx[0] : idx[0] + len(idx)]
    return x[idx]


def _targets(images: Tensor, frames: list[int], views: list[int]) -> Tensor:
    """The (frame, view) images of a step, [B * V', H, W, 4], frame-major: one gather (gathering the
    frames' every view first and then the views copied 29 MB twice a step at the CPU defaults)."""
    if len(views) == images.shape[1]:
        rows = _rows(images, frames)
    else:
        f = torch.tensor(frames, device=images.device)[:, None]
        rows = images[f, torch.tensor(views, device=images.device)[None, :]]
    return rows.reshape(len(frames) * len(views), *images.shape[2:])


def _psnr(a: Tensor, b: Tensor) -> float:
    return psnr_from_mse(float((a - b).pow(2).mean()))


class Trainer:
    _CACHES = ("_feat_cache", "_ref_step", "_vis", "_vis_step", "_dyn", "_dyn_step")

    def __init__(self, data: FitData, cfg: TrainConfig, device: str | torch.device = "cpu",
                 backbone: Optional[nn.Module] = None) -> None:
        """``backbone``: a loaded pretrained encoder (DINOv2) to use frozen; None trains a small conv one."""
        self.cfg = cfg
        self.device = torch.device(device)
        self.data = FitData(*(x.to(self.device) if isinstance(x, Tensor) else x for x in (
            data.images.float(), data.viewmats.float(), data.Ks.float(), data.frame_times.float(),
            data.view_weights.float())))
        torch.manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)
        self.step_count = 0
        T, V, H, W, _ = self.data.images.shape
        self.H, self.W = H, W

        gen = torch.Generator().manual_seed(cfg.seed)
        mid = T // 2
        # -- single-view prior hook: an inflated volume to start from and stay in (one view only)
        self.single_view = (SingleViewPrior(self.data.images[:, 0], self.data.viewmats[0], self.data.Ks[0],
                                            cfg.single_view, cfg.bound, cfg.seed)
                            if V == 1 and cfg.single_view_prior else None)
        pts = self.single_view.init_points(cfg.num_gaussians, gen) if self.single_view is not None else None
        if pts is None:
            pts = init_points(self.data.images[mid].cpu(), self.data.viewmats.cpu(), self.data.Ks.cpu(),
                              cfg.num_gaussians, bound=cfg.bound, generator=gen)
        self.init_method = pts.method
        g = Gaussians.from_points(pts.means, pts.colors, sh_degree=cfg.sh_degree, scale=pts.spacing, opacity=0.5)
        self.gaussians = g.to(self.device)

        self.encoder = build_encoder(backbone, cfg.feat_dim, cfg.encoder).to(self.device)
        self._enc_images = self.data.images
        trainable = getattr(self.encoder, "trainable", False)
        enc_size = cfg.encoder_size if trainable else cfg.image_feature_size
        if not isinstance(self.encoder, DinoEncoder) and 0 < enc_size < H:  # DINOv2 resizes its own input
            # the joint encoder sees a fixed small copy (features are 1/4 of it, like a ViT's
            # patch grid): re-encoding the whole clip every step then stays cheap at any resolution
            x = self.data.images.reshape(T * V, H, W, 4).permute(0, 3, 1, 2)
            x = torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], 1)
            x = F.interpolate(x, size=(enc_size, enc_size), mode="area")
            a = x[:, 3:].clamp(0, 1)
            x = torch.cat([x[:, :3] / a.clamp_min(1e-4) * (a > 1e-4), a], 1).clamp(0, 1)
            self._enc_images = x.permute(0, 2, 3, 1).reshape(T, V, enc_size, enc_size, 4).contiguous()
        # an encoder with a fixed per-image input transform (the joint conv one) gets it once here
        self._prepared = hasattr(self.encoder, "prepare")
        if self._prepared:
            e = self._enc_images
            self._enc_images = self.encoder.prepare(e.reshape(-1, *e.shape[2:])).reshape(T, V, 4, *e.shape[2:4])
        fdim = self.encoder.out_dim
        gdim = 2 * fdim if cfg.use_dsfd else fdim
        self.tssf = TSSF(V, cfg.fusion).to(self.device)
        self.deform = DeformationNet(
            gdim, bound=cfg.bound, time_resolution=max(2, T), hex_resolutions=cfg.hex_resolutions,
            width=cfg.mlp_width, scale_bound=cfg.scale_deform_bound,
        ).to(self.device)

        lr = cfg.lr
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            k: torch.optim.Adam([{"params": [p], "lr": GAUSSIAN_LRS[k] * lr, "name": k}], eps=1e-15)
            for k, p in self.gaussians.params.items()
        }
        net_groups = [
            {"params": list(self.deform.hexplane.parameters()), "lr": cfg.grid_lr * lr, "name": "grid"},
            {"params": [p for n, p in self.deform.named_parameters() if not n.startswith("hexplane.")],
             "lr": cfg.mlp_lr * lr, "name": "mlp"},
        ]
        tssf_params = list(self.tssf.parameters())
        if tssf_params:
            net_groups.append({"params": tssf_params, "lr": cfg.mlp_lr * lr, "name": "tssf"})
        if getattr(self.encoder, "trainable", False):
            net_groups.append({"params": list(self.encoder.parameters()), "lr": cfg.encoder_lr * lr, "name": "encoder"})
        self.view_fix = ViewCorrection(T, V).to(self.device) if cfg.view_correction and V > 1 else None
        self.view_check: Optional[float] = None  # mean learnt rotation (deg) at the check, once made
        if self.view_fix is not None:
            # an untrained translation takes no gradient either (none would pile up in its .grad)
            self.view_fix.translation.requires_grad_(cfg.view_translation)
            vparams = [p for p in self.view_fix.parameters() if p.requires_grad]
            net_groups.append({"params": vparams, "lr": cfg.view_lr * lr, "name": "views"})
        self.net_opt = torch.optim.Adam(net_groups)
        self._base_lrs = {id(g): g["lr"] for g in self.net_opt.param_groups}

        self.strategy = DefaultStrategy(
            prune_opa=cfg.prune_opacity,
            grow_grad2d=cfg.grow_grad2d,
            refine_start_iter=cfg.densify_from - 1,  # strategy steps are 1-based here: first refine at densify_from
            refine_stop_iter=int(cfg.densify_until * cfg.steps),
            refine_every=cfg.densify_every,
            # gsplat 1.5.3 never fires its own reset (operator precedence); keep its pruning
            # schedule consistent with ours and reset in _maybe_reset_opacity.
            reset_every=cfg.opacity_reset_every if cfg.opacity_reset_every > 0 else 10**9,
        )
        self.strategy.check_sanity(self.gaussians.params, self.optimizers)
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        self.opacity_resets: list[int] = []
        self.pruned_outside = 0  # Gaussians removed by prune_outside_input so far
        self.timer = StepTimer()

        self._feat_cache: Optional[Tensor] = None  # [T, V, C, h, w] feature bank (detached)
        self._dyn: Optional[Tensor] = None  # DSFD dynamic map [V, H, W, 1]
        self._dyn_step = -1

        self._ref_step = -1
        self._vis: Optional[Tensor] = None
        self._vis_step = -1
        # frame k sits exactly on time row k of the HexPlane (rows = frames)
        self._time_u = torch.arange(T, dtype=torch.float32, device=self.device) / max(1, T - 1)
        self.mid = T // 2
        self._window = self._target_window()  # half-width of the trained frames around the middle

    # ------------------------------------------------------------------ features
    def _encode(self, images: Tensor) -> Tensor:
        """``_enc_images`` rows [B, V, ...] -> features [B, V, C, h, w]."""
        b, v = images.shape[:2]
        encode = self.encoder.encode_prepared if self._prepared else self.encoder
        f = encode(images.reshape(b * v, *images.shape[2:]))
        return f.view(b, v, *f.shape[1:])

    @torch.no_grad()
    def _all_features(self) -> Tensor:
        chunks = [self._encode(self._enc_images[i : i + 8]) for i in range(0, self.data.num_frames, 8)]
        return torch.cat(chunks, 0)

    def _frame_features(self, frames: list[int]) -> Tensor:
        """Features [B, V, C, h, w] of ``frames``; keeps the clip feature bank current."""
        frozen = not getattr(self.encoder, "trainable", False)
        if not frozen and not self.cfg.use_dsfd:  # no reference needed: no bank
            return self._encode(self._enc_images[frames])
        if self._feat_cache is None or (not frozen and self.step_count - self._ref_step >= self.cfg.ref_refresh_every):
            self._feat_cache = self._all_features()  # the bank: every frame x view, no grad
            self._ref_step = self.step_count
        if frozen:
            return self._feat_cache[frames]
        f = self._encode(self._enc_images[frames])
        # a jointly-trained encoder drifts: write the fresh features back so that R follows it
        # smoothly (a reference refreshed only every K steps jumps and destabilised the fit)
        self._feat_cache[frames] = f.detach()
        return f

    @torch.no_grad()
    def dynamic_map(self) -> Tensor:
        """[V, H, W, 1] in [0, 1]: how dynamic each pixel of each view is over the clip (DSFD).

        m = max_t |D_t| / (max_t |f_t| + eps): the largest share of the pixel's feature that is
        orthogonal to the clip reference R at any frame. 0 where the pixel never changes,
        near 1 where a moving part passes. Refreshed with the visibility for a trained encoder.
        """
        if self._dyn is not None and (not getattr(self.encoder, "trainable", False)
                                      or self.step_count - self._dyn_step < self.cfg.visibility_every):
            return self._dyn
        bank = self._feat_cache if self._feat_cache is not None else self._all_features()
        ref = dsfd_mod.reference_from_clip(bank, time_dim=0)  # [V, C, h, w]
        dmax = torch.zeros_like(bank[0, :, 0])
        fmax = torch.zeros_like(dmax)
        for t in range(bank.shape[0]):
            _, dyn = dsfd_mod.decouple(bank[t], ref, dim=1)
            dmax = torch.maximum(dmax, dyn.norm(dim=1))
            fmax = torch.maximum(fmax, bank[t].norm(dim=1))
        eps = 0.05 * fmax.mean((1, 2), keepdim=True) + 1e-6
        m = (dmax / (fmax + eps)).clamp(0, 1)[:, None]
        m = F.interpolate(m, size=(self.H, self.W), mode="bilinear", align_corners=False)
        self._dyn = m.permute(0, 2, 3, 1).contiguous()
        self._dyn_step = self.step_count
        return self._dyn

    def _pixel_weights(self, frames: list[int], views: Optional[list[int]] = None) -> Optional[Tensor]:
        """[B*V', H, W, 1] loss weights 1 + dynamic_weight * (2 m).clamp(0, 1) of ``views``, or None."""
        if not self.cfg.use_dsfd or self.cfg.dynamic_weight <= 0:
            return None
        m = self.dynamic_map()
        if views is not None and len(views) < m.shape[0]:
            m = m[views]
        w = 1.0 + self.cfg.dynamic_weight * (2.0 * m).clamp(0, 1)
        return w.repeat(len(frames), 1, 1, 1)

    def _reference(self) -> Tensor:
        """Clip reference maps R [V, C, h, w] (DSFD) from the feature bank."""
        if self._feat_cache is None:
            self._frame_features([0])
        return dsfd_mod.reference_from_clip(self._feat_cache, time_dim=0)

    @torch.no_grad()
    def _visibility(self) -> Tensor:
        """[V, N] visibility of the canonical Gaussians in every view (refreshed every visibility_every steps)."""
        n = self.gaussians.num_gaussians
        if self._vis is not None and self._vis.shape[1] == n and self.step_count - self._vis_step < self.cfg.visibility_every:
            return self._vis
        g = self.gaussians
        out = render(g.means, g.quats, g.scales, g.opacities, self._colors(), self.data.viewmats, self.data.Ks,
                     self.W, self.H, backend=self.cfg.backend, sh_degree=self._sh_arg())
        uv, z = project(g.means, self.data.viewmats, self.data.Ks)
        self._vis = visibility(z, to_grid(uv, self.W, self.H), out.alpha, out.depth)
        self._vis_step = self.step_count
        return self._vis

    def _colors(self) -> Tensor:
        if self.cfg.sh_degree > 0:
            return self.gaussians.sh
        return self.gaussians.colors

    def _sh_arg(self) -> Optional[int]:
        return self.cfg.sh_degree if self.cfg.sh_degree > 0 else None

    def fused_features(self, frames: list[int]) -> Tensor:
        """Fused frame feature [B, N, D] of each canonical Gaussian for ``frames``: sampled by
        projection in every view, DSFD, then TSSF."""
        uv, _ = project(self.gaussians.means.detach(), self.data.viewmats, self.data.Ks)
        grid = to_grid(uv, self.W, self.H)
        maps = self._frame_features(frames)  # [B, V, C, h, w] (updates the bank first)
        vis = self._visibility()
        self.timer.lap("features: encode + visibility")
        f = sample_maps(maps, grid)  # [B, V, N, C]
        if self.cfg.use_dsfd:
            ref = sample_maps(self._reference().unsqueeze(0), grid)[0]  # [V, N, C]
            f = dsfd_mod.dsfd(f, ref)
        self.timer.lap("features: sample + DSFD")
        fused = self.tssf(f, vis)
        self.timer.lap("features: TSSF")
        return fused

    def deformed(self, frames: list[int]):
        """Deformed Gaussians for ``frames``: (means, quats, log-scales), each [B, N, .], + offsets."""
        g = self.gaussians.params
        feat = self.fused_features(frames)
        d = self.deform(g["means"], g["quats"], g["scales"], self._time_u[frames], feat)
        self.timer.lap("deformation net")
        return d

    # ------------------------------------------------------------------ step
    @property
    def in_static_stage(self) -> bool:
        return self.step_count < int(self.cfg.static_fraction * self.cfg.steps)

    def _target_window(self) -> int:
        """Half-width of the curriculum's frame window at the current step (T = whole clip)."""
        T = self.data.num_frames
        start = int(self.cfg.static_fraction * self.cfg.steps)
        grow = int(self.cfg.grow_fraction * self.cfg.steps)
        if grow <= 0 or self.step_count >= start + grow:
            return T
        return 1 + int((T + 1) // 2 * max(0, self.step_count - start) / grow)

    def _grow_window(self) -> None:
        """Widen the window to the current target; new frames' time rows are extrapolated."""
        target = self._target_window()
        T = self.data.num_frames
        while self._window < target:
            self._window += 1
            for row in (self.mid - self._window, self.mid + self._window):
                if 0 <= row < T and self._window < T:
                    self.deform.hexplane.extrapolate_time_row(row, towards=self.mid,
                                                              velocity=self.cfg.grow_velocity)

    def _pick_frames(self) -> list[int]:
        T = self.data.num_frames
        if T == 1 or self.in_static_stage:
            return [self.mid]
        self._grow_window()
        lo, hi = max(0, self.mid - self._window), min(T - 1, self.mid + self._window)
        if hi <= lo:
            return [self.mid]
        t0 = self.rng.randrange(lo, hi)
        frames = [t0, t0 + 1]
        while len(frames) < min(self.cfg.batch_frames, hi - lo + 1):
            frames.append(self.rng.randrange(lo, hi + 1))
        return frames

    @property
    def views_per_step(self) -> int:
        """How many views a step renders (``cfg.views_per_step`` 0, or more than there are: all)."""
        V, k = self.data.num_views, self.cfg.views_per_step
        return V if k <= 0 or k >= V else k

    def _pick_views(self) -> tuple[list[int], Tensor]:
        """The step's views (the input view first) and their loss weights [V']."""
        V, k = self.data.num_views, self.views_per_step
        if k == V:
            return list(range(V)), self.data.view_weights
        if k == 1:
            return [0], self.data.view_weights[:1]
        views = [0] + sorted(self.rng.sample(range(1, V), k - 1))
        w = self.data.view_weights[views].clone()
        w[1:] *= (V - 1) / (k - 1)
        return views, w

    def _canonical(self):
        """The canonical Gaussians as a one-frame 'deformation' (static stage)."""
        from .deformation import Deformed

        g = self.gaussians.params
        zero = torch.zeros_like(g["means"]).unsqueeze(0)
        return Deformed(g["means"].unsqueeze(0), g["quats"].unsqueeze(0), g["scales"].unsqueeze(0), zero)

    def _update_lrs(self) -> None:
        """Exponential decay to 1% (means) / 10% (network) of the initial rate over the fit."""
        s = min(1.0, self.step_count / max(1, self.cfg.steps))
        opt = self.optimizers["means"]
        opt.param_groups[0]["lr"] = GAUSSIAN_LRS["means"] * self.cfg.lr * (0.01 ** s)
        for grp in self.net_opt.param_groups:
            if grp["name"] in ("grid", "mlp"):
                base = (self.cfg.grid_lr if grp["name"] == "grid" else self.cfg.mlp_lr) * self.cfg.lr
                grp["lr"] = base * (self.cfg.net_lr_final ** s)

    def render_batch(self, means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor,
                     background: Optional[Tensor] = None, corrected: Optional[tuple[list[int], list[int]]] = None):
        """Render B deformed copies from V cameras each in one call (C = B * V). ``corrected`` =
        (frames, views): move each camera's copy by its learnt pose correction."""
        b, v = means.shape[0], viewmats.shape[0]
        rep = lambda x: x.unsqueeze(1).expand(-1, v, -1, -1).reshape(b * v, *x.shape[1:])  # noqa: E731
        m, q = rep(means), F.normalize(rep(quats), dim=-1)
        if corrected is not None and self.view_fix is not None:
            m, q = self.view_fix.move(m, q, *corrected)
        return render(
            m, q, torch.exp(rep(scales)), self.gaussians.opacities,
            self._colors(), viewmats.repeat(b, 1, 1), Ks.repeat(b, 1, 1), self.W, self.H,
            background=None, backend=self.cfg.backend, sh_degree=self._sh_arg(),
        )

    def step(self) -> StepStats:
        t_start = time.perf_counter()
        timer = self.timer
        timer.start()
        cfg = self.cfg
        if self.view_fix is not None and cfg.view_check > 0 and self.step_count == self.view_check_step:
            self._check_views()
        self._update_lrs()
        frames = self._pick_frames()
        d = self._canonical() if self.in_static_stage else self.deformed(frames)
        views, view_w = self._pick_views()
        V = len(views)
        out = self.render_batch(d.means, d.quats, d.scales, self.data.viewmats[views], self.data.Ks[views],
                                corrected=(frames, views))
        timer.lap("render forward")
        bg = torch.rand(3, device=self.device) if cfg.random_background else torch.ones(3, device=self.device)
        target = _targets(self.data.images, frames, views)
        weights = view_w.repeat(len(frames))
        if self.view_fix is not None:
            rgb = self.view_fix.colour(out.rgb, out.alpha, frames, views)
        else:
            rgb = out.features if out.features is not None else out.rgb
        losses = render_losses(rgb, out.alpha, target, bg, weights, cfg.ssim_weight, cfg.mask_weight,
                               pixel_weights=self._pixel_weights(frames, views))
        loss = losses["total"]
        if len(frames) >= 2 and cfg.smooth_weight > 0:
            smooth = (d.d_means[0] - d.d_means[1]).pow(2).sum(-1).mean()
            losses["smooth"] = smooth
            loss = loss + cfg.smooth_weight * smooth
        if cfg.plane_smooth_weight > 0:
            ps = self.deform.hexplane.smoothness()
            losses["plane"] = ps
            loss = loss + cfg.plane_smooth_weight * ps
        if self.single_view is not None:  # -- single-view prior hook: regularisers on unseen views
            for name, term in self.single_view.losses(self, frames, d, out).items():
                losses[name] = term
                loss = loss + term
        timer.lap("losses")

        densify = cfg.densify and "means2d" in out.info
        if densify:
            self.strategy.step_pre_backward(self.gaussians.params, self.optimizers, self.strategy_state,
                                            self.step_count + 1, out.info)
        loss.backward()
        timer.lap("backward (all)")
        n_before = self.gaussians.num_gaussians
        if densify:
            self._densify(out.info)
        timer.lap("densify")
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.net_opt.step()
        self.net_opt.zero_grad(set_to_none=True)
        timer.lap("optimisers")
        self.step_count += 1
        self._maybe_reset_opacity()
        if cfg.prune_outside_input and (self.step_count % max(1, cfg.densify_every) == 0
                                        or self.step_count == cfg.steps):
            self.prune_outside_input()
        if self.gaussians.num_gaussians != n_before:
            self._vis = None
        timer.lap("prune")

        with torch.no_grad():  # the first frame's input view (images are frame-major, the input view first)
            ref = target[0]
            pred = out.rgb[0].detach() + (1 - out.alpha[0].detach()) * bg
            p = _psnr(pred.clamp(0, 1), composite(ref[..., :3], ref[..., 3:], bg))
        timer.lap("stats")
        timer.steps += 1
        return StepStats(self.step_count, float(loss.detach()), p, self.gaussians.num_gaussians,
                         {k: float(v.detach()) for k, v in losses.items()}, time.perf_counter() - t_start)

    def _densify(self, info: dict[str, Any]) -> None:
        over = self.gaussians.num_gaussians >= self.cfg.max_gaussians
        saved = self.strategy.grow_grad2d
        if over:  # keep pruning, stop growing
            self.strategy.grow_grad2d = float("inf")
        try:
            self.strategy.step_post_backward(self.gaussians.params, self.optimizers, self.strategy_state,
                                             self.step_count + 1, info, packed=False)
        finally:
            self.strategy.grow_grad2d = saved

    @torch.no_grad()
    def outside_input(self, chunk: int = 4) -> Tensor:
        """[N] bool: the Gaussian's deformed centre projects outside the input image (view 0) or
        lies behind its camera in at least one frame."""
        out = torch.zeros(self.gaussians.num_gaussians, dtype=torch.bool, device=self.device)
        vm, K = self.data.viewmats[:1], self.data.Ks[:1]
        for i in range(0, self.data.num_frames, chunk):
            d = self.deformed(list(range(i, min(self.data.num_frames, i + chunk))))
            for m in d.means:  # [N, 3] per frame
                uv, z = project(m, vm, K)  # [1, N, 2], [1, N]
                u, v = uv[0, :, 0], uv[0, :, 1]
                out |= (z[0] <= 1e-3) | (u < 0) | (u > self.W) | (v < 0) | (v > self.H)
        return out

    @torch.no_grad()
    def prune_outside_input(self) -> int:
        """Remove the floaters of :meth:`outside_input` (parameters, optimiser and strategy state
        kept in step); the number removed. Keeps at least one Gaussian."""
        mask = self.outside_input()
        if self.single_view is not None:  # -- single-view prior hook: far outside the inflated volume
            mask |= self.single_view.prune_mask(self)
        n = int(mask.sum())
        if n == 0 or n == mask.numel():
            return 0
        remove(self.gaussians.params, self.optimizers, self.strategy_state, mask)
        self._vis = None
        self.pruned_outside += n
        return n

    def _maybe_reset_opacity(self) -> None:
        every = self.cfg.opacity_reset_every
        if every > 0 and self.step_count % every == 0 and self.step_count < self.strategy.refine_stop_iter:
            reset_opa(self.gaussians.params, self.optimizers, self.strategy_state, value=self.cfg.prune_opacity * 2.0)
            self.opacity_resets.append(self.step_count)

    def train(self, callback: Optional[Callable[[StepStats], Optional[bool]]] = None) -> None:
        """Step until ``cfg.steps``; ``callback(stats)`` after each step may return False to stop."""
        while self.step_count < self.cfg.steps:
            stats = self.step()
            if callback is not None and callback(stats) is False:
                return

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def bake(self, chunk: int = 4) -> dict[str, Tensor]:
        """Deformed Gaussians of every frame: means/quats [T,N,.], log-scales [T,N,3], + shared raw params."""
        T = self.data.num_frames
        means, quats, scales = [], [], []
        for i in range(0, T, chunk):
            d = self.deformed(list(range(i, min(T, i + chunk))))
            means.append(d.means)
            quats.append(F.normalize(d.quats, dim=-1))
            scales.append(d.scales)
        g = self.gaussians.params
        return {
            "means": torch.cat(means).cpu(), "quats": torch.cat(quats).cpu(), "scales": torch.cat(scales).cpu(),
            "opacities": g["opacities"].detach().cpu(), "sh0": g["sh0"].detach().cpu(), "shN": g["shN"].detach().cpu(),
            "frame_times": self.data.frame_times.cpu(),
        }

    @torch.no_grad()
    def render_frames(self, frames: list[int], views: Optional[list[int]] = None,
                      background: float = 1.0) -> Tensor:
        """RGB [B, V', H, W, 3] of ``frames`` from the training cameras ``views`` over a grey level
        (as the fit sees them: with their learnt corrections)."""
        views = list(range(self.data.num_views)) if views is None else views
        d = self.deformed(frames)
        out = self.render_batch(d.means, d.quats, d.scales, self.data.viewmats[views], self.data.Ks[views],
                                corrected=(frames, views))
        rgb = out.rgb if self.view_fix is None else self.view_fix.colour(out.rgb, out.alpha, frames, views)
        rgb = rgb + (1 - out.alpha) * background
        return rgb.view(len(frames), len(views), self.H, self.W, 3).clamp(0, 1)

    # ------------------------------------------------------------------ view check
    @property
    def view_check_step(self) -> int:
        """The step at whose start the views' corrections are checked (``view_check`` of the steps)."""
        return int(self.cfg.view_check * self.cfg.steps)

    @torch.no_grad()
    def _check_views(self) -> None:
        """Keep the views' corrections only if the views needed them: their mean learnt rotation
        over (frame, generated view) reaches ``view_check_deg``. Exact views drift by a fraction of
        that, and their corrections only absorb the fit's own errors, so they are dropped."""
        rot = self.view_fix.rotation[:, 1:].norm(dim=-1)
        self.view_check = float(rot.mean()) * 180.0 / math.pi
        if self.view_check < self.cfg.view_check_deg:
            self.view_fix = None  # its optimiser group gets no gradient from here on: Adam skips it

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "gaussians": {k: v.detach().cpu() for k, v in self.gaussians.params.items()},
            "encoder": self.encoder.state_dict() if getattr(self.encoder, "trainable", False) else None,
            "tssf": self.tssf.state_dict(),
            "deform": self.deform.state_dict(),
            "view_fix": self.view_fix.state_dict() if self.view_fix is not None else None,
            "view_check": self.view_check,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "net_opt": self.net_opt.state_dict(),
            "strategy_state": {k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in self.strategy_state.items()},
            "opacity_resets": list(self.opacity_resets),
            "pruned_outside": self.pruned_outside,
            "window": self._window,
            # the derived caches as they are: a resumed fit must render and continue exactly like
            # the uninterrupted one (they lag the parameters by up to their refresh interval)
            "caches": {k: (getattr(self, k).cpu() if isinstance(getattr(self, k), Tensor) else getattr(self, k))
                       for k in self._CACHES},
            "rng_python": self.rng.getstate(),
            "rng_torch": torch.get_rng_state(),
            "config": asdict(self.cfg),
            "init_method": self.init_method,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        # a deep copy: torch's optimisers (and our caches) would otherwise keep the very tensors of
        # ``sd``, and a trainer loaded from another's live state_dict would train in step with it
        sd = copy.deepcopy(sd)
        params = {k: nn.Parameter(v.to(self.device)) for k, v in sd["gaussians"].items()}
        self.gaussians.params = nn.ParameterDict(params)
        for k, opt in self.optimizers.items():
            opt.param_groups[0]["params"] = [self.gaussians.params[k]]
            opt.state.clear()
            opt.load_state_dict(sd["optimizers"][k])
        if sd.get("encoder") is not None:
            self.encoder.load_state_dict(sd["encoder"])
        self.tssf.load_state_dict(sd["tssf"])
        self.deform.load_state_dict(sd["deform"])
        if self.view_fix is not None and sd.get("view_fix") is not None:
            self.view_fix.load_state_dict(sd["view_fix"])
        elif self.view_fix is not None and sd.get("view_check") is not None:
            self.view_fix = None  # dropped at the check before the checkpoint
        self.view_check = sd.get("view_check")
        self.net_opt.load_state_dict(sd["net_opt"])
        self.strategy_state = {k: (v.to(self.device) if isinstance(v, Tensor) else v)
                               for k, v in sd["strategy_state"].items()}
        self.opacity_resets = list(sd.get("opacity_resets", []))
        self.pruned_outside = int(sd.get("pruned_outside", 0))
        self._window = int(sd.get("window", self._window))
        for k, v in sd.get("caches", {}).items():
            setattr(self, k, v.to(self.device) if isinstance(v, Tensor) else v)
        self.rng.setstate(sd["rng_python"])
        torch.set_rng_state(sd["rng_torch"])
        self.step_count = int(sd["step"])
        self.init_method = sd.get("init_method", self.init_method)
