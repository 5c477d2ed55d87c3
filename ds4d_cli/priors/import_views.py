"""``--prior import DIR``: multi-view frames made elsewhere (another generator, or rendered ground truth).

Layout of DIR (the same as ``shared/examples/<case>/``)::

    DIR/
      cameras.json
      gt/<view>/000.png 001.png ...     one folder per view (``DIR/<view>/`` also accepted),
                                        RGBA PNGs, all frames, all the same size

``cameras.json``::

    {
      "intrinsics": {"fx": 280.2, "fy": 280.2, "cx": 128, "cy": 128, "width": 256, "height": 256},
      "frame_times": [0.0, 0.0417, ...],          # each frame's time in [0, 1); or "frames": N
      "views": {
        "input": {"camera_to_world": [[...4x4...]]},          # the camera of the input video
        "az090": {"camera_to_world": [[...]], "azimuth_deg": 90, "elevation_deg": 0},
        ...
      }
    }

Cameras are OpenCV (x right, y down, z forward), camera-to-world, world Z up. A view may carry
its own ``"K"`` (3x3) or ``"intrinsics"`` to override the shared one. The ``input`` view is
not imported as a training view: it defines where the input video's camera is, so the fitted
model lives in DIR's world and can be compared with DIR's views without any alignment.
``--views az090,az270`` imports only those views (the rest can be held out for ``ds4d eval``).
Frames are matched to the preprocessed frames by normalised time (nearest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ds4d_cli.errors import Ds4dError

INPUT_VIEW = "input"


@dataclass
class ImportedViews:
    """What DIR holds, validated. Cameras are cameras.json entries of our generate contract."""

    root: Path
    input_camera: dict  # camera_to_world, K, width, height in DIR's own (original video) pixels
    views: list[dict]  # name, azimuth_deg, elevation_deg, camera_to_world, K, width, height
    frame_times: list[float]
    paths: list[list[Path]]  # [frame][view]


def _err(message: str, hint: str) -> Ds4dError:
    return Ds4dError(message, hint=hint)


def _matrix(value, shape: tuple[int, int], what: str, cams: Path) -> list[list[float]]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != shape or not np.all(np.isfinite(arr)):
        raise _err(f"{cams}: {what} is not a {shape[0]}x{shape[1]} matrix of numbers",
                   hint="write it as a list of rows, e.g. [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]")
    return arr.tolist()


def _intrinsics(entry: dict, cams: Path, what: str) -> tuple[list[list[float]], int, int]:
    try:
        fx, fy = float(entry["fx"]), float(entry["fy"])
        cx, cy = float(entry["cx"]), float(entry["cy"])
        w, h = int(entry["width"]), int(entry["height"])
    except (KeyError, TypeError, ValueError):
        raise _err(f"{cams}: {what} needs fx, fy, cx, cy, width and height",
                   hint='e.g. "intrinsics": {"fx": 280.2, "fy": 280.2, "cx": 128, "cy": 128, "width": 256, "height": 256}') from None
    return [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], w, h


def _view_folder(root: Path, name: str) -> Path | None:
    for cand in (root / "gt" / name, root / name):
        if cand.is_dir():
            return cand
    return None


@dataclass
class CameraFile:
    """DIR/cameras.json, validated: what both ``--prior import DIR`` and ``--input-camera DIR`` read."""

    root: Path
    path: Path
    views: dict  # the raw "views" object (name -> entry)
    K: list[list[float]]  # shared intrinsics
    width: int
    height: int
    frame_times: list[float]

    def camera(self, name: str) -> dict:
        """One view's camera as a generate cameras.json entry (name, camera_to_world, K, width, height)."""
        entry = self.views[name]
        cams = self.path
        if not isinstance(entry, dict) or "camera_to_world" not in entry:
            raise _err(f"{cams}: view {name!r} has no camera_to_world", hint="add its 4x4 camera-to-world matrix")
        K, w, h = self.K, self.width, self.height
        if "K" in entry:
            K = _matrix(entry["K"], (3, 3), f"views.{name}.K", cams)
        elif "intrinsics" in entry:
            K, w, h = _intrinsics(entry["intrinsics"], cams, f"views.{name}.intrinsics")
        cam = {"name": name, "camera_to_world": _matrix(entry["camera_to_world"], (4, 4), f"views.{name}.camera_to_world", cams),
               "K": K, "width": w, "height": h}
        for key in ("azimuth_deg", "elevation_deg"):
            if key in entry:
                cam[key] = entry[key]
        return cam

    def input_camera(self) -> dict:
        """The camera that filmed the video, in DIR's own (original video) pixels."""
        cam = self.camera(INPUT_VIEW)
        cam.pop("name")
        return cam


def read_camera_file(root: str | Path) -> CameraFile:
    """Read and validate DIR/cameras.json (intrinsics, frame times, an ``input`` view)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _err(f"import folder {root} does not exist", hint="pass the folder that holds cameras.json and gt/<view>/")
    cams = root / "cameras.json"
    if not cams.is_file():
        raise _err(f"{root} has no cameras.json", hint="see the README's import layout (cameras.json + gt/<view>/NNN.png)")
    try:
        meta = json.loads(cams.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _err(f"{cams} is not valid JSON ({exc})", hint="fix or regenerate the file") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("views"), dict):
        raise _err(f"{cams} has no \"views\" object", hint='add "views": {"input": {...}, "az090": {...}}')
    all_views: dict = meta["views"]
    if INPUT_VIEW not in all_views:
        raise _err(f"{cams} has no \"input\" view", hint="add the input video's camera as views.input.camera_to_world")
    if "intrinsics" not in meta:
        raise _err(f"{cams} has no \"intrinsics\"", hint="add fx, fy, cx, cy, width, height")
    K_shared, width, height = _intrinsics(meta["intrinsics"], cams, "intrinsics")

    if "frame_times" in meta:
        times = meta["frame_times"]
        if not isinstance(times, list) or not times or not all(isinstance(t, (int, float)) for t in times):
            raise _err(f"{cams}: frame_times must be a non-empty list of numbers", hint="one time in [0, 1) per frame")
        times = [float(t) for t in times]
        if "frames" in meta and int(meta["frames"]) != len(times):
            raise _err(f"{cams}: \"frames\" is {meta['frames']} but frame_times has {len(times)} entries",
                       hint="make them agree")
    elif isinstance(meta.get("frames"), int) and meta["frames"] > 0:
        times = [i / meta["frames"] for i in range(meta["frames"])]
    else:
        raise _err(f"{cams} gives neither frame_times nor frames", hint='add "frame_times": [0.0, ...] (one per frame)')
    return CameraFile(root, cams, all_views, K_shared, width, height, times)


def load_import_dir(root: str | Path, views: list[str] | None = None) -> ImportedViews:
    """Read and validate DIR; ``views`` picks a subset (default: every view except ``input``)."""
    cf = read_camera_file(root)
    root, cams, all_views, times = cf.root, cf.path, cf.views, cf.frame_times

    available = [n for n in all_views if n != INPUT_VIEW]
    if views:
        unknown = [v for v in views if v not in all_views or v == INPUT_VIEW]
        if unknown:
            raise _err(f"--views names unknown view(s) {', '.join(unknown)}", hint=f"{root} has: {', '.join(available)}")
        chosen = list(dict.fromkeys(views))
    else:
        chosen = available
    if not chosen:
        raise _err(f"{cams} lists no views besides \"input\"", hint="add at least one view, or use --prior none")

    input_cam = cf.input_camera()
    view_cams = [cf.camera(n) for n in chosen]

    n_frames = len(times)
    paths: list[list[Path]] = [[] for _ in range(n_frames)]
    for cam in view_cams:
        name = cam["name"]
        folder = _view_folder(root, name)
        if folder is None:
            raise _err(f"{root} has no folder for view {name!r}", hint=f"expected {root / 'gt' / name}/000.png ...")
        files = sorted(folder.glob("*.png"))
        if len(files) != n_frames:
            raise _err(f"view {name!r} has {len(files)} PNG frames but cameras.json describes {n_frames}",
                       hint=f"put exactly {n_frames} frames (000.png ...) in {folder}")
        for i, f in enumerate(files):
            try:
                with Image.open(f) as im:
                    mode, size = im.mode, im.size
            except (OSError, ValueError):
                raise _err(f"{f} is not a readable image", hint="re-export it as PNG") from None
            if mode != "RGBA":
                raise _err(f"{f} is {mode}, not RGBA", hint="import needs the object's alpha mask in each view (RGBA PNGs)")
            if size != (cam["width"], cam["height"]):
                raise _err(f"{f} is {size[0]}x{size[1]} px but its camera says {cam['width']}x{cam['height']}",
                           hint="resize the images or fix the intrinsics' width/height")
            paths[i].append(f)
    return ImportedViews(root=root, input_camera=input_cam, views=view_cams, frame_times=times, paths=paths)


def nearest_frames(source_times: list[float], target_times: list[float]) -> list[int]:
    """For each target time, the index of the nearest source time (ties -> earlier frame)."""
    src = np.asarray(source_times, dtype=np.float64)
    return [int(np.argmin(np.abs(src - t))) for t in target_times]


def input_camera_for_frames(input_camera: dict, crop_intrinsics, original_size: tuple[int, int], size: int) -> dict:
    """DIR's input camera (``CameraFile.input_camera()``) re-expressed for the preprocessed S x S
    frames: K = A @ K_original.

    If the video's pixel size differs from DIR's intrinsics (e.g. a rescaled export), K is
    first scaled to the video's pixels.
    """
    K = np.asarray(input_camera["K"], dtype=np.float64)
    w0, h0 = input_camera["width"], input_camera["height"]
    W, H = original_size
    if (W, H) != (w0, h0):
        K = np.diag([W / w0, H / h0, 1.0]) @ K
    A = np.asarray(crop_intrinsics, dtype=np.float64)
    return {"camera_to_world": input_camera["camera_to_world"], "K": (A @ K).tolist(),
            "width": int(size), "height": int(size)}
