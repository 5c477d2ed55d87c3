"""One frame of Gaussians in the stored (PLY) parametrisation, and the clean-up before export.

The fitted model hands out each frame's Gaussians (deformation applied) as a dict of tensors.
Exporters need them in the 3DGS file parametrisation -- log-scales, opacity logits, SH
coefficients -- whatever form the model used. :func:`splat_frame_from` accepts:

- a :class:`ds4d_cli.gaussians.Gaussians` (its raw parameters are already this form);
- a dict in that same raw layout (``means quats scales opacities sh0 [shN]``, i.e. what
  ``Gaussians.raw()`` returns: scales are logs, opacities are logits);
- a dict of activated values with ``colors`` (RGB) instead of ``sh0``: ``scales`` are standard
  deviations and ``opacities`` are in [0, 1] (the renderer's arguments).
Explicit keys ``log_scales`` / ``opacity_logits`` override either reading.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch
from torch import Tensor

from ds4d_cli.export.axes import rotate_gaussians

SH_C0 = 0.28209479177387814


@dataclass
class SplatFrame:
    """Gaussians of one frame in the file parametrisation (float32, CPU, detached)."""

    means: Tensor  # [N,3]
    quats: Tensor  # [N,4] (w, x, y, z), unit
    log_scales: Tensor  # [N,3]
    opacity_logits: Tensor  # [N]
    sh0: Tensor  # [N,1,3]
    shN: Tensor  # [N,K,3], K = (degree+1)^2 - 1, possibly 0

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def colors(self) -> Tensor:
        return 0.5 + SH_C0 * self.sh0[:, 0, :]

    def select(self, keep: Tensor) -> "SplatFrame":
        return SplatFrame(*(getattr(self, f)[keep] for f in _FIELDS))


_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh0", "shN")


def _t(x: Any) -> Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float32)


def _logit(p: Tensor, eps: float = 1e-7) -> Tensor:
    p = p.clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def splat_frame_from(g: Any) -> SplatFrame:
    """Normalise one frame's Gaussians (see the module docstring for what is accepted)."""
    if hasattr(g, "raw") and callable(g.raw):
        g = g.raw()
    if not isinstance(g, Mapping):
        raise TypeError(f"expected a dict of Gaussian tensors, got {type(g).__name__}")
    means = _t(g["means"]).reshape(-1, 3)
    n = means.shape[0]
    quats = torch.nn.functional.normalize(_t(g["quats"]).reshape(n, 4), dim=-1)
    activated = "sh0" not in g
    if "log_scales" in g:
        log_scales = _t(g["log_scales"]).reshape(n, -1)
    elif activated:
        log_scales = torch.log(_t(g["scales"]).reshape(n, -1).clamp_min(1e-12))
    else:
        log_scales = _t(g["scales"]).reshape(n, -1)
    if log_scales.shape[1] == 1:  # isotropic
        log_scales = log_scales.expand(n, 3)
    if "opacity_logits" in g:
        logits = _t(g["opacity_logits"]).reshape(n)
    elif activated:
        logits = _logit(_t(g["opacities"]).reshape(n))
    else:
        logits = _t(g["opacities"]).reshape(n)
    if activated:
        sh0 = ((_t(g["colors"]).reshape(n, 3) - 0.5) / SH_C0)[:, None, :]
        shN = _t(g["shN"]).reshape(n, -1, 3) if "shN" in g else torch.zeros(n, 0, 3)
    else:
        sh0 = _t(g["sh0"]).reshape(n, 1, 3)
        shN = _t(g["shN"]).reshape(n, -1, 3) if "shN" in g else torch.zeros(n, 0, 3)
    return SplatFrame(means, quats, log_scales.contiguous(), logits, sh0, shN)


def clean(frame: SplatFrame, min_opacity: float = 1.0 / 255.0) -> tuple[SplatFrame, int]:
    """Drop Gaussians a viewer must not see: any NaN/inf value, or opacity below ``min_opacity``.

    ``1/255`` by default because the rasterizer already discards any contribution below that
    alpha: such Gaussians are invisible in our renders, but some viewers would still sort and
    draw them (or choke on NaN). Returns the kept Gaussians and how many were dropped.
    """
    n = len(frame)
    finite = torch.ones(n, dtype=torch.bool)
    for name in _FIELDS:
        v = getattr(frame, name)
        finite &= torch.isfinite(v.reshape(n, -1)).all(dim=1) if v.numel() else finite
    keep = finite & (torch.nan_to_num(frame.opacities, nan=0.0) >= min_opacity)
    return frame.select(keep), int(n - keep.sum())


def to_viewer_axes(frame: SplatFrame) -> SplatFrame:
    """Rotate a frame from the ds4d world (Z up) to the viewer convention (-Y up); see ``axes``."""
    means, quats, shN = rotate_gaussians(frame.means, frame.quats, frame.shN)
    return replace(frame, means=means, quats=quats, shN=shN)


def visible_in_all(frames: list[SplatFrame], min_opacity: float = 1.0 / 255.0) -> Tensor:
    """The Gaussians :func:`clean` keeps in *every* frame, as a mask: a mesh animated over the
    clip needs one fixed set of Gaussians (the deformation moves them, never adds or removes)."""
    keep = torch.ones(len(frames[0]), dtype=torch.bool)
    for frame in frames:
        n = len(frame)
        for name in _FIELDS:
            v = getattr(frame, name)
            if v.numel():
                keep &= torch.isfinite(v.reshape(n, -1)).all(dim=1)
        keep &= torch.nan_to_num(frame.opacities, nan=0.0) >= min_opacity
    return keep
