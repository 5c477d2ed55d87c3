"""``ds4d export``: per-frame PLYs, a turntable MP4, a comparison grid, the static viewer page
(html) or an animated mesh (glb, obj) from the fitted model.

Each format is its own cached sub-stage (``export/ply``, ``export/mp4``, ``export/html`` ...) whose
manifest holds only the options that format uses, so re-rendering the video at another size
does not invalidate the PLYs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ds4d_cli.errors import Ds4dError
from ds4d_cli.fsutil import atomic_path, read_json, write_json_atomic
from ds4d_cli.report import progress as progress_bar
from ds4d_cli.workspace import StageResult, Workspace, run_stage

FORMATS = ("ply", "mp4", "grid", "html", "glb", "obj")
VERSION = 2
#: Frames shown in grid.png when no --frames subset is given (evenly spaced over the clip).
GRID_PNG_ROWS = 6
#: Frame rate used when the clip's own rate is unknown, and the slowest default: a clip sampled
#: sparsely (8 frames of a 2 s clip = 4 fps) would otherwise give a long, jerky turntable.
DEFAULT_FPS = 12.0


@dataclass
class ExportOptions:
    format: str = "ply"  # ply | mp4 | grid
    frames: Optional[str] = None  # "0,5,10", "0-11", "0-5,20" or None for all
    orbits: float = 1.0  # mp4: camera turns over the video
    elevation: float = 15.0  # mp4: camera elevation (degrees)
    fps: Optional[float] = None  # mp4/grid: None = the clip's own frame rate
    size: int = 256  # mp4/grid: render side in pixels
    background: str = "white"  # mp4/grid: white | black | gray | #rrggbb
    min_opacity: float = 1.0 / 255.0  # ply/html/glb/obj: Gaussians fainter than this are dropped
    mesh_resolution: int = 96  # glb/obj: density grid cells along the longest side
    mesh_frame: Optional[int] = None  # glb/obj: frame whose surface is extracted (None = middle)
    iso: float = 0.5  # glb/obj: density level of the surface


def parse_frames(spec: Optional[str], num_frames: int) -> list[int]:
    """``None`` -> all frames; ``"0,5,10"``, ``"0-11"`` or a mix -> sorted unique indices."""
    if spec is None or str(spec).strip() in ("", "all"):
        return list(range(num_frames))
    chosen: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                chosen.update(range(lo, hi + 1))
            else:
                chosen.add(int(part))
        except ValueError:
            raise Ds4dError(f"cannot read frame selection {spec!r}", hint="use e.g. --frames 0,5,10 or --frames 0-11") from None
    bad = sorted(i for i in chosen if not 0 <= i < num_frames)
    if bad:
        raise Ds4dError(
            f"frame {bad[0]} is out of range: the fit has {num_frames} frames",
            hint=f"choose frames between 0 and {num_frames - 1}",
        )
    if not chosen:
        raise Ds4dError(f"frame selection {spec!r} is empty", hint="use e.g. --frames 0,5,10 or --frames 0-11")
    return sorted(chosen)


def _cameras_json(ws: Workspace) -> dict[str, Any] | None:
    path = ws.stage_dir("generate") / "cameras.json"
    return read_json(path) if path.is_file() else None


def _clip_fps(ws: Workspace, num_frames: int) -> float:
    """The fitted frames' real-time rate (frames / clip duration), at least :data:`DEFAULT_FPS`."""
    path = ws.stage_dir("preprocess") / "meta.json"
    try:
        meta = read_json(path)
        duration = float(meta["duration_s"])
        if duration > 0 and num_frames > 0:
            return max(DEFAULT_FPS, min(60.0, num_frames / duration))
    except (OSError, KeyError, TypeError, ValueError):
        pass
    return DEFAULT_FPS


def _clip_duration(ws: Workspace) -> Optional[float]:
    """The clip's duration in seconds from preprocess/meta.json, or None when unknown."""
    try:
        duration = float(read_json(ws.stage_dir("preprocess") / "meta.json")["duration_s"])
        return duration if duration > 0 else None
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _check(opts: ExportOptions) -> None:
    if opts.format not in FORMATS:
        raise Ds4dError(f"unknown export format {opts.format!r}", hint=f"use --format {', '.join(FORMATS)}")
    if opts.format in ("glb", "obj"):
        if not 16 <= int(opts.mesh_resolution) <= 512:
            raise Ds4dError(f"--mesh-resolution {opts.mesh_resolution} is out of range", hint="use 16 to 512 (96 is the default)")
        if not 0 < float(opts.iso) < 100:
            raise Ds4dError(f"--iso {opts.iso} is out of range", hint="use a density level such as 0.5")
    if opts.format != "ply":
        if not 16 <= int(opts.size) <= 4096:
            raise Ds4dError(f"--size {opts.size} is out of range", hint="use a size between 16 and 4096 pixels")
        if opts.fps is not None and not 0 < float(opts.fps) <= 240:
            raise Ds4dError(f"--fps {opts.fps} is out of range", hint="use a frame rate between 1 and 240")
        from ds4d_cli.export.views import parse_background

        parse_background(opts.background)


def _stage_options(opts: ExportOptions) -> dict[str, Any]:
    """Only the options this format depends on (what its cache is keyed on)."""
    base: dict[str, Any] = {"frames": opts.frames}
    if opts.format == "ply":
        return {**base, "min_opacity": opts.min_opacity}
    if opts.format == "html":
        from ds4d_cli.export.html import PAGE_VERSION
        from ds4d_cli.viewer.assets import web_digest

        return {**base, "min_opacity": opts.min_opacity, "background": opts.background, "viewer": web_digest(),
                "page_version": PAGE_VERSION}
    if opts.format in ("glb", "obj"):
        from ds4d_cli.export.mesh import MESH_VERSION

        return {**base, "min_opacity": opts.min_opacity, "mesh_resolution": int(opts.mesh_resolution),
                "mesh_frame": opts.mesh_frame, "iso": float(opts.iso), "mesh_version": MESH_VERSION}
    common = {**base, "fps": opts.fps, "size": int(opts.size), "background": opts.background}
    if opts.format == "mp4":
        return {**common, "orbits": opts.orbits, "elevation": opts.elevation}
    return common


def run(ws: Workspace, opts: ExportOptions, force: bool = False, model: Any = None) -> StageResult:
    """Write one export format into ``export/<format>/`` (cached; ``force`` rewrites it).

    ``model`` lets tests pass a model directly; normally it is loaded from the fit stage.
    """
    _check(opts)
    stage = f"export/{opts.format}"
    inputs = {"fit": ws.upstream_digest("fit")}
    if opts.format == "grid":
        inputs["preprocess"] = ws.upstream_digest("preprocess")
    if opts.format in ("html", "glb", "obj"):  # the page shows the input clip; all use its duration
        inputs["preprocess"] = ws.manifest_digest("preprocess")  # None when absent: done without it
        inputs["generate"] = ws.manifest_digest("generate")  # the input camera

    def body(out_dir: Path) -> dict[str, Any]:
        from ds4d_cli.fitted import load_fitted

        m = model if model is not None else load_fitted(ws)
        frames = parse_frames(opts.frames, int(m.num_frames))
        if opts.format == "ply":
            return _export_ply(ws, m, frames, opts, out_dir)
        if opts.format == "mp4":
            return _export_mp4(ws, m, frames, opts, out_dir)
        if opts.format == "html":
            return _export_html(ws, m, frames, opts, out_dir)
        if opts.format in ("glb", "obj"):
            return _export_mesh(ws, m, frames, opts, out_dir)
        return _export_grid(ws, m, frames, opts, out_dir)

    return run_stage(ws, stage, options=_stage_options(opts), inputs=inputs, version=VERSION, body=body, force=force)


def _frame_time(model: Any, i: int) -> float | None:
    times = getattr(model, "frame_times", None)
    if times is None:
        return None
    return float(np.asarray(times, dtype=np.float64).reshape(-1)[i])


def _export_ply(ws: Workspace, model: Any, frames: list[int], opts: ExportOptions, out_dir: Path) -> dict[str, Any]:
    from ds4d_cli.export.axes import VIEWER_FROM_WORLD
    from ds4d_cli.export.ply import ply_name, write_frame_ply

    records = []
    with progress_bar("Exporting PLY", total=len(frames), fields=("gaussians", "dropped")) as bar:
        for i in frames:
            counts = write_frame_ply(out_dir / ply_name(i), model.gaussians_at(i), opts.min_opacity)
            records.append({"file": ply_name(i), "frame": i, "time": _frame_time(model, i), **counts})
            bar.advance(1, **counts)
    write_json_atomic(out_dir / "sequence.json", {
        "layout": "3DGS PLY (opacity logit, log scales, quaternion wxyz, SH f_dc/f_rest)",
        "up_axis": "-Y",
        "viewer_from_world": VIEWER_FROM_WORLD.tolist(),
        "note": "ds4d's world is Z up; positions, rotations and SH were rotated +90 deg about X",
        "frames": records,
    })
    gaussians = [r["gaussians"] for r in records]
    return {
        "outputs": [str(out_dir)],
        "files": [r["file"] for r in records],
        "frames": len(records),
        "gaussians_min": min(gaussians),
        "gaussians_max": max(gaussians),
        "dropped_total": sum(r["dropped"] for r in records),
    }


def _export_mp4(ws: Workspace, model: Any, frames: list[int], opts: ExportOptions, out_dir: Path) -> dict[str, Any]:
    from ds4d_cli.export.mp4 import write_mp4
    from ds4d_cli.export.turntable import schedule
    from ds4d_cli.export.views import Framing, orbit_views, parse_background, render_rgb, to_uint8

    size = int(opts.size) + int(opts.size) % 2  # H.264 in yuv420p needs even sides
    bg = parse_background(opts.background)
    framing = Framing.from_cameras_json(_cameras_json(ws))
    fps = float(opts.fps) if opts.fps else _clip_fps(ws, int(model.num_frames))
    plan = schedule(frames, opts.orbits)
    path = out_dir / "turntable.mp4"

    def images():
        with progress_bar("Rendering turntable", total=len(plan)) as bar:
            for item in plan:
                viewmats, Ks = orbit_views([item.azimuth_deg], opts.elevation, size, framing)
                rgb = render_rgb(model, item.frame_index, viewmats, Ks, size, size, bg)
                yield to_uint8(rgb)[0]
                bar.advance(1)

    count = write_mp4(path, images(), fps)
    return {"outputs": [str(path)], "video_frames": count, "clip_frames": len(frames), "fps": fps,
            "size": size, "orbits": opts.orbits, "seconds": round(count / fps, 3)}


def _export_grid(ws: Workspace, model: Any, frames: list[int], opts: ExportOptions, out_dir: Path) -> dict[str, Any]:
    from PIL import Image

    from ds4d_cli.export.grid import composite_rgba, grid_cameras, grid_row, label_strip
    from ds4d_cli.export.mp4 import write_mp4
    from ds4d_cli.export.views import Framing, parse_background, render_rgb, to_uint8

    size = int(opts.size) + int(opts.size) % 2
    bg = parse_background(opts.background)
    cameras = _cameras_json(ws)
    viewmats, Ks = grid_cameras(size, cameras, Framing.from_cameras_json(cameras))
    frame_dir = ws.stage_dir("preprocess") / "frames"
    fps = float(opts.fps) if opts.fps else _clip_fps(ws, int(model.num_frames))
    if opts.frames is None and len(frames) > GRID_PNG_ROWS:
        sheet_frames = [frames[round(k * (len(frames) - 1) / (GRID_PNG_ROWS - 1))] for k in range(GRID_PNG_ROWS)]
    else:
        sheet_frames = list(frames)
    rows: dict[int, np.ndarray] = {}

    def images():
        with progress_bar("Rendering grid", total=len(frames)) as bar:
            for i in frames:
                src = frame_dir / f"{i:03d}.png"
                inp = composite_rgba(np.asarray(Image.open(src).convert("RGBA")), bg, size) if src.is_file() else None
                row = grid_row(inp, to_uint8(render_rgb(model, i, viewmats, Ks, size, size, bg)))
                if i in sheet_frames:
                    rows[i] = row
                yield row
                bar.advance(1)

    mp4_path = out_dir / "grid.mp4"
    write_mp4(mp4_path, images(), fps)
    sheet = np.concatenate([label_strip(size)] + [rows[i] for i in sheet_frames], axis=0)
    png_path = out_dir / "grid.png"
    with atomic_path(png_path) as tmp:
        Image.fromarray(sheet).save(tmp)
    return {"outputs": [str(png_path), str(mp4_path)], "frames": len(frames), "sheet_frames": sheet_frames,
            "size": size, "fps": fps}


def _export_html(ws: Workspace, model: Any, frames: list[int], opts: ExportOptions, out_dir: Path) -> dict[str, Any]:
    from ds4d_cli.export.html import write_page
    from ds4d_cli.export.views import parse_background

    bg = "#%02x%02x%02x" % tuple(round(255 * c) for c in parse_background(opts.background))
    with progress_bar("Exporting viewer page", total=len(frames), fields=("gaussians",)) as bar:
        return write_page(out_dir, model, frames, cameras=_cameras_json(ws), input_dir=ws.stage_dir("preprocess") / "frames",
                          duration_s=_clip_duration(ws), background=bg, min_opacity=opts.min_opacity,
                          progress=lambda n: bar.advance(1, gaussians=n))


def _export_mesh(ws: Workspace, model: Any, frames: list[int], opts: ExportOptions, out_dir: Path) -> dict[str, Any]:
    from ds4d_cli.export.glb import write_glb, write_obj_sequence
    from ds4d_cli.export.html import FALLBACK_FPS, frame_seconds
    from ds4d_cli.export.mesh import animated_mesh
    from ds4d_cli.export.splats import splat_frame_from, visible_in_all

    if opts.mesh_frame is not None and opts.mesh_frame not in frames:
        raise Ds4dError(f"--mesh-frame {opts.mesh_frame} is not among the exported frames",
                        hint=f"choose one of {frames[0]}..{frames[-1]} (or leave it out for the middle frame)")
    reference = frames.index(opts.mesh_frame) if opts.mesh_frame is not None else len(frames) // 2
    with progress_bar("Reading frames", total=len(frames)) as bar:
        splats = []
        for i in frames:
            splats.append(splat_frame_from(model.gaussians_at(i)))
            bar.advance(1)
    keep = visible_in_all(splats, opts.min_opacity)  # one set of Gaussians for every frame
    splats = [f.select(keep) for f in splats]
    duration = _clip_duration(ws)
    fps = int(model.num_frames) / duration if duration else FALLBACK_FPS
    times = frame_seconds(getattr(model, "frame_times", None), frames, duration, fps)
    times = [t - times[0] for t in times]  # the animation starts at 0 s
    try:
        mesh = animated_mesh(splats, times, reference, int(opts.mesh_resolution), float(opts.iso))
    except ValueError as exc:
        raise Ds4dError(f"no surface could be extracted: {exc}", hint="lower --iso (e.g. 0.2) or raise --mesh-resolution") from None
    summary: dict[str, Any] = {"frames": len(frames), "mesh_frame": frames[reference], "vertices": int(len(mesh.vertices)),
                               "faces": int(len(mesh.faces)), "max_motion": round(float(np.abs(mesh.offsets).max()), 4),
                               "seconds": round(float(times[-1]), 3)}
    if opts.format == "glb":
        path = out_dir / "animated.glb"
        written = write_glb(path, mesh, frames)
        return {"outputs": [str(path)], **summary, "mb": round(written["bytes"] / 1e6, 3)}
    names = write_obj_sequence(out_dir, mesh, frames)
    return {"outputs": [str(out_dir)], "files": names, **summary}
