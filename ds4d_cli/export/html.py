"""The static 4D viewer page: the viewer's web files plus this fit's frames, camera and clip.

The folder works from disk (file://) and from any static host, with no Python and no request
outside it, because everything is loaded through classic ``<script>`` tags (browsers refuse ES
modules and fetch() on file://):

```
index.html  viewer.js  viewer.css     the page (ds4d_cli/viewer/web/)
vendor/ds4d-lib.js                    three.js + Spark, bundled from npm at `make setup`
scene.js                              window.DS4D_SCENE: frames, times, fps, camera, input clip
frames/frame_0000.spz.js ...          DS4D_FRAME(k, "<base64 SPZ>"): one compressed frame each
input/000.png ...                     the preprocessed input frames, shown beside the 3D view
```
``ds4d view`` serves this same folder, so there is one viewer to maintain.
"""

from __future__ import annotations

import base64
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ds4d_cli.cameras import DEFAULT_FOV_DEG, DEFAULT_RADIUS
from ds4d_cli.export.splats import clean, splat_frame_from
from ds4d_cli.export.spz import encode_spz, to_spz_axes
from ds4d_cli.fsutil import atomic_path
from ds4d_cli.viewer.assets import copy_web_files

#: Bumped when the page's data (scene.js, frame files) changes form (cached pages are then redone;
#: changes to the web files themselves are caught by their digest).
PAGE_VERSION = 1
#: Playback rate when the clip's duration is unknown.
FALLBACK_FPS = 12.0


@dataclass(frozen=True)
class PageCamera:
    """The page's initial camera in ds4d's world axes (the page converts to three.js axes)."""

    position: tuple[float, float, float]
    forward: tuple[float, float, float]
    up: tuple[float, float, float]
    fov_deg: float  # vertical field of view
    radius: float  # distance used by orbit URL parameters

    @classmethod
    def from_cameras_json(cls, cameras: Optional[dict[str, Any]]) -> "PageCamera":
        """The input camera of generate/cameras.json (OpenCV, camera-to-world), else the default one."""
        try:
            inp = cameras["input"]  # type: ignore[index]
            c2w = np.asarray(inp["camera_to_world"], dtype=np.float64)
            fy = float(np.asarray(inp["K"], dtype=np.float64)[1, 1])
            height = float(inp.get("height", inp["width"]))
            fov = math.degrees(2.0 * math.atan(0.5 * height / fy))
            pos = c2w[:3, 3]
            if not (0 < fov < 179 and np.isfinite(c2w).all()):
                raise ValueError
            return cls(tuple(pos), tuple(c2w[:3, 2]), tuple(-c2w[:3, 1]), fov, float(np.linalg.norm(pos)))
        except (KeyError, TypeError, ValueError, IndexError):
            # ds4d_cli.cameras.orbit_camera(0, 0, DEFAULT_RADIUS): on -Y, looking at the origin, Z up.
            return cls((0.0, -DEFAULT_RADIUS, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), DEFAULT_FOV_DEG, DEFAULT_RADIUS)


def _write_text(path: Path, text: str) -> None:
    """Atomically, and readable by everyone: a static web server often runs as another user."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
        Path(tmp).chmod(0o644)


def frame_script_name(frame_index: int) -> str:
    return f"frame_{frame_index:04d}.spz.js"


def frame_script(position: int, spz: bytes) -> str:
    """The JS file of one frame: hands its SPZ bytes (base64) to the page."""
    return f'DS4D_FRAME({position}, "{base64.b64encode(spz).decode("ascii")}");\n'


def frame_seconds(times: Optional[Sequence[float]], frames: Sequence[int], duration_s: Optional[float],
                  fps: float) -> list[float]:
    """Each shown frame's time in the clip, in seconds (normalised fit times x clip duration)."""
    if times is not None and duration_s:
        return [float(times[i]) * float(duration_s) for i in frames]
    return [i / fps for i in frames]


def write_page(out_dir: Path, model: Any, frames: Sequence[int], *, cameras: Optional[dict[str, Any]],
               input_dir: Optional[Path], duration_s: Optional[float], background: str = "#ffffff",
               min_opacity: float = 1.0 / 255.0, progress: Any = None) -> dict[str, Any]:
    """Write the viewer page for ``frames`` of ``model`` into ``out_dir``; returns a summary."""
    copy_web_files(out_dir)
    num_frames = int(model.num_frames)
    fps = num_frames / float(duration_s) if duration_s else FALLBACK_FPS
    seconds = frame_seconds(getattr(model, "frame_times", None), frames, duration_s, fps)
    frame_dir = out_dir / "frames"
    frame_dir.mkdir(parents=True, exist_ok=True)
    records, inputs = [], []
    for k, i in enumerate(frames):
        splats, dropped = clean(splat_frame_from(model.gaussians_at(i)), min_opacity)
        spz = encode_spz(to_spz_axes(splats))
        name = frame_script_name(i)
        _write_text(frame_dir / name, frame_script(k, spz))
        records.append({"index": i, "file": f"frames/{name}", "seconds": round(seconds[k], 4),
                        "gaussians": len(splats), "dropped": dropped, "spz_bytes": len(spz),
                        "script_bytes": (frame_dir / name).stat().st_size})
        src = input_dir / f"{i:03d}.png" if input_dir is not None else None
        if src is not None and src.is_file():
            (out_dir / "input").mkdir(exist_ok=True)
            shutil.copyfile(src, out_dir / "input" / src.name)
            inputs.append(f"input/{src.name}")
        if progress is not None:
            progress(len(splats))
    camera = PageCamera.from_cameras_json(cameras)
    scene = {
        "format": "ds4d-viewer-1",
        "fps": fps,
        "frames": records,
        "camera": {"position": list(camera.position), "forward": list(camera.forward), "up": list(camera.up),
                   "fov_deg": camera.fov_deg, "radius": camera.radius},
        "input": inputs if len(inputs) == len(records) else [],
        "background": background,
        "axes": "positions in frames/*.spz are right-up-back (x, z, -y of ds4d's Z-up world)",
    }
    _write_text(out_dir / "scene.js", "window.DS4D_SCENE = " + json.dumps(scene, indent=1) + ";\n")
    spz_sizes = [r["spz_bytes"] for r in records]
    script_sizes = [r["script_bytes"] for r in records]
    gaussians = [r["gaussians"] for r in records]
    return {
        "outputs": [str(out_dir / "index.html")],
        "frames": len(records),
        "fps": round(fps, 3),
        "gaussians_max": max(gaussians),
        "mb_per_frame": round(float(np.mean(script_sizes)) / 1e6, 4),
        "spz_mb_per_frame": round(float(np.mean(spz_sizes)) / 1e6, 4),
        "total_mb": round(sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file()) / 1e6, 3),
    }
