"""`ds4d preprocess`: a clip -> T object-centred RGBA frames (S x S) plus their timing and crop.

Steps: sample T frames evenly in [start, end); segment them (or keep the alpha of RGBA input);
clean the masks; choose one square box for the whole clip; crop, resize (premultiplied) and write
``frames/NNN.png``, ``meta.json`` and ``contact_sheet.png``. Every user mistake is caught before the
workspace is touched where possible, and a failure inside the stage leaves no manifest.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ds4d_cli.crop import clip_box, crop_intrinsics, crop_region, snap_box
from ds4d_cli.diagnose import Finding, camera_moves, camera_text, check_clip, check_masks
from ds4d_cli.errors import Ds4dError
from ds4d_cli.framestore import SampledClip, load_sampled
from ds4d_cli.fsutil import atomic_path, write_json_atomic
from ds4d_cli.report import info, warn
from ds4d_cli.report import progress as progress_bar
from ds4d_cli.segment import PLATE_SEGMENTERS, SEGMENTERS, clean_alpha, make_segmenter, model_path
from ds4d_cli.video import DEFAULT_FOLDER_FPS, VideoInfo, probe, sample_indices
from ds4d_cli.workspace import StageResult, Workspace, run_stage, sha256_of_path

STAGE = "preprocess"
#: Bump when the outputs for the same options change (segmentation, crop or file layout).
VERSION = 3
#: A frame holds an object when at least this fraction of it (and MIN_OBJECT_PIXELS) is opaque.
MIN_OBJECT_FRACTION = 5e-4
MIN_OBJECT_PIXELS = 16
#: Label written to meta.json when the input's own alpha is used instead of a segmenter.
INPUT_ALPHA = "input-alpha"


@dataclass
class PreprocessOptions:
    """What `ds4d preprocess` accepts; paths as strings so the options are JSON-serialisable."""

    source: str
    frames: int = 32
    size: int = 256
    start: float | None = None
    end: float | None = None
    segmenter: str = "hybrid"
    background: str | None = None  # hybrid/static-bg: clean plate of the empty scene
    margin: float = 0.1
    fps: float | None = None  # frame rate of an image folder (videos carry their own); default 12
    force_masks: bool = False  # hand on masks that fail the checks (with a warning) instead of stopping


def _validate(opts: PreprocessOptions) -> None:
    """Option mistakes, reported before any file is read or written."""
    if opts.frames < 1:
        raise Ds4dError(f"--frames must be at least 1 (got {opts.frames})", hint="e.g. --frames 32")
    if opts.size < 16 or opts.size > 4096:
        raise Ds4dError(f"--size must be between 16 and 4096 pixels (got {opts.size})", hint="e.g. --size 256")
    if not (0.0 <= opts.margin <= 2.0) or not math.isfinite(opts.margin):
        raise Ds4dError(f"--margin must be between 0 and 2 (got {opts.margin})", hint="e.g. --margin 0.1")
    if opts.fps is not None and not (0.0 < opts.fps <= 1000.0):
        raise Ds4dError(f"--fps must be positive (got {opts.fps})", hint="e.g. --fps 24")
    if opts.segmenter not in SEGMENTERS:
        raise Ds4dError(f"unknown segmenter {opts.segmenter!r}", hint=f"choose one of {', '.join(SEGMENTERS)}")
    if opts.background is not None and opts.segmenter not in PLATE_SEGMENTERS:
        raise Ds4dError(
            "--background-plate only applies to --segmenter hybrid or static-bg",
            hint="drop it, or add --segmenter hybrid",
        )
    if opts.background is not None and not Path(opts.background).expanduser().is_file():
        raise Ds4dError(f"background plate not found: {opts.background}", hint="pass an image of the empty scene")


def _normalised(opts: PreprocessOptions) -> PreprocessOptions:
    """Absolute paths, so the manifest does not depend on the working directory."""
    return PreprocessOptions(
        source=str(Path(opts.source).expanduser().absolute()),
        frames=int(opts.frames),
        size=int(opts.size),
        start=None if opts.start is None else float(opts.start),
        end=None if opts.end is None else float(opts.end),
        segmenter=opts.segmenter,
        background=None if opts.background is None else str(Path(opts.background).expanduser().absolute()),
        margin=float(opts.margin),
        fps=None if opts.fps is None else float(opts.fps),
        force_masks=bool(opts.force_masks),
    )


def run(workspace: Workspace | str | os.PathLike[str] | None, opts: PreprocessOptions, force: bool = False) -> StageResult:
    """Create (or reuse) the workspace for ``opts.source`` and run the stage unless cached.

    ``workspace`` is a Workspace, a folder, or None for $DS4D_WORKSPACE / ./ds4d_workspace.
    ``force`` reruns and also lets a different clip replace the workspace's contents.
    """
    _validate(opts)
    opts = _normalised(opts)
    source = Path(opts.source)
    info_ = probe(source, opts.fps or DEFAULT_FOLDER_FPS)  # a missing / unreadable / empty source fails here, before any write
    sample_indices(info_, opts.frames, opts.start, opts.end)  # and so does an empty time window
    root = workspace.root if isinstance(workspace, Workspace) else workspace
    ws = Workspace.create(root, source, force=force)
    inputs: dict[str, Any] = dict(ws.current_inputs(STAGE))
    if opts.background is not None:
        inputs["background"] = sha256_of_path(Path(opts.background))
    return run_stage(
        ws,
        STAGE,
        options=asdict(opts),
        inputs=inputs,
        version=VERSION,
        force=force,
        body=lambda out_dir: _body(out_dir, opts, info_),
    )


# -- the stage body ------------------------------------------------------------------------
def _segment(
    clip: SampledClip, opts: PreprocessOptions, name: str
) -> tuple[list[np.ndarray], list[np.ndarray], list[str], bool]:
    """(raw, cleaned) soft alphas at working resolution from segmenter ``name``, its notes, and
    whether the masks came from a background model (a plate or a temporal median)."""
    if clip.has_alpha:
        info("input has an alpha channel: using it, no segmentation")
        alphas = [f[..., 3].astype(np.float32) / 255.0 for f in clip.work]
        return alphas, alphas, [], False
    plate = opts.background if name in PLATE_SEGMENTERS else None
    segmenter = make_segmenter(name, plate, source_size=clip.info.size)
    with progress_bar(f"Segmenting ({name})", total=len(clip.work), fields=()) as bar:
        raw = [np.nan_to_num(a) for a in segmenter.segment(clip.work, on_frame=lambda: bar.advance(1))]
    background_model = name == "static-bg" or bool(getattr(segmenter, "used_plate", ""))
    return raw, [clean_alpha(a) for a in raw], list(getattr(segmenter, "notes", [])), background_model


def _checked_masks(clip: SampledClip, opts: PreprocessOptions) -> tuple[list[np.ndarray], str, list[str], tuple[bool, float, float]]:
    """Segment, then check the masks before anything is handed on.

    Broken masks (see :func:`ds4d_cli.diagnose.check_masks`), or static-bg on a moving camera,
    stop the stage with the fix, unless ``--force-masks``; static-bg's are first retried by the
    hybrid segmenter (u2netp with the clip's median, or alone on a moving camera) when u2netp is
    here, which the notes (printed as warnings) say.
    """
    name = INPUT_ALPHA if clip.has_alpha else opts.segmenter
    raw, alphas, notes, from_background = _segment(clip, opts, opts.segmenter)
    camera = camera_moves(clip.work, alphas) if not clip.has_alpha else (False, 0.0, 0.0)
    if name == INPUT_ALPHA:
        return alphas, name, notes, camera
    problems = check_masks(raw, alphas, name, from_background)
    if name == "static-bg" and camera[0]:
        problems.insert(0, Finding(
            "moving-camera",
            f"the camera moves ({camera_text(camera[1], camera[2])}) but static-bg needs a fixed camera",
            "use --segmenter hybrid or u2netp, or --force-masks to keep these masks", [], True))
    fatal = [p for p in problems if p.fatal]
    if fatal and opts.force_masks:
        for p in fatal:
            warn(f"{p.message} (kept: --force-masks)")
        return alphas, name, notes, camera
    # With a plate on a fixed camera, hybrid's masks are static-bg's: no point in falling back.
    if fatal and name == "static-bg" and (opts.background is None or camera[0]) and model_path("u2netp") is not None:
        notes = notes + [f"{fatal[0].message}: falling back to --segmenter hybrid (u2netp with the clip's background)"]
        raw, alphas, more, from_background = _segment(clip, opts, "hybrid")
        name, notes = "hybrid", notes + more
        fatal = [p for p in check_masks(raw, alphas, name, from_background) if p.fatal]
    if fatal:
        raise Ds4dError(fatal[0].message, hint=fatal[0].hint)
    return alphas, name, notes, camera


def _no_object_hint(segmenter_name: str, opts: PreprocessOptions) -> str:
    if segmenter_name == INPUT_ALPHA:
        return "the input's alpha channel is transparent everywhere; pass the original frames instead"
    if segmenter_name == "static-bg" and opts.background is None:
        return ("check that the clip shows the object; a temporal median misses an object that never moves: "
                "pass --background-plate EMPTY.png or use --segmenter u2netp")
    if segmenter_name == "static-bg":
        return "check that the clip shows the object and that the plate is the same camera's empty scene"
    return ("check that the clip shows the object; for a fixed camera try --segmenter static-bg "
            "(with --background-plate EMPTY.png), or a stronger rembg model (u2net, isnet-general-use)")


def _has_object(alpha: np.ndarray) -> bool:
    opaque = int((alpha >= 0.5).sum())
    return opaque >= max(MIN_OBJECT_PIXELS, MIN_OBJECT_FRACTION * alpha.size)


def _body(out_dir: Path, opts: PreprocessOptions, source_info: VideoInfo) -> dict[str, Any]:
    with load_sampled(opts.source, opts.frames, opts.start, opts.end, info=source_info) as clip:
        return _process(out_dir, opts, clip)


def _process(out_dir: Path, opts: PreprocessOptions, clip: SampledClip) -> dict[str, Any]:
    if clip.info.looks_truncated:
        warn(
            f"{clip.info.path.name} looks truncated: its header says {clip.info.container_duration_s:g}s but only "
            f"{clip.info.frame_count} frames ({clip.info.duration_s:g}s) decode; using those"
        )
    if len(clip.work) < opts.frames:
        n = len(clip.work)
        info(f"the clip has only {n} frame{'s' if n != 1 else ''} in the chosen window: using all of them")
    alphas, segmenter_name, notes, camera = _checked_masks(clip, opts)

    present = [_has_object(a) for a in alphas]
    if not any(present):
        raise Ds4dError(
            f"no object found in {clip.info.path.name}: every frame looks like background ({segmenter_name})",
            hint=_no_object_hint(segmenter_name, opts),
        )
    for note in notes:
        warn(note)
    alphas = [a if p else np.zeros_like(a) for a, p in zip(alphas, present)]
    report = check_clip(alphas, clip.times_s, clip.info.fps, camera)
    if report.camera_moving and segmenter_name != "static-bg":
        warn(f"the camera moves ({camera_text(report.background_changed, report.view_drift)}): ds4d assumes a "
             "fixed camera and will take the camera's motion for the object's — film from a tripod or rest the phone "
             "on something")
    for finding in report.findings:
        warn(finding.line())

    scale = clip.scale
    box = snap_box(clip_box([a for a, p in zip(alphas, present) if p], opts.margin, scale=scale), opts.size)
    frames_dir = out_dir / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    crops = []
    with progress_bar("Cropping", total=len(alphas)) as bar:
        for t, alpha in enumerate(alphas):
            rgba = crop_region(clip.region(t, box), alpha, box, scale, opts.size)
            _save_png(frames_dir / f"{t:03d}.png", rgba)
            crops.append(rgba)
            bar.advance(1)
    overview = (clip.work[0], [v * scale for v in box])
    _save_png(out_dir / "contact_sheet.png", contact_sheet(crops, clip.indices, overview=overview))

    fps = clip.info.fps
    duration = clip.info.duration_s
    times_s = clip.times_s
    w, h = clip.info.size
    fractions = [round(float((a >= 0.5).mean()), 5) for a in alphas]
    meta = {
        "source": str(clip.info.path),
        "source_kind": clip.info.kind,
        "source_fps": fps,
        "duration_s": duration,
        "source_frame_count": clip.info.frame_count,
        "frame_indices": clip.indices,
        "frame_times_s": times_s,
        "frame_times": [t / duration for t in times_s],
        "original_size": [w, h],
        "working_size": [clip.work[0].shape[1], clip.work[0].shape[0]],
        "crop_box": list(box),
        "size": opts.size,
        "margin": opts.margin,
        "segmenter": segmenter_name,
        "background_plate": opts.background,
        "object_fraction": fractions,
        "crop_intrinsics": crop_intrinsics(box, opts.size),
        "notes": notes,
        "camera_moving": report.camera_moving,
        "background_change": round(report.background_changed, 4),
        "view_drift": round(report.view_drift, 4),
        "findings": [{"code": f.code, "message": f.line(), "frames": f.frames} for f in report.findings],
        "suggested_window": list(report.window) if report.window else None,
    }
    write_json_atomic(out_dir / "meta.json", meta)
    return {
        "frames": len(crops),
        "size": opts.size,
        "segmenter": segmenter_name,
        "crop_box": list(box),
        "object_fraction": round(float(np.mean(fractions)), 4),
    }


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def contact_sheet(
    frames: Sequence[np.ndarray],
    labels: Sequence[int],
    tile: int = 128,
    columns: int = 8,
    overview: tuple[np.ndarray, Sequence[int]] | None = None,
) -> np.ndarray:
    """RGBA frames over a checkerboard (so transparency shows), in a labelled grid.

    ``overview`` = (a source frame, the crop box): shown first, with the box drawn, so a user
    sees at a glance what was cut out of the original footage.
    """
    from PIL import Image, ImageDraw

    n = len(frames) + (overview is not None)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile, rows * tile), (255, 255, 255))
    yy, xx = np.mgrid[0:tile, 0:tile]
    checker = np.where(((yy // 8) + (xx // 8)) % 2 == 0, 200, 235).astype(np.float32)[..., None]
    draw = ImageDraw.Draw(sheet)
    k = 0
    if overview is not None:
        source, (x0, y0, x1, y1) = overview
        h, w = source.shape[:2]
        scale = tile / max(w, h)
        thumb = Image.fromarray(np.ascontiguousarray(source[..., :3])).resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS
        )
        ox, oy = (tile - thumb.width) // 2, (tile - thumb.height) // 2
        sheet.paste(thumb, (ox, oy))
        draw.rectangle(
            [ox + x0 * scale, oy + y0 * scale, ox + x1 * scale - 1, oy + y1 * scale - 1], outline=(230, 30, 30), width=2
        )
        draw.text((3, 2), "crop", fill=(230, 30, 30))
        k = 1
    for frame, label in zip(frames, labels):
        im = np.asarray(Image.fromarray(frame).resize((tile, tile), Image.Resampling.LANCZOS), dtype=np.float32)
        a = im[..., 3:4] / 255.0
        rgb = im[..., :3] * a + checker * (1.0 - a)
        x, y = (k % cols) * tile, (k // cols) * tile
        sheet.paste(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)), (x, y))
        draw.text((x + 3, y + 2), f"#{label}", fill=(20, 20, 20))
        k += 1
    return np.asarray(sheet)
