"""`ds4d fit`: optimise the DS4D dynamic Gaussians on the preprocessed frames + generated views.

Reads ``preprocess/frames`` and ``generate/{cameras.json,views}``, trains
(:mod:`ds4d_cli.model.trainer`) and writes into ``fit/``:

- ``checkpoints/latest.pt``  resumable state (every ``checkpoint_every`` steps and on Ctrl-C);
- ``log.jsonl``              one line per ``log_every`` steps (step, losses, PSNR, Gaussians, time);
- ``previews/step_NNNNNN.png`` renders of a few frames x views (top: render, bottom: target);
- ``model.pt``               the fitted model baked per frame (what :func:`load_fitted` reads);
- ``manifest.json``          last, with the options (ablations included) and a summary.

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

from ds4d_cli.cameras import c2w_to_viewmat
from ds4d_cli.console import info, warn
from ds4d_cli.errors import Ds4dError, MissingWeightsError
from ds4d_cli.fsutil import atomic_path, read_json
from ds4d_cli.metrics import psnr_from_mse
from ds4d_cli.model.losses import composite
from ds4d_cli.workspace import StageResult, Workspace, canonical_digest, run_stage

VERSION = 3  # 2: Gaussians outside the input view are pruned; 3: the single-view prior
FUSIONS = ("da", "ga", "mean")


@dataclass
class FitOptions:
    """Options of ``ds4d fit``. ``None`` means "pick for the device" (printed when chosen)."""

    steps: Optional[int] = None  # CPU 1000, CUDA 5000
    device: str = "auto"  # auto | cpu | cuda
    resolution: Optional[int] = None  # training image side: CPU 128, CUDA 256
    batch_frames: Optional[int] = None  # frames per step (all their views rendered at once): CPU 2, CUDA 4
    lr: float = 1.0  # multiplier on every learning rate
    num_gaussians: Optional[int] = None  # initial count: CPU 2000, CUDA 20000
    max_gaussians: Optional[int] = None  # densification stops growing here: CPU 5000, CUDA 200000
    input_weight: float = 1.0  # loss weight of the input (reference) view
    view_weight: float = 0.5  # loss weight of each generated view
    ssim_weight: float = 0.2
    mask_weight: float = 1.0
    smooth_weight: float = 0.1  # temporal smoothness of the deformation
    densify: bool = True
    densify_every: int = 100
    opacity_reset_every: Optional[int] = None  # CPU 0 (never, short fits), CUDA 3000
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
    """Fill the device-dependent defaults (and validate); the result has no ``None`` left but encoder."""
    device = resolve_device(opts.device)
    cuda = device == "cuda"
    if opts.fusion not in FUSIONS:
        raise Ds4dError(f"unknown fusion {opts.fusion!r}", hint="use --fusion da, ga or mean")
    r = replace(
        opts,
        device=device,
        steps=opts.steps if opts.steps is not None else (5000 if cuda else 1000),
        resolution=opts.resolution if opts.resolution is not None else (256 if cuda else 128),
        batch_frames=opts.batch_frames if opts.batch_frames is not None else (4 if cuda else 2),
        num_gaussians=opts.num_gaussians if opts.num_gaussians is not None else (20000 if cuda else 2000),
        max_gaussians=opts.max_gaussians if opts.max_gaussians is not None else (200000 if cuda else 5000),
        opacity_reset_every=opts.opacity_reset_every if opts.opacity_reset_every is not None else (3000 if cuda else 0),
        fusion="mean" if opts.no_tssf else opts.fusion,
    )
    if r.encoder and not (Path(r.encoder) / "config.json").is_file():
        raise MissingWeightsError(
            f"no encoder weights at {r.encoder}",
            hint="point --encoder at a local DINOv2 folder (config.json + weights, e.g. saved with "
            "save_pretrained from facebook/dinov2-small), or omit --encoder to train the small conv encoder",
        )
    if r.steps < 1:
        raise Ds4dError(f"--steps must be at least 1 (got {r.steps})", hint="e.g. --steps 1000")
    if not 16 <= r.resolution <= 2048:
        raise Ds4dError(f"--resolution {r.resolution} is out of range", hint="use 64 to 1024 (128 is the CPU default)")
    return r


def train_config(o: FitOptions):
    from ds4d_cli.model.trainer import TrainConfig

    return TrainConfig(
        steps=o.steps, batch_frames=o.batch_frames, num_gaussians=o.num_gaussians, max_gaussians=o.max_gaussians,
        lr=o.lr, ssim_weight=o.ssim_weight, mask_weight=o.mask_weight, smooth_weight=o.smooth_weight,
        densify=o.densify, densify_every=o.densify_every, densify_from=o.densify_every,
        opacity_reset_every=o.opacity_reset_every, use_dsfd=not o.no_dsfd, fusion=o.fusion,
        encoder_path=o.encoder, seed=o.seed, backend=o.backend,
        single_view_prior=o.single_view_prior,
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


def _save_checkpoint(path: Path, trainer, key: str) -> None:
    sd = trainer.state_dict()
    sd["key"] = key
    with atomic_path(path) as tmp:
        torch.save(sd, tmp)


def _save_model(path: Path, trainer, data, names: list[str], opts: FitOptions) -> None:
    baked = trainer.bake()
    baked.update(
        sh_degree=trainer.cfg.sh_degree,
        resolution=int(opts.resolution),
        view_names=names,
        viewmats=data.viewmats.cpu(),
        Ks=data.Ks.cpu(),
        options={k: v for k, v in asdict(opts).items() if k not in _NON_RESULT},
    )
    with atomic_path(path) as tmp:
        torch.save(baked, tmp)


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
def _body(ws: Workspace, opts: FitOptions, key: str, out_dir: Path) -> dict[str, Any]:
    from ds4d_cli.model.trainer import Trainer
    from ds4d_cli.progress import progress_bar

    torch.manual_seed(opts.seed)
    data, names = load_fit_data(ws, opts)
    T, V = data.num_frames, data.num_views
    info(
        f"fit: {T} frames x {V} views at {opts.resolution}px on {opts.device}; {opts.steps} steps, "
        f"{opts.batch_frames} frames/step, {opts.num_gaussians} initial Gaussians (max {opts.max_gaussians}); "
        f"DSFD {'off' if opts.no_dsfd else 'on'}, TSSF {opts.fusion}"
        + (f", encoder {opts.encoder}" if opts.encoder else ", conv encoder trained jointly")
    )
    if V == 1:
        warn("no generated views: only the input view constrains the fit; the back of the object will be guessed")
    trainer = Trainer(data, train_config(opts), device=opts.device)
    ckpt_dir = out_dir / "checkpoints"
    latest = ckpt_dir / "latest.pt"
    log_path = out_dir / "log.jsonl"
    if opts.restart and latest.exists():
        latest.unlink()
    resumed = 0
    if latest.exists():
        try:
            sd = torch.load(latest, map_location=opts.device, weights_only=False)
        except Exception as exc:  # a corrupt checkpoint cannot happen via atomic writes, but be safe
            warn(f"ignoring unreadable checkpoint {latest} ({exc}); starting over")
            sd = None
        if sd is not None and sd.get("key") == key:
            trainer.load_state_dict(sd)
            resumed = trainer.step_count
            info(f"fit: resuming from the checkpoint at step {resumed}")
        elif sd is not None:
            info("fit: the checkpoint was made with other options or inputs; starting over")
    if resumed == 0:  # a fresh start: drop the log and previews of an earlier fit
        if log_path.exists():
            log_path.unlink()
        for old in (out_dir / "previews").glob("*.png"):
            old.unlink()
        info(f"fit: initial Gaussians from {trainer.init_method.replace('_', ' ')}")

    t_start = time.perf_counter()
    last_psnr = float("nan")
    with _Interrupt() as intr, progress_bar("Fitting", total=opts.steps, fields=("loss", "psnr", "gaussians")) as bar, \
            open(log_path, "a", encoding="utf-8") as log:
        bar.update(completed=trainer.step_count)

        def callback(s) -> bool:
            nonlocal last_psnr
            last_psnr = s.psnr
            bar.advance(1, loss=round(s.loss, 4), psnr=round(s.psnr, 2), gaussians=s.num_gaussians)
            if s.step % opts.log_every == 0 or s.step == opts.steps:
                rec = {"step": s.step, "loss": s.loss, "psnr_input": s.psnr, "gaussians": s.num_gaussians,
                       "seconds": round(s.seconds, 4), **{k: round(v, 6) for k, v in s.losses.items()}}
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if opts.preview_every > 0 and (s.step % opts.preview_every == 0 or s.step == opts.steps):
                _save_png(out_dir / "previews" / f"step_{s.step:06d}.png", _preview(trainer, data))
            if opts.checkpoint_every > 0 and s.step % opts.checkpoint_every == 0 and s.step < opts.steps:
                _save_checkpoint(latest, trainer, key)
            return not intr.requested

        trainer.train(callback)
        if intr.requested:
            _save_checkpoint(latest, trainer, key)
            info(f"fit: interrupted; checkpoint saved at step {trainer.step_count} (run the same command to resume)")
            raise KeyboardInterrupt
    elapsed = time.perf_counter() - t_start
    ran = trainer.step_count - resumed
    _save_checkpoint(latest, trainer, key)
    _save_model(out_dir / "model.pt", trainer, data, names, opts)
    psnr = evaluate_training_views(trainer, data, names)
    summary = {
        "steps": trainer.step_count,
        "resumed_from": resumed,
        "frames": T,
        "views": names,
        "gaussians": trainer.gaussians.num_gaussians,
        "pruned_outside_input": trainer.pruned_outside,
        "init": trainer.init_method,
        "device": opts.device,
        "resolution": opts.resolution,
        "seconds_per_step": round(elapsed / max(1, ran), 4),
        "psnr": psnr,
        "ablations": {"dsfd": not opts.no_dsfd, "tssf": opts.fusion != "mean", "fusion": opts.fusion},
        "encoder": opts.encoder or "conv (joint)",
    }
    info(f"fit: PSNR per training view (all frames, {opts.resolution}px): "
         + ", ".join(f"{k} {v:.2f} dB" for k, v in psnr.items()))
    return summary


def run(ws: Workspace, opts: FitOptions, force: bool = False) -> StageResult:
    """Fit (or resume, or return the cached result of) the dynamic Gaussians of ``ws``."""
    o = resolve_options(opts)
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
    return run_stage(
        ws, "fit", options=options, inputs=inputs, version=VERSION, force=force or o.restart, clear=False,
        body=lambda out_dir: _body(ws, o, key, out_dir),
    )


# ---------------------------------------------------------------------------------- loading
class FittedModel:
    """A fitted DS4D model, baked per frame (no encoder or images needed to render it).

    - ``num_frames``, ``frame_times`` (normalised, list of float), ``sh_degree``;
    - ``gaussians_at(i)`` -> dict of tensors in the RAW gsplat/PLY layout: ``means`` [N,3],
      ``quats`` [N,4] (wxyz, unit), ``scales`` [N,3] LOG std-devs, ``opacities`` [N] LOGITS,
      ``sh0`` [N,1,3], ``shN`` [N,K,3];
    - ``render(i, viewmats, Ks, width, height, background=None, backend="auto")`` -> RenderOutput
      (rgb [C,H,W,3] composited over ``background`` (None = black, i.e. premultiplied), alpha, depth);
    - ``viewmats``/``Ks``/``view_names``: the training cameras at ``resolution`` px (view 0 = input).
    """

    def __init__(self, baked: dict[str, Any]) -> None:
        self._b = baked
        self.num_frames = int(baked["means"].shape[0])
        self.frame_times = [float(t) for t in baked["frame_times"]]
        self.sh_degree = int(baked.get("sh_degree", 0))
        self.resolution = int(baked.get("resolution", 0))
        self.view_names = list(baked.get("view_names", []))
        self.viewmats = baked.get("viewmats")
        self.Ks = baked.get("Ks")
        self.options = dict(baked.get("options", {}))

    @property
    def num_gaussians(self) -> int:
        return int(self._b["opacities"].shape[0])

    def _check(self, i: int) -> int:
        if not 0 <= int(i) < self.num_frames:
            raise IndexError(f"frame {i} out of range (model has {self.num_frames} frames)")
        return int(i)

    def gaussians_at(self, i: int) -> dict[str, torch.Tensor]:
        i = self._check(i)
        b = self._b
        return {"means": b["means"][i], "quats": b["quats"][i], "scales": b["scales"][i],
                "opacities": b["opacities"], "sh0": b["sh0"], "shN": b["shN"]}

    @torch.no_grad()
    def render(self, i: int, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
               background: Optional[torch.Tensor] = None, backend: str = "auto"):
        from ds4d_cli.gaussians import SH_C0
        from ds4d_cli.render import render

        g = self.gaussians_at(i)
        if self.sh_degree > 0:
            colors, deg = torch.cat([g["sh0"], g["shN"]], dim=1), self.sh_degree
        else:
            colors, deg = 0.5 + SH_C0 * g["sh0"][:, 0, :], None
        return render(g["means"], g["quats"], torch.exp(g["scales"]), torch.sigmoid(g["opacities"]), colors,
                      viewmats.float(), Ks.float(), int(width), int(height), background=background,
                      backend=backend, sh_degree=deg)


def load_fitted(ws: Workspace) -> FittedModel:
    """The fitted model of ``ws`` (fit/model.pt); a user error if fit has not finished."""
    path = ws.stage_dir("fit") / "model.pt"
    if ws.read_manifest("fit") is None or not path.is_file():
        raise Ds4dError(f"no fitted model in {ws.stage_dir('fit')}", hint="run `ds4d fit` first")
    return FittedModel(torch.load(path, map_location="cpu", weights_only=False))
