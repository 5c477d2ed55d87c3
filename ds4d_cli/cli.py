"""The `ds4d` command line: parses options, calls a stage function, prints the result.

Nothing here computes anything: every command builds a stage's options dataclass and calls
``ds4d_cli.stages.<stage>.run(workspace, options)``. Heavy modules (torch, rembg, diffusers)
are imported inside the commands so that ``ds4d --help`` stays instant.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from typer._click import exceptions as cli_exceptions  # typer vendors click

from ds4d_cli import __version__
from ds4d_cli.console import console, set_quiet
from ds4d_cli.errors import Ds4dError

app = typer.Typer(
    name="ds4d",
    help=(
        "Turn a short video of one moving object into a 4D asset (dynamic 3D Gaussians, DS4D).\n\n"
        "Typical use: `ds4d preprocess clip.mp4`, `ds4d generate`, `ds4d fit --steps 5000`, "
        "`ds4d export --format ply` — or all at once: `ds4d run clip.mp4`. "
        "Every stage caches its results in the workspace and is skipped when nothing changed."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


@dataclass
class _State:
    workspace: Optional[Path]
    debug: bool


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
    set_quiet(quiet)
    ctx.obj = _State(workspace=workspace, debug=debug)


def _ws_path(ctx: typer.Context) -> Optional[Path]:
    return ctx.obj.workspace if ctx.obj else None


def _open_ws(ctx: typer.Context) -> Any:
    from ds4d_cli.workspace import Workspace

    return Workspace.open(_ws_path(ctx))


def _report(result: Any) -> None:
    """One line per stage: cached or done, and where its artifacts are."""
    state = "[green]cached[/green]" if result.cached else "[green]done[/green]"
    figures = {k: v for k, v in (result.summary or {}).items() if isinstance(v, (int, float, str)) and len(str(v)) < 60}
    shown = "  ".join(f"{k}={_fmt(v)}" for k, v in list(figures.items())[:6])
    console.print(f"{result.name}: {state}  {shown}  [dim]{result.dir}[/dim]", soft_wrap=True)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _split_list(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


# --------------------------------------------------------------------------------------------
class Segmenter(str, Enum):
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


_FORCE = typer.Option(False, "--force", help="Run again even if the cached result is still valid.")


def _preprocess_options(
    source: Path,
    frames: int,
    size: int,
    start: Optional[float],
    end: Optional[float],
    segmenter: Segmenter,
    background_plate: Optional[Path],
    margin: float,
    fps: Optional[float] = None,
) -> Any:
    from ds4d_cli.stages.preprocess import PreprocessOptions

    return PreprocessOptions(
        source=str(source),
        frames=frames,
        size=size,
        start=start,
        end=end,
        segmenter=segmenter.value,
        background=str(background_plate) if background_plate else None,
        margin=margin,
        fps=fps,
    )


@app.command()
def preprocess(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="A video (mp4, mov, webm, gif...), a folder of images, or RGBA frames."),
    frames: int = typer.Option(32, "--frames", "-n", help="Frames to sample evenly (fewer if the clip is shorter)."),
    size: int = typer.Option(256, "--size", help="Side of the square object-centred output frames, in pixels."),
    start: Optional[float] = typer.Option(None, "--start", help="Start time in seconds."),
    end: Optional[float] = typer.Option(None, "--end", help="End time in seconds."),
    segmenter: Segmenter = typer.Option(
        Segmenter.u2netp, "--segmenter", help="rembg model (u2netp works offline) or static-bg for a fixed camera."
    ),
    background_plate: Optional[Path] = typer.Option(
        None, "--background-plate", help="static-bg only: an image of the empty scene (else a temporal median)."
    ),
    margin: float = typer.Option(0.1, "--margin", help="Extra border around the object, as a fraction of its size."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate of an image folder (videos carry their own; default 12)."),
    force: bool = typer.Option(False, "--force", help="Rerun; also allows replacing another clip in the workspace."),
) -> None:
    """Segment the object in every frame and crop one object-centred square for the whole clip."""
    from ds4d_cli.stages import preprocess as stage

    opts = _preprocess_options(source, frames, size, start, end, segmenter, background_plate, margin, fps)
    _report(stage.run(_ws_path(ctx), opts, force=force))


def _generate_options(
    prior: Prior,
    prior_dir: Optional[Path],
    model: Optional[str],
    variant: str,
    views: Optional[str],
    steps: Optional[int],
    guidance: Optional[float],
    seed: int,
    device: Device,
    anchor: bool,
    input_camera: Optional[Path] = None,
) -> Any:
    from ds4d_cli.stages.generate import GenerateOptions

    if prior is Prior.import_ and prior_dir is None:
        raise Ds4dError("--prior import needs a folder", hint="write it after the prior: `--prior import DIR`")
    if prior_dir is not None and prior is Prior.auto:
        prior = Prior.import_
    return GenerateOptions(
        prior=prior.value,
        import_dir=str(prior_dir.absolute()) if prior_dir else None,
        model=model,
        variant=variant,
        views=_split_list(views),
        steps=steps,
        guidance=guidance,
        seed=seed,
        device=device.value,
        anchor=anchor,
        input_camera=str(input_camera.absolute()) if input_camera else None,
    )


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


@app.command()
def generate(
    ctx: typer.Context,
    prior_dir: Optional[Path] = _PRIOR_DIR,
    prior: Prior = _PRIOR,
    model: Optional[str] = typer.Option(None, "--model", help="zero123pp: hub id or local folder of the weights."),
    variant: str = typer.Option("v1.1", "--variant", help="zero123pp: v1.1 (elevations +30/-20) or v1.2 (+20/-10)."),
    views: Optional[str] = _VIEWS,
    steps: Optional[int] = typer.Option(None, "--steps", help="zero123pp: denoising steps (default 75 / 28 on v1.2)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="zero123pp: classifier-free guidance scale."),
    seed: int = typer.Option(0, "--seed", help="Noise seed, shared by all frames so views do not flicker."),
    device: Device = _DEVICE,
    anchor: bool = typer.Option(True, "--anchor/--no-anchor", help="zero123pp: condition every frame on frame 0's views."),
    input_camera: Optional[Path] = typer.Option(
        None, "--input-camera", help="none: place the input camera from DIR/cameras.json (mapped through the crop, "
        "as --prior import DIR does) so that `ds4d eval --gt DIR` can score a single-view fit."),
    force: bool = _FORCE,
) -> None:
    """Make V views of every frame at known cameras: the multi-view prior that `fit` learns from."""
    ws = _open_ws(ctx)  # first: a missing workspace is reported before heavy imports
    from ds4d_cli.stages import generate as stage

    opts = _generate_options(prior, prior_dir, model, variant, views, steps, guidance, seed, device, anchor,
                             input_camera)
    _report(stage.run(ws, opts, force=force))


def _fit_options(
    steps: Optional[int],
    device: Device,
    resolution: Optional[int],
    no_dsfd: bool,
    no_tssf: bool,
    fusion: str,
    encoder: Optional[Path],
    checkpoint_every: int,
    seed: int,
    restart: bool,
    **tuning: Any,
) -> Any:
    from ds4d_cli.stages.fit import FitOptions

    return FitOptions(
        steps=steps,
        device=device.value,
        resolution=resolution,
        no_dsfd=no_dsfd,
        no_tssf=no_tssf,
        fusion=fusion,
        encoder=str(encoder) if encoder else None,
        checkpoint_every=checkpoint_every,
        seed=seed,
        restart=restart,
        **tuning,
    )


_STEPS = typer.Option(None, "--steps", help="Optimisation steps (default: a few minutes' worth on CPU).")
_RES = typer.Option(None, "--resolution", help="Training resolution in pixels (default 128 on CPU, 256 on CUDA).")
_NO_DSFD = typer.Option(False, "--no-dsfd", help="Ablation: feed the frame feature straight to the head.")
_NO_TSSF = typer.Option(False, "--no-tssf", help="Ablation: plain mean over views instead of similarity fusion.")
_FUSION = typer.Option("da", "--fusion", help="TSSF variant: da (distance-aware, default), ga (learned), mean.")
_ENCODER = typer.Option(None, "--encoder", help="Local folder of a DINOv2 model; default: a small jointly-trained CNN.")
_CKPT = typer.Option(100, "--checkpoint-every", help="Save a resumable checkpoint every N steps.")


class Backend(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    dense = "dense"


@app.command()
def fit(
    ctx: typer.Context,
    steps: Optional[int] = _STEPS,
    device: Device = _DEVICE,
    resolution: Optional[int] = _RES,
    no_dsfd: bool = _NO_DSFD,
    no_tssf: bool = _NO_TSSF,
    fusion: str = _FUSION,
    encoder: Optional[Path] = _ENCODER,
    checkpoint_every: int = _CKPT,
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    restart: bool = typer.Option(False, "--restart", help="Ignore checkpoints and start the fit over."),
    batch_frames: Optional[int] = typer.Option(None, "--batch-frames", help="Frames per step (default 2 on CPU, 4 on CUDA)."),
    lr: float = typer.Option(1.0, "--lr", help="Multiplier on every learning rate."),
    num_gaussians: Optional[int] = typer.Option(None, "--num-gaussians", help="Initial Gaussians (default 2000 CPU, 20000 CUDA)."),
    max_gaussians: Optional[int] = typer.Option(None, "--max-gaussians", help="Densification cap (default 5000 CPU, 200000 CUDA)."),
    input_weight: float = typer.Option(1.0, "--input-weight", help="Loss weight of the input (reference) view."),
    view_weight: float = typer.Option(0.5, "--view-weight", help="Loss weight of each generated view (less reliable)."),
    ssim_weight: float = typer.Option(0.2, "--ssim-weight", help="Share of D-SSIM in the image loss."),
    mask_weight: float = typer.Option(1.0, "--mask-weight", help="Weight of the silhouette (alpha) loss."),
    smooth_weight: float = typer.Option(0.1, "--smooth-weight", help="Temporal smoothness of the deformation."),
    densify: bool = typer.Option(True, "--densify/--no-densify", help="Split, clone and prune Gaussians (gsplat strategy)."),
    densify_every: int = typer.Option(100, "--densify-every", help="Steps between densification rounds."),
    opacity_reset_every: Optional[int] = typer.Option(None, "--opacity-reset-every", help="0 = never (default on CPU; 3000 on CUDA)."),
    preview_every: int = typer.Option(250, "--preview-every", help="Write preview images every N steps."),
    log_every: int = typer.Option(10, "--log-every", help="Append to fit/log.jsonl every N steps."),
    backend: Backend = typer.Option(Backend.auto, "--backend", help="Rasterizer: auto, cpu, cuda or dense (slow reference)."),
    single_view_prior: bool = typer.Option(
        True, "--single-view-prior/--no-single-view-prior",
        help="With no generated views (--prior none): start from the inflated silhouette and keep the fit to it "
        "from unseen cameras. --no-single-view-prior: the extruded silhouette, input view only."),
    force: bool = _FORCE,
) -> None:
    """Fit dynamic 3D Gaussians (DSFD + TSSF deformation); resumes from its last checkpoint."""
    ws = _open_ws(ctx)  # first: a missing workspace is reported before heavy imports
    from ds4d_cli.stages import fit as stage

    opts = _fit_options(
        steps, device, resolution, no_dsfd, no_tssf, fusion, encoder, checkpoint_every, seed, restart,
        batch_frames=batch_frames, lr=lr, num_gaussians=num_gaussians, max_gaussians=max_gaussians,
        input_weight=input_weight, view_weight=view_weight, ssim_weight=ssim_weight, mask_weight=mask_weight,
        smooth_weight=smooth_weight, densify=densify, densify_every=densify_every,
        opacity_reset_every=opacity_reset_every, preview_every=preview_every, log_every=log_every,
        backend=backend.value, single_view_prior=single_view_prior,
    )
    _report(stage.run(ws, opts, force=force or restart))


def _export_options(
    fmt: ExportFormat, frames: Optional[str], orbits: float, elevation: float, fps: Optional[float], size: int, background: str
) -> Any:
    from ds4d_cli.stages.export import ExportOptions

    return ExportOptions(
        format=fmt.value,
        frames=frames,
        orbits=orbits,
        elevation=elevation,
        fps=fps,
        size=size,
        background=background,
    )


@app.command()
def export(
    ctx: typer.Context,
    fmt: ExportFormat = typer.Option(ExportFormat.ply, "--format", "-f", help="ply: one 3DGS file per frame; "
                                     "mp4: turntable video; grid: input beside front/side/back renders."),
    frames: Optional[str] = typer.Option(None, "--frames", help="Subset of frames, e.g. 0,5,10 or 0-11 (default all)."),
    orbits: float = typer.Option(1.0, "--orbits", help="mp4: camera orbits over the clip."),
    elevation: float = typer.Option(15.0, "--elevation", help="mp4: camera elevation in degrees."),
    fps: Optional[float] = typer.Option(None, "--fps", help="mp4/grid: frame rate (default: the clip's, at least 12)."),
    size: int = typer.Option(256, "--size", help="mp4/grid: render size in pixels."),
    background: str = typer.Option("white", "--background", help="mp4/grid: white, black or a #rrggbb colour."),
    force: bool = _FORCE,
) -> None:
    """Write the fitted 4D asset: per-frame PLYs for splat viewers, a turntable MP4 or a comparison grid."""
    ws = _open_ws(ctx)  # first: a missing workspace is reported before heavy imports
    from ds4d_cli.stages import export as stage

    opts = _export_options(fmt, frames, orbits, elevation, fps, size, background)
    _report(stage.run(ws, opts, force=force))


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
        stage.print_table(results)


@app.command()
def run(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="The clip (video, image folder or RGBA frames)."),
    prior_dir: Optional[Path] = _PRIOR_DIR,
    prior: Prior = _PRIOR,
    views: Optional[str] = _VIEWS,
    frames: int = typer.Option(32, "--frames", "-n", help="Frames to sample from the clip."),
    size: int = typer.Option(256, "--size", help="Side of the preprocessed frames."),
    segmenter: Segmenter = typer.Option(Segmenter.u2netp, "--segmenter", help="Segmentation model."),
    background_plate: Optional[Path] = typer.Option(None, "--background-plate", help="static-bg: empty-scene image."),
    start: Optional[float] = typer.Option(None, "--start", help="Start time in seconds (a usable window of a long clip)."),
    end: Optional[float] = typer.Option(None, "--end", help="End time in seconds."),
    steps: Optional[int] = _STEPS,
    device: Device = _DEVICE,
    resolution: Optional[int] = _RES,
    no_dsfd: bool = _NO_DSFD,
    no_tssf: bool = _NO_TSSF,
    formats: str = typer.Option("ply,mp4", "--formats", help="Exports to write, comma-separated (ply, mp4, grid)."),
    force: bool = _FORCE,
) -> None:
    """Run preprocess, generate, fit and export in order; each is skipped when its cache is valid."""
    from ds4d_cli.stages import export as export_stage
    from ds4d_cli.stages import fit as fit_stage
    from ds4d_cli.stages import generate as generate_stage
    from ds4d_cli.stages import preprocess as preprocess_stage
    from ds4d_cli.workspace import Workspace

    formats_list = _split_list(formats) or []
    bad = [f for f in formats_list if f not in {e.value for e in ExportFormat}]
    if bad:
        raise Ds4dError(f"unknown export format {bad[0]!r}", hint="use --formats with ply, mp4 and/or grid")
    pre = _preprocess_options(source, frames, size, start, end, segmenter, background_plate, 0.1)
    _report(preprocess_stage.run(_ws_path(ctx), pre, force=force))
    ws = Workspace.open(_ws_path(ctx))
    gen = _generate_options(prior, prior_dir, None, "v1.1", views, None, None, 0, device, True)
    _report(generate_stage.run(ws, gen, force=force))
    fit_opts = _fit_options(steps, device, resolution, no_dsfd, no_tssf, "da", None, 100, 0, False)
    _report(fit_stage.run(ws, fit_opts, force=force))
    outputs = []
    for fmt in formats_list:
        result = export_stage.run(ws, _export_options(ExportFormat(fmt), None, 1.0, 15.0, None, 256, "white"), force=force)
        _report(result)
        outputs.append(result)
    console.print("[bold]outputs:[/bold]")
    for result in outputs:
        for path in result.summary.get("outputs", [str(result.dir)]):
            console.print(f"  {path}", soft_wrap=True, markup=False)


@app.command()
def status(ctx: typer.Context) -> None:
    """Show every stage of the workspace: done, stale (and why) or missing."""
    from rich.table import Table

    from ds4d_cli.workspace import STAGES

    ws = _open_ws(ctx)
    record = ws.source_record() or {}
    table = Table(title=f"workspace {ws.root}", caption=f"source: {record.get('source', '?')}")
    for column in ("stage", "state", "reason", "options", "finished"):
        table.add_column(column)
    colours = {"done": "green", "stale": "yellow", "missing": "red"}
    for stage in STAGES:
        st = ws.status(stage)
        manifest = st.manifest or {}
        options = ", ".join(f"{k}={v}" for k, v in (manifest.get("options") or {}).items() if v not in (None, False))
        table.add_row(
            stage,
            f"[{colours[st.state]}]{st.state}[/{colours[st.state]}]",
            st.reason,
            options[:80],
            manifest.get("created", ""),
        )
    console.print(table)


@app.command()
def doctor() -> None:
    """Check torch and its device, gsplat's CUDA kernels, model weights and ffmpeg."""
    from ds4d_cli.doctor import print_report

    print_report()


# --------------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: user errors are one red line and exit 2; bugs exit 1."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="ds4d", standalone_mode=False)
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
