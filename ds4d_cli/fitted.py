"""The fitted 4D model as a file (``fit/model.pt``): written by the fit stage, read by export,
eval and viewers through :func:`load_fitted`. Both sides of the file format live here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ds4d_cli.errors import Ds4dError
from ds4d_cli.fsutil import atomic_path
from ds4d_cli.workspace import Workspace

MODEL_FILE = "model.pt"


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


def save_fitted(path: Path, baked: dict[str, torch.Tensor], *, sh_degree: int, resolution: int,
                view_names: Sequence[str], viewmats: torch.Tensor, Ks: torch.Tensor, options: dict[str, Any]) -> None:
    """Write a model baked per frame (``Trainer.bake()``) with its training cameras, atomically."""
    record = dict(baked, sh_degree=int(sh_degree), resolution=int(resolution), view_names=list(view_names),
                  viewmats=viewmats.cpu(), Ks=Ks.cpu(), options=dict(options))
    with atomic_path(path) as tmp:
        torch.save(record, tmp)


def load_fitted(ws: Workspace) -> FittedModel:
    """The fitted model of ``ws`` (fit/model.pt); a user error if fit has not finished."""
    path = ws.stage_dir("fit") / MODEL_FILE
    if ws.read_manifest("fit") is None or not path.is_file():
        raise Ds4dError(f"no fitted model in {ws.stage_dir('fit')}", hint="run `ds4d fit` first")
    return FittedModel(torch.load(path, map_location="cpu", weights_only=False))
