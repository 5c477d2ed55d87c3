"""A set of 3D Gaussians stored as raw (unconstrained) parameters, with activated accessors.

Parameters live in ``self.params`` (a ``torch.nn.ParameterDict``) under gsplat's names so that
``gsplat.strategy.DefaultStrategy`` can split, duplicate and prune them in place:

==============  ==========  =======================================================
key             shape       stored as
==============  ==========  =======================================================
``means``       [N,3]       world position
``quats``       [N,4]       rotation quaternion (w, x, y, z), not normalised
``scales``      [N,3]       log of the standard deviations along the local axes
``opacities``   [N]         logit of the opacity
``sh0``         [N,1,3]     SH DC coefficient per RGB channel (colour = 0.5 + C0 * sh0)
``shN``         [N,K,3]     higher SH bands, K = (degree+1)^2 - 1 (K may be 0)
==============  ==========  =======================================================

Other code may register more per-Gaussian parameters (first dimension N) in the same dict,
e.g. a learned embedding; everything here keeps working and round-trips them.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

SH_C0 = 0.28209479177387814

CORE_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """SH DC coefficients [...,3] whose degree-0 colour is ``rgb``."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return 0.5 + SH_C0 * sh0


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_degree_from_bases(n_bases: int) -> int:
    deg = int(round(math.sqrt(n_bases))) - 1
    if (deg + 1) ** 2 != n_bases:
        raise ValueError(f"{n_bases} SH coefficients is not a square number")
    return deg


def logit(p: Tensor | float, eps: float = 1e-6) -> Tensor:
    p = torch.as_tensor(p, dtype=torch.float32).clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)


def nearest_neighbour_scale(points: Tensor, k: int = 3) -> Tensor:
    """Per point: root mean squared distance to its k nearest neighbours (the 3DGS init).

    Uses a k-d tree so that 100k points take well under a second.
    """
    from scipy.spatial import cKDTree

    n = points.shape[0]
    if n < 2:
        return torch.full((n,), 0.01, dtype=points.dtype)
    pts = points.detach().cpu().double().numpy()
    kk = min(k, n - 1)
    dist, _ = cKDTree(pts).query(pts, k=kk + 1)
    d = np.sqrt(np.mean(np.square(dist[:, 1:]), axis=1))
    positive = d[d > 0]
    floor = float(positive.min()) if positive.size else 1e-3
    d = np.maximum(d, floor)
    return torch.from_numpy(d).to(points.dtype)


class Gaussians(nn.Module):
    """3D Gaussians as trainable raw parameters (see the module docstring for the layout)."""

    def __init__(self, params: dict[str, Tensor]) -> None:
        super().__init__()
        missing = [k for k in CORE_KEYS if k not in params]
        if missing:
            raise ValueError(f"missing Gaussian parameters: {missing}")
        self.params = nn.ParameterDict(
            {k: v if isinstance(v, nn.Parameter) else nn.Parameter(v) for k, v in params.items()}
        )

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_tensors(
        cls,
        means: Tensor,
        quats: Optional[Tensor] = None,
        scales: Optional[Tensor] = None,
        opacities: Optional[Tensor] = None,
        sh0: Optional[Tensor] = None,
        shN: Optional[Tensor] = None,
        sh_degree: int = 0,
    ) -> "Gaussians":
        """From raw parameters (log-scales, opacity logits, SH); missing ones get defaults.

        Defaults: identity rotation, log-scale log(0.01), opacity 0.1, grey colour, zero
        higher SH of ``sh_degree``.
        """
        means = means.detach().float()
        n = means.shape[0]
        if quats is None:
            quats = torch.zeros(n, 4)
            quats[:, 0] = 1.0
        if scales is None:
            scales = torch.full((n, 3), math.log(0.01))
        if opacities is None:
            opacities = torch.full((n,), float(logit(0.1)))
        if sh0 is None:
            sh0 = torch.zeros(n, 1, 3)
        if shN is None:
            shN = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)
        raw = {
            "means": means,
            "quats": quats,
            "scales": scales,
            "opacities": opacities.reshape(n),
            "sh0": sh0.reshape(n, 1, 3),
            "shN": shN.reshape(n, -1, 3),
        }
        return cls({k: v.detach().float().clone().contiguous() for k, v in raw.items()})

    @classmethod
    def from_activated(
        cls,
        means: Tensor,
        quats: Tensor,
        scales: Tensor,
        opacities: Tensor,
        colors: Tensor,
        sh_degree: int = 0,
    ) -> "Gaussians":
        """From activated values: scales (std-devs), opacities in (0,1), RGB colours [N,3]."""
        return cls.from_tensors(
            means,
            quats=quats,
            scales=torch.log(scales.clamp_min(1e-12)),
            opacities=logit(opacities),
            sh0=rgb_to_sh0(colors)[:, None, :],
            sh_degree=sh_degree,
        )

    @classmethod
    def from_points(
        cls,
        points: Tensor,
        colors: Optional[Tensor] = None,
        sh_degree: int = 0,
        scale: Optional[float | Tensor] = None,
        opacity: float = 0.1,
    ) -> "Gaussians":
        """Isotropic Gaussians on ``points`` [N,3], coloured by ``colors`` [N,3] in [0,1].

        ``scale=None`` sizes each Gaussian by the RMS distance to its 3 nearest neighbours so
        that the initial set covers the surface without holes or heavy overlap.
        """
        points = points.detach().float()
        n = points.shape[0]
        if scale is None:
            s = nearest_neighbour_scale(points)
        else:
            s = torch.as_tensor(scale, dtype=torch.float32).expand(n).clone()
        if colors is None:
            colors = torch.full((n, 3), 0.5)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        return cls.from_activated(
            points, quats, s[:, None].expand(n, 3), torch.full((n,), opacity),
            colors.float().clamp(0, 1), sh_degree=sh_degree,
        )

    @classmethod
    def random_ball(
        cls, n: int, radius: float = 0.5, seed: int = 0, sh_degree: int = 0, opacity: float = 0.1
    ) -> "Gaussians":
        """``n`` Gaussians uniform in a ball of ``radius`` around the origin, random colours."""
        gen = torch.Generator().manual_seed(seed)
        direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
        r = radius * torch.rand(n, 1, generator=gen) ** (1.0 / 3.0)
        colors = torch.rand(n, 3, generator=gen)
        return cls.from_points(direction * r, colors, sh_degree=sh_degree, opacity=opacity)

    # ----------------------------------------------------------------- accessors
    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    def __len__(self) -> int:
        return self.num_gaussians

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_bases(1 + int(self.params["shN"].shape[1]))

    @property
    def means(self) -> Tensor:
        return self.params["means"]

    @property
    def quats(self) -> Tensor:
        """Unit quaternions (w, x, y, z) [N,4]."""
        return torch.nn.functional.normalize(self.params["quats"], dim=-1)

    @property
    def scales(self) -> Tensor:
        """Standard deviations along the local axes [N,3] (exp of the stored log)."""
        return torch.exp(self.params["scales"])

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.params["opacities"])

    @property
    def colors(self) -> Tensor:
        """View-independent RGB [N,3] from the SH DC term (not clamped)."""
        return sh0_to_rgb(self.params["sh0"][:, 0, :])

    @property
    def sh(self) -> Tensor:
        """All SH coefficients [N,(deg+1)^2,3]."""
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    def raw(self) -> dict[str, Tensor]:
        """The stored (unactivated) tensors, detached, for export."""
        return {k: v.detach() for k, v in self.params.items()}

    # ----------------------------------------------------------------- state dict
    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, local_metadata, strict, missing_keys,
        unexpected_keys, error_msgs,
    ) -> None:
        # The number of Gaussians changes during training (densify/prune): re-create every
        # parameter at the saved shape before the copy, including extra registered keys.
        head = prefix + "params."
        for key, value in state_dict.items():
            if not key.startswith(head):
                continue
            name = key[len(head):]
            if "." in name:
                continue
            old = self.params[name] if name in self.params else None
            if old is None or old.shape != value.shape:
                device = old.device if old is not None else value.device
                requires_grad = old.requires_grad if old is not None else True
                self.params[name] = nn.Parameter(
                    torch.empty(value.shape, dtype=value.dtype, device=device),
                    requires_grad=requires_grad,
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
