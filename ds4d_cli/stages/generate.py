"""``ds4d generate``: V views of every preprocessed frame at known cameras -- what ``fit`` learns from.

Priors:

- ``zero123pp``: our Zero123++ pipeline, six 320 px views per frame. Views are kept steady over
  time by giving every frame the same initial noise and sampler randomness (one seed), and,
  with ``anchor``, by STAG4D's temporal anchor: every later frame's self-attention keys and
  values use the mean of its own tokens and frame 0's at the same step and layer
  (:mod:`ds4d_cli.priors.ref_attention`). The flat grey background is cut out into alpha.
- ``import``: views made elsewhere, in the layout documented in :mod:`ds4d_cli.priors.import_views`.
- ``none``: no views (a warning says the unseen sides will be guessed). With ``input_camera``
  (``--input-camera DIR``) the input camera is DIR's, mapped through the crop exactly as for
  ``import``, so the fit lives in DIR's world and ``ds4d eval --gt DIR`` can score it.
- ``auto``: ``zero123pp`` when its weights are found locally, else ``none`` with a warning.

Outputs (CONTRACTS.md): ``generate/views/NNN/VV.png`` (RGBA, VV in cameras.json "views" order)
and ``generate/cameras.json``; for zero123pp also the raw grids ``generate/grids/NNN.png``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from ds4d_cli.cameras import DEFAULT_FOV_DEG, DEFAULT_RADIUS, intrinsics_from_fov, orbit_camera
from ds4d_cli.report import warn
from ds4d_cli.errors import Ds4dError, MissingWeightsError
from ds4d_cli.fsutil import atomic_path, read_json, write_bytes_atomic, write_json_atomic
from ds4d_cli.priors.layout import DEFAULT_STEPS, HUB_IDS, check_variant
from ds4d_cli.workspace import StageResult, Workspace, run_stage

VERSION = 2  # 2: STAG4D's token-mean anchor; sampled VAE condition latents
PRIORS = ("auto", "zero123pp", "import", "none")
DEFAULT_GUIDANCE = 4.0
CONVENTION = "OpenCV camera (x right, y down, z forward); camera_to_world 4x4; world Z up"


@dataclass
class GenerateOptions:
    prior: str = "auto"  # auto | zero123pp | import | none
    import_dir: Optional[str] = None  # import: the folder of multi-view frames
    model: Optional[str] = None  # zero123pp: hub id or local folder (default: the variant's hub id)
    variant: str = "v1.1"  # zero123pp: v1.1 (+30/-20 deg) or v1.2 (+20/-10 deg)
    views: Optional[list[str]] = None  # subset of view names (import: az090,...; zero123pp: az030_el30,...)
    steps: Optional[int] = None  # zero123pp: None = 75 (v1.1) / 28 (v1.2)
    guidance: Optional[float] = None  # zero123pp: None = 4.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    anchor: bool = True  # zero123pp: anchor frames 1.. on frame 0 (STAG4D's self-attention token mean)
    input_camera: Optional[str] = None  # none: place the input camera from DIR/cameras.json (as import does)


# -- preprocess outputs ---------------------------------------------------------------------------
def _read_preprocess(ws: Workspace) -> tuple[dict, list[Path]]:
    pre = ws.stage_dir("preprocess")
    meta = read_json(pre / "meta.json")
    frames = sorted((pre / "frames").glob("*.png"))
    if not frames:
        raise Ds4dError(f"no frames in {pre / 'frames'}", hint="run `ds4d preprocess CLIP --force`")
    times = meta.get("frame_times") or [i / len(frames) for i in range(len(frames))]
    if len(times) != len(frames):
        raise Ds4dError(f"preprocess meta.json lists {len(times)} frame times for {len(frames)} frames",
                        hint="run `ds4d preprocess CLIP --force`")
    meta["frame_times"] = [float(t) for t in times]
    return meta, frames


def _frame_size(meta: dict, frames: list[Path]) -> int:
    if meta.get("size"):
        return int(meta["size"])
    with Image.open(frames[0]) as im:
        return int(im.size[0])


def _default_input_camera(size: int) -> dict:
    return {
        "camera_to_world": orbit_camera(0.0, 0.0, DEFAULT_RADIUS).double().tolist(),
        "K": intrinsics_from_fov(DEFAULT_FOV_DEG, size).double().tolist(),
        "width": size,
        "height": size,
    }


def _cameras_json(prior: str, input_cam: dict, views: list[dict], times: list[float], **extra: Any) -> dict:
    return {"convention": CONVENTION, "prior": prior, "frames": len(times), "input": input_cam,
            "views": views, "frame_times": times, **extra}


def _save_png(path: Path, rgba: np.ndarray | Image.Image) -> None:
    img = rgba if isinstance(rgba, Image.Image) else Image.fromarray(np.asarray(rgba))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


# -- priors ---------------------------------------------------------------------------------------
def _placed_input_camera(camera: dict, meta: dict, size: int) -> dict:
    """A camera from DIR/cameras.json (DIR's video pixels) mapped through preprocess's crop onto
    the S x S frames: the input camera of ``--prior import DIR`` and of ``--input-camera DIR``."""
    from ds4d_cli.priors.import_views import input_camera_for_frames

    if meta.get("crop_intrinsics") is not None and meta.get("original_size") is not None:
        return input_camera_for_frames(camera, meta["crop_intrinsics"], tuple(meta["original_size"]), size)
    # frames given already cropped: DIR's camera is the frames' camera, rescaled to S
    return input_camera_for_frames(camera, np.diag([size / camera["width"], size / camera["height"], 1.0]),
                                   (camera["width"], camera["height"]), size)


def _run_none(out: Path, meta: dict, frames: list[Path], camera_file=None) -> dict:
    warn("--prior none: no generated views, so fit sees only the input view; the back and other unseen sides will be guessed")
    size = _frame_size(meta, frames)
    if camera_file is None:
        input_cam, extra = _default_input_camera(size), {}
    else:
        input_cam, extra = _placed_input_camera(camera_file.input_camera(), meta, size), {"input_camera_source": str(camera_file.root)}
    write_json_atomic(out / "cameras.json", _cameras_json("none", input_cam, [], meta["frame_times"], **extra))
    return {"prior": "none", "frames": len(frames), "views": [], **extra}


def _run_import(out: Path, imported, meta: dict, frames: list[Path]) -> dict:
    from ds4d_cli.priors.import_views import nearest_frames

    size = _frame_size(meta, frames)
    input_cam = _placed_input_camera(imported.input_camera, meta, size)
    mapping = nearest_frames(imported.frame_times, meta["frame_times"])
    for i, src in enumerate(mapping):
        for v, path in enumerate(imported.paths[src]):
            write_bytes_atomic(out / "views" / f"{i:03d}" / f"{v:02d}.png", path.read_bytes())
    names = [v["name"] for v in imported.views]
    write_json_atomic(out / "cameras.json", _cameras_json(
        "import", input_cam, imported.views, meta["frame_times"], source=str(imported.root), source_frames=mapping))
    return {"prior": "import", "frames": len(frames), "views": names, "source": str(imported.root)}


def _run_zero123pp(out: Path, opts: GenerateOptions, meta: dict, frames: list[Path], chosen: list[int]) -> dict:
    import torch

    from ds4d_cli.priors.layout import split_grid, zero123pp_views
    from ds4d_cli.priors.loading import load_zero123pp
    from ds4d_cli.priors.segment import segment_flat_background
    from ds4d_cli.report import progress as progress_bar

    pipe = load_zero123pp(opts.model, opts.variant, opts.device)
    if pipe.device.type == "cpu" and sum(p.numel() for p in pipe.unet.parameters()) > 100_000_000:
        warn("Zero123++ on the CPU takes minutes per frame; a CUDA GPU (--device cuda) is far faster, "
             "or make the views elsewhere and use --prior import DIR")
    steps = opts.steps or DEFAULT_STEPS[opts.variant]
    guidance = DEFAULT_GUIDANCE if opts.guidance is None else opts.guidance
    all_views = zero123pp_views(opts.variant)
    views = [all_views[k] for k in chosen]
    from ds4d_cli.priors.ref_attention import AnchorCache

    noise = pipe.prepare_noise(torch.Generator("cpu").manual_seed(opts.seed))  # one noise for all frames
    anchor = AnchorCache() if opts.anchor else None  # frame 0 records, later frames are anchored on it
    start = time.time()
    with progress_bar("Generating views", total=len(frames), fields=("frame", "step")) as bar:
        for i, frame_path in enumerate(frames):
            with Image.open(frame_path) as im:
                image = im.convert("RGBA")
            generator = torch.Generator("cpu").manual_seed(opts.seed + 1)  # same sampler noise every frame
            result = pipe(
                image, num_inference_steps=steps, guidance_scale=guidance, generator=generator, latents=noise,
                anchor=anchor, callback=lambda s, n, i=i: bar.advance(0, frame=i, step=f"{s}/{n}"),
            )
            grid = result.images[0]
            _save_png(out / "grids" / f"{i:03d}.png", grid)
            tiles = split_grid(grid)
            for v, k in enumerate(chosen):
                _save_png(out / "views" / f"{i:03d}" / f"{v:02d}.png", segment_flat_background(tiles[k]))
            bar.advance(1, frame=i)
    size = _frame_size(meta, frames)
    write_json_atomic(out / "cameras.json", _cameras_json(
        "zero123pp", _default_input_camera(size), views, meta["frame_times"], variant=opts.variant))
    return {"prior": "zero123pp", "frames": len(frames), "views": [v["name"] for v in views],
            "variant": opts.variant, "steps": steps, "guidance": guidance,
            "seconds": round(time.time() - start, 1), "device": str(pipe.device)}


# -- the stage ------------------------------------------------------------------------------------
def _resolve_prior(opts: GenerateOptions) -> str:
    if opts.prior not in PRIORS:
        raise Ds4dError(f"unknown prior {opts.prior!r}", hint="use --prior zero123pp, import DIR or none")
    if opts.prior == "import" and not opts.import_dir:
        raise Ds4dError("--prior import needs a folder", hint="write it after the prior: `--prior import DIR`")
    if opts.prior != "auto":
        return opts.prior
    if opts.import_dir:
        return "import"
    from ds4d_cli.priors.loading import find_weights

    try:
        find_weights(opts.model, opts.variant)
    except MissingWeightsError as exc:
        warn(f"{exc.message}; continuing without generated views (--prior none). To use Zero123++: {exc.hint}")
        return "none"
    return "zero123pp"


def _zero123pp_choice(opts: GenerateOptions) -> list[int]:
    from ds4d_cli.priors.layout import zero123pp_views

    names = [v["name"] for v in zero123pp_views(opts.variant)]
    if not opts.views:
        return list(range(len(names)))
    unknown = [v for v in opts.views if v not in names]
    if unknown:
        raise Ds4dError(f"--views names unknown view(s) {', '.join(unknown)}",
                        hint=f"Zero123++ {opts.variant} makes: {', '.join(names)}")
    return [names.index(v) for v in dict.fromkeys(opts.views)]


def _digest_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def run(ws: Workspace, opts: GenerateOptions, force: bool = False) -> StageResult:
    """Produce (or reuse from cache) the views of every preprocessed frame."""
    inputs: dict[str, Any] = {"preprocess": ws.upstream_digest("preprocess")}
    prior = _resolve_prior(opts)
    if opts.input_camera and prior != "none":
        raise Ds4dError(f"--input-camera goes with --prior none, not --prior {prior}",
                        hint="--prior import DIR places the input camera from DIR itself; drop --input-camera")
    meta, frames = _read_preprocess(ws)
    options: dict[str, Any] = {"prior": prior}
    if prior == "import":
        from ds4d_cli.priors.import_views import load_import_dir

        imported = load_import_dir(opts.import_dir, opts.views)  # validate before touching the stage
        options.update(import_dir=str(Path(opts.import_dir).expanduser().absolute()),
                       views=[v["name"] for v in imported.views])
        inputs["import"] = _digest_files([imported.root / "cameras.json"] + [p for row in imported.paths for p in row])
        body = lambda out: _run_import(out, imported, meta, frames)  # noqa: E731
    elif prior == "zero123pp":
        check_variant(opts.variant)
        from ds4d_cli.priors.loading import find_weights, resolve_device

        chosen = _zero123pp_choice(opts)
        weights = find_weights(opts.model, opts.variant)  # MissingWeightsError before any work
        device = resolve_device(opts.device)
        options.update(model=opts.model or HUB_IDS[opts.variant], weights=str(weights), variant=opts.variant,
                       views=opts.views, steps=opts.steps or DEFAULT_STEPS[opts.variant],
                       guidance=DEFAULT_GUIDANCE if opts.guidance is None else opts.guidance,
                       seed=opts.seed, device=device.type, anchor=opts.anchor)
        body = lambda out: _run_zero123pp(out, opts, meta, frames, chosen)  # noqa: E731
    else:
        camera_file = None
        if opts.input_camera:
            from ds4d_cli.priors.import_views import read_camera_file

            camera_file = read_camera_file(opts.input_camera)
            camera_file.input_camera()  # validate before touching the stage
            options["input_camera"] = str(camera_file.root.absolute())
            inputs["input_camera"] = _digest_files([camera_file.path])
        body = lambda out: _run_none(out, meta, frames, camera_file)  # noqa: E731
    return run_stage(ws, "generate", options=options, inputs=inputs, version=VERSION, force=force, body=body)
