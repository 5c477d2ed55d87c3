"""The `ds4d` command line: parses options, calls a stage function, renders what it reports.

Nothing here computes anything: every command builds a stage's options dataclass and calls
``ds4d_cli.stages.<stage>.run(workspace, options)``. What stages report (messages, progress,
results: :mod:`ds4d_cli.report`) is rendered by :mod:`ds4d_cli.terminal`; tables are built in
:mod:`ds4d_cli.tables`. Heavy modules (torch, rembg, diffusers) are imported inside the commands
so that ``ds4d --help`` stays instant.
"""

from __future__ import annotations

import copy
import sys
import traceback
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from typer._click import exceptions as cli_exceptions  # typer vendors click
from typer.core import TyperGroup

from ds4d_cli import __version__, report
from ds4d_cli.console import console
from ds4d_cli.errors import Ds4dError

#: Options of the whole program that every command also accepts after its name.
COMMON_OPTIONS = ("workspace", "debug", "quiet")


@dataclass
class _State:
    """The common options: set before the command by the group, after it by the command."""

    workspace: Optional[Path] = None
    debug: bool = False
    quiet: bool = False


def _set_common(ctx: Any, param: Any, value: Any) -> Any:
    """Callback of a common option given after the command: it wins over the one before."""
    if value not in (None, False):
        setattr(ctx.ensure_object(_State), param.name, value)
    return value


class _CliReporter(report.Reporter):
    """Renders events for a person; built at the first event, once every option is parsed."""

    def __init__(self, state: _State) -> None:
        self._state = state
        self._renderer: Optional[report.Reporter] = None

    def emit(self, event: report.Event) -> None:
        if self._renderer is None:
            from ds4d_cli.terminal import make_renderer

            self._renderer = make_renderer(self._state.quiet)
        self._renderer.emit(event)


class _Group(TyperGroup):
    """Gives every command the common options (so `ds4d fit -w WS` works like `ds4d -w WS fit`)
    and renders what its stages report."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and not getattr(cmd, "_ds4d_common", False):
            for param in self.params:
                if param.name in COMMON_OPTIONS:
                    after = copy.copy(param)
                    after.expose_value, after.envvar, after.callback = False, None, _set_common
                    after.default = False if param.is_flag else None
                    cmd.params.append(after)
            cmd._ds4d_common = True
        return cmd

    def invoke(self, ctx: Any) -> Any:
        with report.using(_CliReporter(ctx.ensure_object(_State))):
            return super().invoke(ctx)


app = typer.Typer(
    name="ds4d",
    cls=_Group,
    help=(
        "Turn a short video of one moving object into a 4D asset (dynamic 3D Gaussians, DS4D).\n\n"
        "Typical use: `ds4d preprocess clip.mp4`, `ds4d generate`, `ds4d fit --steps 5000`, "
        "`ds4d export --format ply` — or all at once: `ds4d run clip.mp4`. "
        "Every stage caches its results in the workspace and is skipped when nothing changed; "
        "a missing `generate` runs by itself (with `--prior auto`) before `fit`. "
        "`-w`, `--debug` and `--quiet` go before or after the command."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ds4d {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    workspace: Optional[Path] = typer.Option(
        None,
        "-w",
        "--workspace",
        envvar="DS4D_WORKSPACE",
        help="Workspace folder (default ./ds4d_workspace; also DS4D_WORKSPACE).",
        show_default=False,
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print warnings, errors and results."),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    state = ctx.ensure_object(_State)
    state.workspace, state.debug, state.quiet = workspace, debug, quiet


def _ws_path(ctx: typer.Context) -> Optional[Path]:
    return ctx.ensure_object(_State).workspace


def _open_ws(ctx: typer.Context) -> Any:
    from ds4d_cli.workspace import Workspace

    return Workspace.open(_ws_path(ctx))


def _split_list(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


# --------------------------------------------------------------------------------------------
class Segmenter(str, Enum):
    hybrid = "hybrid"
    u2netp = "u2netp"
    u2net = "u2net"
    isnet = "isnet-general-use"
    birefnet = "birefnet-general"
    bria = "bria-rmbg"
    static_bg = "static-bg"


class Prior(str, Enum):
    auto = "auto"
    zero123pp = "zero123pp"
    import_ = "import"
    none = "none"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ExportFormat(str, Enum):
    ply = "ply"
    mp4 = "mp4"
    grid = "grid"
    html = "html"
    glb = "glb"
    obj = "obj"


class Backend(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    dense = "dense"


# Each option is declared once here and shared by its stage command and `ds4d run`. Defaults
# restate the stage's options dataclass (the one source of defaults); tests/test_options.py
# fails when one drifts, and `ds4d run` passes only the options it exposes, by keyword.
_FORCE = typer.Option(False, "--force", help="Run again even if the cached result is still valid.")

# preprocess (PreprocessOptions)
_SOURCE = typer.Argument(..., help="A video (mp4, mov, webm, gif...), a folder of images, or RGBA frames.")
_FRAMES = typer.Option(32, "--frames", "-n", help="Frames to sample evenly (fewer if the clip is shorter).")
_SIZE = typer.Option(256, "--size", help="Side of the square object-centred output frames, in pixels.")
_START = typer.Option(None, "--start", help="Start time in seconds (a usable window of a long clip).")
_END = typer.Option(None, "--end", help="End time in seconds.")
_SEGMENTER = typer.Option(
    Segmenter.hybrid, "--segmenter",
    help="hybrid (default: u2netp with the clip's own background), a rembg model (u2netp works offline), "
    "or static-bg for a fixed camera with --background-plate.",
)
_PLATE = typer.Option(
    None, "--background-plate", help="static-bg only: an image of the empty scene (else a temporal median)."
)

# generate (GenerateOptions)
_PRIOR_DIR = typer.Argument(None, help="With `--prior import`: the folder of multi-view frames (see README).")
_PRIOR = typer.Option(
    Prior.auto,
    "--prior",
    help="zero123pp (diffusion; needs its weights), import DIR (views you already have), none (input view only). "
    "auto = zero123pp when its weights are present, else none.",
)
_VIEWS = typer.Option(
    None, "--views", help="Comma-separated subset of the prior's views, e.g. az090,az270 (import) or az090_el-20 (zero123pp)."
)
_DEVICE = typer.Option(Device.auto, "--device", help="auto uses CUDA when available.")

# fit (FitOptions; the numbers quoted for CPU/CUDA are fit.DEVICE_DEFAULTS)
_STEPS = typer.Option(None, "--steps", help="Optimisation steps (default 1500 on CPU, 5000 on CUDA).")
_RES = typer.Option(None, "--resolution", help="Training resolution in pixels (default 256 on CPU, 256 on CUDA; at most the preprocessed frames' side).")
_NO_DSFD = typer.Option(False, "--no-dsfd", help="Ablation: feed the frame feature straight to the head.")
_NO_TSSF = typer.Option(False, "--no-tssf", help="Ablation: plain mean over views instead of similarity fusion.")


def _preprocess_options(source: Path, segmenter: Segmenter, background_plate: Optional[Path], **given: Any) -> Any:
    from ds4d_cli.stages.preprocess import PreprocessOptions

    return PreprocessOptions(source=str(source), segmenter=segmenter.value,
                             background=str(background_plate) if background_plate else None, **given)


def _generate_options(prior: Prior, prior_dir: Optional[Path], views: Optional[str], device: Device, **given: Any) -> Any:
    from ds4d_cli.stages.generate import GenerateOptions

    if prior is Prior.import_ and prior_dir is None:
        raise Ds4dError("--prior import needs a folder", hint="write it after the prior: `--prior import DIR`")
    if prior_dir is not None and prior is Prior.auto:
        prior = Prior.import_
    return GenerateOptions(prior=prior.value, import_dir=str(prior_dir.absolute()) if prior_dir else None,
                           views=_split_list(views), device=device.value, **given)


def _fit_options(device: Device, **given: Any) -> Any:
    from ds4d_cli.stages.fit import FitOptions, resolve_options

    opts = FitOptions(device=device.value, **given)
    resolve_options(opts)  # bad options fail here, before any upstream stage runs for them
    return opts


def _export_formats(formats: str) -> list[ExportFormat]:
    """``--formats a,b`` of `run` and `batch`: the export formats, or a user error naming the bad one."""
    names = _split_list(formats) or []
    known = [e.value for e in ExportFormat]
    bad = [f for f in names if f not in known]
    if bad:
        raise Ds4dError(f"unknown export format {bad[0]!r}", hint=f"use --formats with any of {', '.join(known)}")
    return [ExportFormat(f) for f in names]


def _export_options(fmt: ExportFormat, **given: Any) -> Any:
    from ds4d_cli.stages.export import ExportOptions

    return ExportOptions(format=fmt.value, **given)


@app.command()
def preprocess(
    ctx: typer.Context,
    source: Path = _SOURCE,
    frames: int = _FRAMES,
    size: int = _SIZE,
    start: Optional[float] = _START,
    end: Optional[float] = _END,
    segmenter: Segmenter = _SEGMENTER,
    background_plate: Optional[Path] = _PLATE,
    margin: float = typer.Option(0.1, "--margin", help="Extra border around the object, as a fraction of its size."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate of an image folder (videos carry their own; default 12)."),
    force_masks: bool = typer.Option(False, "--force-masks", help="Keep masks that fail the checks (warns instead of stopping)."),
    force: bool = typer.Option(False, "--force", help="Rerun; also allows replacing another clip in the workspace."),
) -> None:
    """Segment the object in every frame and crop one object-centred square for the whole clip."""
    from ds4d_cli.stages import preprocess as stage

    opts = _preprocess_options(source, segmenter, background_plate, frames=frames, size=size, start=start, end=end,
                               margin=margin, fps=fps, force_masks=force_masks)
    stage.run(_ws_path(ctx), opts, force=force)


@app.command()
def generate(
    ctx: typer.Context,
    prior_dir: Optional[Path] = _PRIOR_DIR,
    prior: Prior = _PRIOR,
    model: Optional[str] = typer.Option(None, "--model", help="zero123pp: hub id or local folder of the weights."),
    variant: str = typer.Option("v1.1", "--variant", help="zero123pp: v1.1 (elevations +30/-20) or v1.2 (+20/-10)."),
    views: Optional[str] = _VIEWS,
    steps: Optional[int] = typer.Option(None, "--steps", help="zero123pp: denoising steps (default 75 / 28 on v1.2)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="zero123pp: classifier-free guidance scale (default 4.0)."),
    seed: int = typer.Option(0, "--seed", help="Noise seed, shared by all frames so views do not flicker."),
    device: Device = _DEVICE,
    anchor: bool = typer.Option(True, "--anchor/--no-anchor", help="zero123pp: anchor later frames on frame 0 (STAG4D: self-attention tokens averaged with frame 0's)."),
    input_camera: Optional[Path] = typer.Option(
        None, "--input-camera", help="none: place the input camera from DIR/cameras.json (mapped through the crop, "
        "as --prior import DIR does) so that `ds4d eval --gt DIR` can score a single-view fit."),
    force: bool = _FORCE,
) -> None:
    """Make V views of every frame at known cameras: the multi-view prior that `fit` learns from."""
    from ds4d_cli.pipeline import ensure_upstream

    ws = _open_ws(ctx)  # first: a missing workspace is reported before heavy imports
    from ds4d_cli.stages import generate as stage

    opts = _generate_options(prior, prior_dir, views, device, model=model, variant=variant, steps=steps,
                             guidance=guidance, seed=seed, anchor=anchor,
                             input_camera=str(input_camera.absolute()) if input_camera else None)
    ensure_upstream(ws, "generate")
    stage.run(ws, opts, force=force)


@app.command()
def fit(
    ctx: typer.Context,
    steps: Optional[int] = _STEPS,
    device: Device = _DEVICE,
    resolution: Optional[int] = _RES,
    no_dsfd: bool = _NO_DSFD,
    no_tssf: bool = _NO_TSSF,
    fusion: str = typer.Option("da", "--fusion", help="TSSF variant: da (distance-aware, default), ga (learned), mean."),
    encoder: Optional[Path] = typer.Option(
        None, "--encoder", help="Local folder of a DINOv2 model; default: a small jointly-trained CNN."
    ),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Save a resumable checkpoint every N steps."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    restart: bool = typer.Option(False, "--restart", help="Ignore checkpoints and start the fit over."),
    batch_frames: Optional[int] = typer.Option(None, "--batch-frames", help="Frames per step (default 4 on CPU, 4 on CUDA)."),
    views_per_step: Optional[int] = typer.Option(
        None, "--views-per-step", help="Views rendered per step: the input view and N-1 others at random "
        "(0 = all; default 4 on CPU, 0 on CUDA: every view)."),
    lr: float = typer.Option(1.0, "--lr", help="Multiplier on every learning rate."),
    num_gaussians: Optional[int] = typer.Option(None, "--num-gaussians", help="Initial Gaussians (default 2000 on CPU, 20000 on CUDA)."),
    max_gaussians: Optional[int] = typer.Option(None, "--max-gaussians", help="Densification cap (default 5000 on CPU, 200000 on CUDA)."),
    input_weight: float = typer.Option(1.0, "--input-weight", help="Loss weight of the input (reference) view."),
    view_weight: float = typer.Option(0.5, "--view-weight", help="Loss weight of each generated view (less reliable)."),
    ssim_weight: float = typer.Option(0.2, "--ssim-weight", help="Share of D-SSIM in the image loss."),
    mask_weight: float = typer.Option(1.0, "--mask-weight", help="Weight of the silhouette (alpha) loss."),
    smooth_weight: float = typer.Option(0.1, "--smooth-weight", help="Temporal smoothness of the deformation."),
    dynamic_weight: float = typer.Option(
        2.0, "--dynamic-weight", help="DSFD steers the loss: pixels of large dynamic part |D| weigh up to 1 + this "
        "(0 = every pixel alike; --no-dsfd turns it off with DSFD)."),
    densify: bool = typer.Option(True, "--densify/--no-densify", help="Split, clone and prune Gaussians (gsplat strategy)."),
    densify_every: int = typer.Option(100, "--densify-every", help="Steps between densification rounds."),
    opacity_reset_every: Optional[int] = typer.Option(
        None, "--opacity-reset-every", help="Steps between opacity resets; 0 = never (default 0 on CPU, 3000 on CUDA)."
    ),
    preview_every: int = typer.Option(250, "--preview-every", help="Write preview images every N steps."),
    log_every: int = typer.Option(10, "--log-every", help="Append to fit/log.jsonl every N steps."),
    backend: Backend = typer.Option(Backend.auto, "--backend", help="Rasterizer: auto, cpu, cuda or dense (slow reference)."),
    single_view_prior: bool = typer.Option(
        True, "--single-view-prior/--no-single-view-prior",
        help="With no generated views (--prior none): start from a volume guessed from the silhouette and keep "
        "the fit to it from unseen cameras. --no-single-view-prior: the extruded silhouette, input view only."),
    view_correction: Optional[bool] = typer.Option(
        None, "--view-correction/--no-view-correction",
        help="Learn a small pose and colour correction of every generated view at every frame, for views a "
        "few degrees and a few percent off (a diffusion model's). Default: learnt, and kept after 15% of the "
        "steps only if the views turn out to need it (exact views: dropped). --view-correction keeps it, "
        "--no-view-correction never learns it. The input view is never corrected."),
    force: bool = _FORCE,
) -> None:
    """Fit dynamic 3D Gaussians (DSFD + TSSF deformation); resumes from its last checkpoint.

    A missing `generate` runs first with its defaults (`--prior auto`)."""
    from ds4d_cli.pipeline import ensure_upstream

    ws = _open_ws(ctx)  # first: a missing workspace is reported before heavy imports
    from ds4d_cli.stages import fit as stage

    opts = _fit_options(
        device, steps=steps, resolution=resolution, no_dsfd=no_dsfd, no_tssf=no_tssf, fusion=fusion,
        encoder=str(encoder) if encoder else None, checkpoint_every=checkpoint_every, seed=seed, restart=restart,
        batch_frames=batch_frames, views_per_step=views_per_step, lr=lr, num_gaussians=num_gaussians,
        max_gaussians=max_gaussians,
        input_weight=input_weight, view_weight=view_weight, ssim_weight=ssim_weight, mask_weight=mask_weight,
        smooth_weight=smooth_weight, dynamic_weight=dynamic_weight, densify=densify, densify_every=densify_every,
        opacity_reset_every=opacity_reset_every, preview_every=preview_every, log_every=log_every,
        backend=backend.value, single_view_prior=single_view_prior, view_correction=view_correction,
    )
    ensure_upstream(ws, "fit")
    stage.run(ws, opts, force=force or restart)


@app.command()
def export(
    ctx: typer.Context,
    fmt: ExportFormat = typer.Option(ExportFormat.ply, "--format", "-f", help="ply: one 3DGS file per frame; "
                                     "mp4: turntable video; grid: input beside front/side/back renders; "
                                     "html: a static page that plays the 4D splats; glb: an animated mesh "
                                     "(morph targets); obj: one mesh per frame."),
    frames: Optional[str] = typer.Option(None, "--frames", help="Subset of frames, e.g. 0,5,10 or 0-11 (default all)."),
    orbits: float = typer.Option(1.0, "--orbits", help="mp4: camera orbits over the clip."),
    elevation: float = typer.Option(15.0, "--elevation", help="mp4: camera elevation in degrees."),
    fps: Optional[float] = typer.Option(None, "--fps", help="mp4/grid: frame rate (default: the clip's, at least 12)."),
    size: int = typer.Option(256, "--size", help="mp4/grid: render size in pixels."),
    background: str = typer.Option("white", "--background", help="mp4/grid/html: white, black or a #rrggbb colour."),
    mesh_resolution: int = typer.Option(96, "--mesh-resolution", help="glb/obj: density grid cells along the object's longest side."),
    mesh_frame: Optional[int] = typer.Option(None, "--mesh-frame", help="glb/obj: frame whose surface is extracted (default: the middle one)."),
    iso: float = typer.Option(0.5, "--iso", help="glb/obj: density level of the surface (lower = fatter)."),
    force: bool = _FORCE,
) -> None:
    """Write the fitted 4D asset: per-frame PLYs, a turntable MP4, a grid, a viewer page or an animated mesh."""
    from ds4d_cli.pipeline import ensure_upstream

    ws = _open_ws(ctx)  # first: a missing workspace is reported before heavy imports
    from ds4d_cli.stages import export as stage

    opts = _export_options(fmt, frames=frames, orbits=orbits, elevation=elevation, fps=fps, size=size,
                           background=background, mesh_resolution=mesh_resolution, mesh_frame=mesh_frame, iso=iso)
    ensure_upstream(ws, f"export/{opts.format}")
    stage.run(ws, opts, force=force)


@app.command()
def view(
    ctx: typer.Context,
    port: int = typer.Option(8000, "--port", help="Port to listen on (0 = any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; keep 127.0.0.1 and use an SSH tunnel for remote machines."),
    background: str = typer.Option("white", "--background", help="Page background: white, black or a #rrggbb colour."),
) -> None:
    """Play the fitted 4D asset in your browser: exports the viewer page if needed and serves it locally."""
    ws = _open_ws(ctx)  # first: a missing workspace is reported before heavy imports
    from ds4d_cli.viewer import server

    def ready(url: str) -> None:
        typer.echo(f"ds4d viewer: {url}  (open it in a browser; Ctrl-C stops)")

    server.run(ws, server.ViewOptions(host=host, port=port, background=background), on_ready=ready)


@app.command("eval")
def evaluate(
    ctx: typer.Context,
    gt: Path = typer.Option(..., "--gt", help="Ground-truth folder: cameras.json + gt/<view>/NNN.png (+ input/)."),
    views: Optional[str] = typer.Option(None, "--views", help="Comma-separated views to score (default all)."),
    background: str = typer.Option("white", "--background", help="Compositing colour: white, black, gray or #rrggbb."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON on stdout."),
) -> None:
    """Score the fitted model against ground-truth views: PSNR, SSIM and PSNR on moving pixels."""
    ws = _open_ws(ctx)  # first: a missing workspace is reported before heavy imports
    from ds4d_cli.stages import evaluate as stage

    opts = stage.EvalOptions(gt=str(gt.absolute()), views=_split_list(views), background=background)
    results = stage.run(ws, opts)
    if as_json:
        import json

        typer.echo(json.dumps(results, indent=2))
    else:
        from ds4d_cli.tables import eval_table

        console.print(eval_table(results))


@app.command()
def run(
    ctx: typer.Context,
    source: Path = _SOURCE,
    prior_dir: Optional[Path] = _PRIOR_DIR,
    prior: Prior = _PRIOR,
    views: Optional[str] = _VIEWS,
    frames: int = _FRAMES,
    size: int = _SIZE,
    segmenter: Segmenter = _SEGMENTER,
    background_plate: Optional[Path] = _PLATE,
    start: Optional[float] = _START,
    end: Optional[float] = _END,
    steps: Optional[int] = _STEPS,
    device: Device = _DEVICE,
    resolution: Optional[int] = _RES,
    no_dsfd: bool = _NO_DSFD,
    no_tssf: bool = _NO_TSSF,
    formats: str = typer.Option("ply,mp4", "--formats", help="Exports to write, comma-separated (ply, mp4, grid, html, glb, obj)."),
    force: bool = _FORCE,
) -> None:
    """Run preprocess, generate, fit and export in order; each is skipped when its cache is valid.

    Every option not listed here takes its stage's default."""
    from ds4d_cli.stages import export as export_stage
    from ds4d_cli.stages import fit as fit_stage
    from ds4d_cli.stages import generate as generate_stage
    from ds4d_cli.stages import preprocess as preprocess_stage
    from ds4d_cli.workspace import Workspace

    formats_list = _export_formats(formats)
    fit_opts = _fit_options(device, steps=steps, resolution=resolution, no_dsfd=no_dsfd, no_tssf=no_tssf)
    gen = _generate_options(prior, prior_dir, views, device)
    pre = _preprocess_options(source, segmenter, background_plate, frames=frames, size=size, start=start, end=end)
    preprocess_stage.run(_ws_path(ctx), pre, force=force)
    ws = Workspace.open(_ws_path(ctx))
    generate_stage.run(ws, gen, force=force)
    fit_stage.run(ws, fit_opts, force=force)
    outputs = [export_stage.run(ws, _export_options(fmt), force=force) for fmt in formats_list]
    console.print("[bold]outputs:[/bold]")
    for result in outputs:
        for path in result.summary.get("outputs", [str(result.dir)]):
            console.print(f"  {path}", soft_wrap=True, markup=False)


@app.command()
def batch(
    ctx: typer.Context,
    clips: list[str] = typer.Argument(..., help="Clips: videos, image folders, globs ('clips/*.mp4') or .txt files listing paths."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the clips' workspaces (one each, named after the clip) and batch.json."),
    prior: Prior = _PRIOR,
    views: Optional[str] = _VIEWS,
    frames: int = _FRAMES,
    size: int = _SIZE,
    segmenter: Segmenter = _SEGMENTER,
    background_plate: Optional[Path] = _PLATE,
    start: Optional[float] = _START,
    end: Optional[float] = _END,
    steps: Optional[int] = _STEPS,
    device: Device = _DEVICE,
    resolution: Optional[int] = _RES,
    no_dsfd: bool = _NO_DSFD,
    no_tssf: bool = _NO_TSSF,
    formats: str = typer.Option("ply,mp4", "--formats", help="Exports to write for each clip, comma-separated."),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="Clips at once (default: one per GPU; on CPU one per 2 cores). With --ray: tasks in flight."),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="[ADDRESS]",
        help="Run on a Ray cluster (HEAD:6379, ray://HEAD:10001, auto); alone: a local Ray instance. Needs ds4d[cluster]."),
    force: bool = _FORCE,
) -> None:
    """Run every stage of `ds4d run` on many clips in parallel; a rerun resumes where it stopped.

    Each clip gets a cached workspace under --out; a failing clip is recorded in --out/batch.json
    with its error and does not stop the others (the exit code is 3 if any failed)."""
    from ds4d_cli.batch.cluster import ray_address
    from ds4d_cli.batch.runner import ClipsFailed, run_batch, stage_names
    from ds4d_cli.batch.view import make_view, summary_table
    from ds4d_cli.batch.worker import StagePlan

    if prior is Prior.import_:
        raise Ds4dError("--prior import takes one clip's views, not a batch's",
                        hint="use --prior auto, zero123pp or none, or `ds4d run CLIP --prior import DIR` per clip")
    formats_list = _export_formats(formats)
    plan = StagePlan.from_options(
        _preprocess_options(Path(clips[0]), segmenter, background_plate.absolute() if background_plate else None,
                            frames=frames, size=size, start=start, end=end),  # absolute: a Ray task runs in another folder
        _generate_options(prior, None, views, device),
        _fit_options(device, steps=steps, resolution=resolution, no_dsfd=no_dsfd, no_tssf=no_tssf),
        [_export_options(fmt) for fmt in formats_list], force=force,
    )
    state = ctx.ensure_object(_State)
    result = run_batch(clips, out, plan, workers=workers, ray=ray is not None,
                       ray_address=ray_address(ray) if ray else None,
                       make_view=lambda names: make_view(names, quiet=state.quiet))
    done = len(result.results) - len(result.failed)
    console.print(summary_table(result.results, stage_names(plan),
                                f"ds4d batch: {done} done, {len(result.failed)} failed — {result.path}"))
    if result.failed:
        raise ClipsFailed(result.failed, result.path)


@app.command()
def status(ctx: typer.Context) -> None:
    """Show every stage of the workspace: done, stale (and why) or missing."""
    from ds4d_cli.tables import status_table

    console.print(status_table(_open_ws(ctx)))


@app.command()
def doctor() -> None:
    """Check torch and its device, gsplat's CUDA kernels, model weights and ffmpeg."""
    from ds4d_cli.doctor import print_report

    print_report()


# --------------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: user errors are one red line and exit 2; bugs exit 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--ray" in args:  # `ds4d batch --ray` alone: a local Ray instance (typer has no optional values)
        from ds4d_cli.batch.cluster import with_bare_ray_as_local

        args = with_bare_ray_as_local(args)
    debug = "--debug" in args
    try:
        code = app(args=args, prog_name="ds4d", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into Exit(130), which it returns instead of raising
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except cli_exceptions.ClickException as exc:  # usage errors: exit 2 with click's message
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        console.print("[red]interrupted[/red] (finished work is kept; run the command again to resume)")
        sys.exit(130)
    except Ds4dError as exc:
        if debug:
            console.print(traceback.format_exc(), markup=False, highlight=False)
        hint = f" [dim]— {_escape(exc.hint)}[/dim]" if exc.hint else ""
        console.print(f"[bold red]error:[/bold red] {_escape(exc.message)}{hint}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 — the last line of defence before the user's terminal
        if debug:
            console.print(traceback.format_exc(), markup=False, highlight=False)
            sys.exit(1)
        first = str(exc).splitlines()[0] if str(exc) else ""
        console.print(
            f"[bold red]internal error:[/bold red] {_escape(type(exc).__name__ + ': ' + first)} "
            "[dim]— rerun with --debug for the traceback and report it[/dim]",
            soft_wrap=True,
        )
        sys.exit(1)
    sys.exit(0)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


if __name__ == "__main__":  # pragma: no cover
    main()
