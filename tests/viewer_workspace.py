"""A workspace whose fit is a baked FakeModel (a static blob + a part that travels along +X),
with preprocessed input frames and a clip duration: what the viewer, page and mesh tests open.

The model is saved as fit/model.pt in the fitted model's own layout, so every export goes
through the real ``load_fitted`` -- exactly as after ``ds4d fit``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from fake_model import FakeModel
from PIL import Image

from ds4d_cli.workspace import Workspace

CLIP_SECONDS = 1.5


def dense_fake_model(num_frames: int = 6, seed: int = 2) -> FakeModel:
    """Enough Gaussians for a solid silhouette; the moving part travels 0.5 units over the clip."""
    return FakeModel(num_frames=num_frames, n_static=600, n_moving=150, sh_degree=1, seed=seed, travel=0.5)


def baked(fake: FakeModel) -> dict:
    t = fake.num_frames
    return {"means": torch.stack([fake.means_at(i) for i in range(t)]), "quats": fake.quats.expand(t, -1, -1),
            "scales": fake.log_scales.expand(t, -1, -1), "opacities": fake.opacity_logits, "sh0": fake.sh0,
            "shN": fake.shN, "frame_times": torch.tensor(fake.frame_times), "sh_degree": fake.sh_degree}


def fitted_workspace(root: Path, fake: FakeModel) -> Workspace:
    """``root``/ws with preprocess (RGBA frames, meta.json) and fit (model.pt) done."""
    src = root / "clip.mp4"
    src.write_bytes(b"not really a clip")
    ws = Workspace.create(root / "ws", src)
    fdir = ws.stage_dir("preprocess") / "frames"
    fdir.mkdir(parents=True)
    for i in range(fake.num_frames):
        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[16:48, 16 + 3 * i:40 + 3 * i] = (0, 160, 0, 255)
        Image.fromarray(rgba).save(fdir / f"{i:03d}.png")
    (ws.stage_dir("preprocess") / "meta.json").write_text(json.dumps({"duration_s": CLIP_SECONDS}))
    ws.write_manifest("preprocess", {}, {}, 1, {})
    ws.stage_dir("fit").mkdir(parents=True, exist_ok=True)
    torch.save(baked(fake), ws.stage_dir("fit") / "model.pt")
    ws.write_manifest("fit", {"steps": 1}, {}, 1, {})
    return ws
