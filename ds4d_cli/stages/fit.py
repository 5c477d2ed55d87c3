"""`ds4d fit`: optimise the DS4D dynamic Gaussians on the preprocessed frames + generated views.

Reads ``preprocess/frames`` and ``generate/{cameras.json,views}``, trains
(:mod:`ds4d_cli.model.trainer`) and writes into ``fit/``:

- ``checkpoints/latest.pt``  resumable state (every ``checkpoint_every`` steps and on Ctrl-C), and
  ``checkpoints/previous.pt`` the one before it (fallback when latest is unreadable);
- ``log.jsonl``              one line per ``log_every`` steps (step, losses, PSNR, Gaussians, time);
- ``previews/step_NNNNNN.png`` renders of a few frames x views (top: render, bottom: target);
- ``model.pt``               the fitted model baked per frame (:mod:`ds4d_cli.fitted` reads it);
- ``manifest.json``          last, with the options (ablations included) and a summary of what
  the trainer ran (its config, fusion, DSFD, encoder) and how well it fits its training views.

Re-running the same command resumes from ``latest.pt`` if it was written with the same options
and inputs; ``restart=True`` starts over.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ds4d_cli.allocator import retain_freed_memory
from ds4d_cli.cameras import c2w_to_viewmat
from ds4d_cli.checkpoints import Checkpoints
from ds4d_cli.errors import Ds4dError
from ds4d_cli.fitted import FittedModel, load_fitted, save_fitted  # noqa: F401 - FittedModel/load_fitted: old import path
from ds4d_cli.fsutil import atomic_path, read_json
from ds4d_cli.metrics import psnr_from_mse
from ds4d_cli.model.losses import composite
from ds4d_cli.model.tssf import FUSIONS
from ds4d_cli.report import info, progress, warn
from ds4d_cli.workspace import StageResult, Workspace, canonical_digest, run_stage

VERSION = 3  # 2: Gaussians outside the input view are pruned; 3: the single-view prior

#: Defaults that depend on the device, as (CPU, CUDA): what ``None`` in :class:`FitOptions` becomes.
DEVICE_DEFAULTS: dict[str, tuple[int, int]] = {
    # CPU: 1500 steps of 4 frames x 4 views (README, "Experiments": against 1000 steps of 2 frames x
    # every view, held-out +1.0 / +0.7 dB and its moving pixels +1.8 / +0.7 dB on windmill /
    # flapper; the step about 1.6x the old one: 232 vs 149 ms on a quiet 2-core Xeon)
    "steps": (1500, 5000),
    # training image side; never above the preprocessed frames' side unless asked (fit_resolution).
    # 256 on the CPU since the fused kernel: +0.8 dB input / +0.9 dB held-out over 128 px on the
    # shared examples (README, "Experiments"), at about 0.27 s a step (quiet machine).
    "resolution": (256, 256),
    "batch_frames": (4, 4),  # frames per step (their views rendered in one batch)
    # views rendered per step: the input view and N-1 others at random (0 = every view)
    "views_per_step": (4, 0),
    "num_gaussians": (2000, 20000),  # initial count
    "max_gaussians": (5000, 200000),  # densification stops growing here
    "opacity_reset_every": (0, 3000),  # 0 = never (short CPU fits)
}


@dataclass
class FitOptions:
    """Options of ``ds4d fit``. ``None`` means "pick for the device" (:data:`DEVICE_DEFAULTS`)."""

    steps: Optional[int] = None
    device: str = "auto"  # auto | cpu | cuda
    resolution: Optional[int] = None
    batch_frames: Optional[int] = None
    views_per_step: Optional[int] = None  # 0 = every view each step; k = the input view and k-1 others at random
    lr: float = 1.0  # multiplier on every learning rate
    num_gaussians: Optional[int] = None
    max_gaussians: Optional[int] = None
    input_weight: float = 1.0  # loss weight of the input (reference) view
    view_weight: float = 0.5  # loss weight of each generated view
    ssim_weight: float = 0.2
    mask_weight: float = 1.0
    smooth_weight: float = 0.1  # temporal smoothness of the deformation
    dynamic_weight: float = 2.0  # DSFD's dynamic map weighs moving pixels up to 1 + this in the losses
    densify: bool = True
    densify_every: int = 100
    opacity_reset_every: Optional[int] = None
    no_dsfd: bool = False  # ablation: frame feature straight to the head
    no_tssf: bool = False  # ablation: mean over views
    fusion: str = "da"  # da | ga | mean
    encoder: Optional[str] = None  # local DINOv2 folder; None = small conv encoder trained jointly
    checkpoint_every: int = 100
    preview_every: int = 250
    log_every: int = 10
    seed: int = 0
    restart: bool = False
    backend: str = "auto"  # renderer backend (auto | cpu | cuda | dense)
    # -- single-view prior (ds4d_cli.model.single_view), used only when there are no generated views
    single_view_prior: bool = True
    # per (frame, generated view) pose and colour corrections learnt with the fit (model.view_correction);
    # None = auto: on for generated or imported views, and kept only if at view_check of the steps the
    # views turn out to need them (views a few degrees off: +1.0-1.4 dB held out; exact views, where
    # the corrections only drift: -0.2-0.3 dB if kept); off with no views. True/False: always/never.
    view_correction: Optional[bool] = None
    view_check: float = 0.0  # set by the auto mode (fit_view_correction), not an option of its own


#: Options that do not change the result: left out of the manifest and the checkpoint key.
_NON_RESULT = ("checkpoint_every", "preview_every", "log_every", "restart")


def resolve_device(name: str) -> str:
    if name not in ("auto", "cpu", "cuda"):
        raise Ds4dError(f"unknown device {name!r}", hint="use --device auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise Ds4dError("--device cuda requested but CUDA is not available", hint="use --device cpu")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_options(opts: FitOptions) -> FitOptions:
    """Fill the device-dependent defaults (and validate); the result has no ``None`` left but encoder.

    The encoder folder is checked when it is loaded (:func:`ds4d_cli.encoder_weights.load_dinov2`).
    """
    device = resolve_device(opts.device)
    if opts.fusion not in FUSIONS:
        raise Ds4dError(f"unknown fusion {opts.fusion!r}", hint="use --fusion da, ga or mean")
    pick = 1 if device == "cuda" else 0
    chosen = {k: getattr(opts, k) if getattr(opts, k) is not None else both[pick] for k, both in DEVICE_DEFAULTS.items()}
    r = replace(opts, device=device, fusion="mean" if opts.no_tssf else opts.fusion, **chosen)
    if r.views_per_step < 0:
        raise Ds4dError(f"--views-per-step must be 0 (every view) or more (got {r.views_per_step})",
                        hint="e.g. --views-per-step 4: the input view and 3 others each step")
    if r.steps < 1:
        raise Ds4dError(f"--steps must be at least 1 (got {r.steps})", hint="e.g. --steps 1500")
    if not 16 <= r.resolution <= 2048:
        raise Ds4dError(f"--resolution {r.resolution} is out of range", hint="use 64 to 1024 (256 is the default)")
    return r


def train_config(o: FitOptions):
    from ds4d_cli.model.trainer import TrainConfig

    return TrainConfig(
        steps=o.steps, batch_frames=o.batch_frames, views_per_step=o.views_per_step, num_gaussians=o.num_gaussians, max_gaussians=o.max_gaussians,
        lr=o.lr, ssim_weight=o.ssim_weight, mask_weight=o.mask_weight, smooth_weight=o.smooth_weight,
        dynamic_weight=o.dynamic_weight,
        densify=o.densify, densify_every=o.densify_every, densify_from=o.densify_every,
        opacity_reset_every=o.opacity_reset_every, use_dsfd=not o.no_dsfd, fusion=o.fusion,
        encoder_path=o.encoder, seed=o.seed, backend=o.backend,
        single_view_prior=o.single_view_prior, view_correction=bool(o.view_correction), view_check=o.view_check,
    )


# ---------------------------------------------------------------------------------- inputs
def _load_rgba(path: Path, size: int) -> torch.Tensor:
    """[size, size, 4] float, straight alpha; resized with premultiplied colour (no dark fringes)."""
    try:
        im = Image.open(path).convert("RGBA")
    except (OSError, ValueError) as exc:
        raise Ds4dError(f"cannot read {path}: {exc}", hint="rerun the stage that wrote it with --force") from exc
    x = torch.from_numpy(np.array(im, dtype=np.float32) / 255.0)
    if x.shape[0] != size or x.shape[1] != size:
        if x.shape[0] != x.shape[1]:
            raise Ds4dError(f"{path} is not square ({x.shape[1]}x{x.shape[0]})", hint="rerun `ds4d preprocess`")
        p = torch.cat([x[..., :3] * x[..., 3:], x[..., 3:]], -1).permute(2, 0, 1)[None]
        p = F.interpolate(p, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0)
        a = p[..., 3:].clamp(0, 1)
        x = torch.cat([(p[..., :3] / a.clamp_min(1e-4)).clamp(0, 1) * (a > 1e-4), a], -1)
    return x


def _camera(entry: dict[str, Any], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    c2w = torch.tensor(entry["camera_to_world"], dtype=torch.float32)
    K = torch.tensor(entry["K"], dtype=torch.float32).clone()
    K[:2] *= size / float(entry["width"])
    return c2w_to_viewmat(c2w), K


def load_fit_data(ws: Workspace, opts: FitOptions):
    """FitData from the workspace at ``opts.resolution`` (view 0 = input view)."""
    from ds4d_cli.model.trainer import FitData

    size = int(opts.resolution)
    frames_dir = ws.stage_dir("preprocess") / "frames"
    gen_dir = ws.stage_dir("generate")
    frame_paths = sorted(frames_dir.glob("*.png"))
    if not frame_paths:
        raise Ds4dError(f"no preprocessed frames in {frames_dir}", hint="run `ds4d preprocess CLIP --force`")
    cams_path = gen_dir / "cameras.json"
    try:
        cams = read_json(cams_path)
    except (OSError, json.JSONDecodeError) as exc:
        raise Ds4dError(f"cannot read {cams_path}: {exc}", hint="run `ds4d generate --force`") from exc
    views = cams.get("views", [])
    entries = [cams["input"]] + views
    vms, Ks = zip(*[_camera(e, size) for e in entries])
    images = []
    for t, fp in enumerate(frame_paths):
        row = [_load_rgba(fp, size)]
        for v in range(len(views)):
            vp = gen_dir / "views" / f"{t:03d}" / f"{v:02d}.png"
            if not vp.is_file():
                raise Ds4dError(f"missing generated view {vp}", hint="run `ds4d generate --force`")
            row.append(_load_rgba(vp, size))
        images.append(torch.stack(row))
    T = len(frame_paths)
    times = cams.get("frame_times") or [i / T for i in range(T)]
    if len(times) != T:
        raise Ds4dError(
            f"cameras.json lists {len(times)} frame times but preprocess has {T} frames",
            hint="run `ds4d generate --force` after preprocessing",
        )
    weights = torch.tensor([opts.input_weight] + [opts.view_weight] * len(views), dtype=torch.float32)
    data = FitData(torch.stack(images), torch.stack(vms), torch.stack(Ks), torch.tensor(times, dtype=torch.float32), weights)
    names = ["input"] + [str(v.get("name", f"view{i:02d}")) for i, v in enumerate(views)]
    return data, names


# ---------------------------------------------------------------------------------- outputs
def _save_png(path: Path, rgb: torch.Tensor) -> None:
    arr = (rgb.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp)


def _preview(trainer, data) -> torch.Tensor:
    """Grid: for 3 frames, columns = up to 4 views; each cell render above the target (white bg)."""
    T, V = data.num_frames, data.num_views
    frames = sorted({0, T // 2, T - 1})
    views = list(range(min(V, 4)))
    rgb = trainer.render_frames(frames, views, background=1.0)  # [B, V', H, W, 3]
    tgt = data.images[frames][:, views].to(rgb.device)
    tgt = composite(tgt[..., :3], tgt[..., 3:], 1.0)  # over white
    rows = []
    for b in range(len(frames)):
        rows.append(torch.cat(list(rgb[b]), dim=1))
        rows.append(torch.cat(list(tgt[b]), dim=1))
    return torch.cat(rows, dim=0)


@torch.no_grad()
def evaluate_training_views(trainer, data, names: list[str]) -> dict[str, float]:
    """PSNR per training view over all frames (over white, at the fit resolution)."""
    T = data.num_frames
    out: dict[str, list[float]] = {n: [] for n in names}
    for i in range(0, T, 4):
        frames = list(range(i, min(T, i + 4)))
        rgb = trainer.render_frames(frames, None, background=1.0).cpu()
        tgt = data.images[frames].cpu()
        tgt = composite(tgt[..., :3], tgt[..., 3:], 1.0)  # over white
        mse = (rgb - tgt).pow(2).mean((2, 3, 4))  # [B, V]
        for v, n in enumerate(names):
            out[n] += mse[:, v].tolist()
    return {n: round(psnr_from_mse(float(np.mean(m))), 3) for n, m in out.items()}


@torch.no_grad()
def blank_input_psnr(data) -> float:
    """PSNR of an empty render (white) against the input view over all frames: the floor a fit
    that learnt nothing sits on (high when the object covers little of the image)."""
    tgt = data.images[:, 0].cpu()
    tgt = composite(tgt[..., :3], tgt[..., 3:], 1.0)  # over white
    return round(psnr_from_mse(float((1.0 - tgt).pow(2).mean())), 3)


#: A fit must beat an empty render of the input view by this much (dB), or it learnt nothing.
#: The gain is a ratio of errors, so it does not depend on how much of the image the object
#: covers. Measured at 64 px on 8 frames with two imported views (windmill / flapper): an empty
#: render 14.2 / 15.9 dB; the start (1 step) 12.4 / 14.7 dB; 100 steps at lr x0.001 11.8 dB
#: (windmill); 50 steps 22.7 dB (windmill, +8.5); 300 steps 29.3 / 33.1 dB (+15 / +17).
MIN_GAIN_OVER_BLANK_DB = 6.0


def learnt_nothing(input_psnr: float, blank_psnr: float) -> Optional[str]:
    """A warning when the input view is not clearly better than an empty render, else None."""
    if input_psnr >= blank_psnr + MIN_GAIN_OVER_BLANK_DB:
        return None
    return (f"the fit learnt (almost) nothing: its input view scores {input_psnr:.1f} dB, an empty render "
            f"{blank_psnr:.1f} dB (it should be at least {MIN_GAIN_OVER_BLANK_DB:g} dB better); check the masks in "
            "preprocess/contact_sheet.png and fit/previews/, then rerun with more --steps or fix the input")


def _checkpoint_state(trainer, key: str) -> dict[str, Any]:
    sd = trainer.state_dict()
    sd["key"] = key
    return sd


def _ran(trainer) -> dict[str, Any]:
    """What the trainer actually ran (read from the trainer, not from the options it was given)."""
    from ds4d_cli.model.features import DinoEncoder

    fusion = trainer.tssf.mode
    dino = isinstance(trainer.encoder, DinoEncoder)
    return {
        "ablations": {"dsfd": bool(trainer.cfg.use_dsfd), "tssf": fusion != "mean", "fusion": fusion},
        "encoder": f"dinov2 ({trainer.cfg.encoder_path})" if dino else "conv (joint)",
        "view_correction": trainer.view_fix is not None,
        "view_check_deg": None if trainer.view_check is None else round(trainer.view_check, 3),
        "train_config": asdict(trainer.cfg),
    }


class _Interrupt:
    """Turns Ctrl-C into a flag checked between steps, so the checkpoint is never of a half step."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> "_Interrupt":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# ---------------------------------------------------------------------------------- stage
def _resume(trainer, store: Checkpoints, key: str, device: str) -> int:
    """Load the newest readable checkpoint made with the same options and inputs; its step or 0."""
    sd = store.load(map_location=device)
    if sd is None:
        return 0
    if sd.get("key") != key:
        info("fit: the checkpoint was made with other options or inputs; starting over")
        return 0
    trainer.load_state_dict(sd)
    info(f"fit: resuming from the checkpoint at step {trainer.step_count}")
    return trainer.step_count


def _body(ws: Workspace, opts: FitOptions, key: str, out_dir: Path, backbone: Any) -> dict[str, Any]:
    from ds4d_cli.model.trainer import Trainer

    torch.manual_seed(opts.seed)
    data, names = load_fit_data(ws, opts)
    T, V = data.num_frames, data.num_views
    if opts.device == "cpu":
        retain_freed_memory()
    trainer = Trainer(data, train_config(opts), device=opts.device, backbone=backbone)
    ran = _ran(trainer)
    info(
        f"fit: {T} frames x {V} views at {opts.resolution}px on {opts.device}; {opts.steps} steps, "
        f"{opts.batch_frames} frames x {trainer.views_per_step} views/step, {opts.num_gaussians} initial Gaussians "
        f"(max {opts.max_gaussians}); "
        f"DSFD {'on' if ran['ablations']['dsfd'] else 'off'}, TSSF {ran['ablations']['fusion']}, encoder {ran['encoder']}"
        + ("; the views' rotation and colour corrected per frame" if ran["view_correction"] else "")
        + (f" while they need it (checked at step {trainer.view_check_step})"
           if ran["view_correction"] and opts.view_check > 0 else "")
    )
    if V == 1:
        warn("no generated views: only the input view constrains the fit; the back of the object will be guessed")
    store = Checkpoints(out_dir / "checkpoints")
    log_path = out_dir / "log.jsonl"
    if opts.restart:
        store.clear()
    resumed = _resume(trainer, store, key, opts.device)
    if resumed == 0:  # a fresh start: drop the log and previews of an earlier fit
        if log_path.exists():
            log_path.unlink()
        for old in (out_dir / "previews").glob("*.png"):
            old.unlink()
        info(f"fit: initial Gaussians from {trainer.init_method.replace('_', ' ')}")

    t_start = time.perf_counter()
    with _Interrupt() as intr, open(log_path, "a", encoding="utf-8") as log, \
            progress("Fitting", total=opts.steps, fields=("loss", "psnr", "gaussians"), unit="step",
                     completed=trainer.step_count) as bar:

        def callback(s) -> bool:
            bar.advance(1, loss=round(s.loss, 4), psnr=round(s.psnr, 2), gaussians=s.num_gaussians)
            if s.step % opts.log_every == 0 or s.step == opts.steps:
                rec = {"step": s.step, "loss": s.loss, "psnr_input": s.psnr, "gaussians": s.num_gaussians,
                       "seconds": round(s.seconds, 4), **{k: round(v, 6) for k, v in s.losses.items()}}
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if opts.preview_every > 0 and (s.step % opts.preview_every == 0 or s.step == opts.steps):
                _save_png(out_dir / "previews" / f"step_{s.step:06d}.png", _preview(trainer, data))
            if opts.checkpoint_every > 0 and s.step % opts.checkpoint_every == 0 and s.step < opts.steps:
                store.save(_checkpoint_state(trainer, key))
            return not intr.requested

        trainer.train(callback)
        if intr.requested:
            store.save(_checkpoint_state(trainer, key))
            info(f"fit: interrupted; checkpoint saved at step {trainer.step_count} (run the same command to resume)")
            raise KeyboardInterrupt
    elapsed = time.perf_counter() - t_start
    ran_steps = trainer.step_count - resumed
    store.save(_checkpoint_state(trainer, key))
    save_fitted(out_dir / "model.pt", trainer.bake(), sh_degree=trainer.cfg.sh_degree, resolution=int(opts.resolution),
                view_names=names, viewmats=data.viewmats, Ks=data.Ks,
                options={k: v for k, v in asdict(opts).items() if k not in _NON_RESULT})
    if trainer.view_check is not None:
        kept = trainer.view_fix is not None
        info(f"fit: the views' corrections {'kept' if kept else 'dropped'} at step {trainer.view_check_step}: "
             f"mean learnt rotation {trainer.view_check:.2f} deg ({'at or above' if kept else 'below'} "
             f"{trainer.cfg.view_check_deg:g}: the views {'are' if kept else 'are not'} off)")
    ran = _ran(trainer)  # what ran in the end (the view check may have dropped the corrections)
    psnr = evaluate_training_views(trainer, data, names)
    blank = blank_input_psnr(data)
    warnings = [w for w in [learnt_nothing(psnr["input"], blank)] if w]
    info(f"fit: PSNR per training view (all frames, {opts.resolution}px): "
         + ", ".join(f"{k} {v:.2f} dB" for k, v in psnr.items()) + f"; an empty render scores {blank:.2f} dB")
    return {
        "steps": trainer.step_count,
        "resumed_from": resumed,
        "frames": T,
        "views": names,
        "gaussians": trainer.gaussians.num_gaussians,
        "pruned_outside_input": trainer.pruned_outside,
        "init": trainer.init_method,
        "device": str(trainer.device),
        "resolution": opts.resolution,
        "seconds_per_step": round(elapsed / max(1, ran_steps), 4),
        "psnr": psnr,
        "psnr_input_blank": blank,
        **ran,
        "warnings": warnings,
    }


def frame_side(ws: Workspace) -> Optional[int]:
    """Side of the preprocessed frames (None if there are none yet)."""
    first = next(iter(sorted((ws.stage_dir("preprocess") / "frames").glob("*.png"))), None)
    if first is None:
        return None
    from PIL import Image

    with Image.open(first) as im:
        return int(max(im.size))


def fit_resolution(ws: Workspace, opts: FitOptions) -> FitOptions:
    """The default resolution capped at the frames' own side: upsampling 128 px frames to 256 only
    costs time. A resolution the user gave is kept as given."""
    if opts.resolution is not None:
        return opts
    side = frame_side(ws)
    default = resolve_options(opts).resolution
    return replace(opts, resolution=min(default, side)) if side and side < default else opts


#: Auto view correction: the share of the steps after which the corrections are kept only if needed.
VIEW_CHECK = 0.15


def fit_view_correction(ws: Workspace, opts: FitOptions) -> FitOptions:
    """``view_correction`` None (auto): with generated or imported views the corrections are learnt
    and, at VIEW_CHECK of the steps, kept only if the views need them (a diffusion model's views,
    a few degrees and percent off from frame to frame) and dropped if not (exact cameras, where they
    only drift); off with no views. A value the user gave is kept, unchecked."""
    if opts.view_correction is not None:
        return opts
    manifest = ws.read_manifest("generate") or {}
    prior = (manifest.get("options") or {}).get("prior")
    if prior in ("zero123pp", "import"):
        return replace(opts, view_correction=True, view_check=VIEW_CHECK)
    return replace(opts, view_correction=False)


def run(ws: Workspace, opts: FitOptions, force: bool = False) -> StageResult:
    """Fit (or resume, or return the cached result of) the dynamic Gaussians of ``ws``."""
    o = resolve_options(fit_view_correction(ws, fit_resolution(ws, opts)))
    if o.device == "cpu":
        # One torch thread: the fit is thousands of small ops per step, and on a busy machine
        # OpenMP barriers waiting for a descheduled thread made each step 5-10x slower (measured:
        # 294 s vs 48 s for the same 300 steps under load 5 on 2 cores). The C++ rasterizer
        # keeps its own threads.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _run(ws, o, force)
        finally:
            torch.set_num_threads(threads)
    return _run(ws, o, force)


def _run(ws: Workspace, o: FitOptions, force: bool) -> StageResult:
    inputs = {"preprocess": ws.upstream_digest("preprocess"), "generate": ws.upstream_digest("generate")}
    options = {k: v for k, v in asdict(o).items() if k not in _NON_RESULT}
    key = canonical_digest({"options": options, "inputs": inputs, "version": VERSION})
    backbone = None
    if o.encoder:  # a missing or broken folder fails here, before the workspace is touched
        from ds4d_cli.encoder_weights import load_dinov2

        backbone = load_dinov2(o.encoder)
    return run_stage(
        ws, "fit", options=options, inputs=inputs, version=VERSION, force=force or o.restart, clear=False,
        body=lambda out_dir: _body(ws, o, key, out_dir, backbone),
    )
