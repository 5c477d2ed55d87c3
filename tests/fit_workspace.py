"""Build a workspace holding preprocess + generate outputs (CONTRACTS.md layout) from an example case.

This is what ``preprocess`` of the example's RGBA frames + ``generate --prior import CASE --views ...``
produce, written directly so that the fit tests depend only on the fit stage. Frames are a
subset (``frames``), resized to ``size``; the input camera is the example's "input" view.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ds4d_cli.cameras import c2w_to_viewmat
from ds4d_cli.workspace import Workspace


def _K(cams: dict, size: int) -> list[list[float]]:
    it = cams["intrinsics"]
    s = size / float(it["width"])
    return [[it["fx"] * s, 0.0, it["cx"] * s], [0.0, it["fy"] * s, it["cy"] * s], [0.0, 0.0, 1.0]]


def _entry(cams: dict, view: str, size: int) -> dict:
    v = cams["views"][view]
    return {"name": view, "azimuth_deg": v["azimuth_deg"], "elevation_deg": v["elevation_deg"],
            "camera_to_world": v["camera_to_world"], "K": _K(cams, size), "width": size, "height": size}


def image_path(case: Path, view: str, frame: int) -> Path:
    return case / "input" / f"{frame:03d}.png" if view == "input" else case / "gt" / view / f"{frame:03d}.png"


def _copy(src: Path, dst: Path, size: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    im = Image.open(src).convert("RGBA")
    if im.size != (size, size):
        im = im.resize((size, size), Image.LANCZOS)
    im.save(dst)


def build_workspace(root: Path, case: Path, views: list[str], frames: list[int], size: int = 256) -> Workspace:
    """Workspace at ``root`` with preprocess (frames) and generate (views, cameras.json) done."""
    cams = json.loads((case / "cameras.json").read_text())
    ws = Workspace.create(root, case / "input.mp4")
    for j, f in enumerate(frames):
        _copy(image_path(case, "input", f), ws.stage_dir("preprocess") / "frames" / f"{j:03d}.png", size)
        for v, name in enumerate(views):
            _copy(image_path(case, name, f), ws.stage_dir("generate") / "views" / f"{j:03d}" / f"{v:02d}.png", size)
    times = [cams["frame_times"][f] for f in frames]
    inp = _entry(cams, "input", size)
    cam_json = {"convention": cams["convention"], "prior": "import" if views else "none", "frames": len(frames),
                "input": {k: inp[k] for k in ("camera_to_world", "K", "width", "height")},
                "views": [_entry(cams, v, size) for v in views], "frame_times": times}
    ws.stage_dir("generate").mkdir(parents=True, exist_ok=True)
    (ws.stage_dir("generate") / "cameras.json").write_text(json.dumps(cam_json))
    ws.write_manifest("preprocess", {"test": True}, {"source": "windmill"}, 1, {"frames": len(frames)})
    ws.write_manifest("generate", {"views": views}, {"preprocess": ws.manifest_digest("preprocess")}, 1, {})
    return ws


def ground_truth(case: Path, view: str, frames: list[int], size: int, background: float = 1.0) -> torch.Tensor:
    """[T, size, size, 3] ground truth of ``view`` over ``background`` (resized premultiplied)."""
    out = []
    for f in frames:
        im = Image.open(image_path(case, view, f)).convert("RGBA")
        x = np.asarray(im, dtype=np.float32) / 255.0
        pre = np.concatenate([x[..., :3] * x[..., 3:], x[..., 3:]], -1)
        t = torch.from_numpy(pre).permute(2, 0, 1)[None]
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True)[0].permute(1, 2, 0)
        out.append(t[..., :3] + (1 - t[..., 3:]) * background)
    return torch.stack(out)


def camera(case: Path, view: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(viewmat [1,4,4], K [1,3,3]) of an example view at ``size`` px."""
    cams = json.loads((case / "cameras.json").read_text())
    c2w = torch.tensor(cams["views"][view]["camera_to_world"], dtype=torch.float32)
    return c2w_to_viewmat(c2w)[None], torch.tensor(_K(cams, size), dtype=torch.float32)[None]
