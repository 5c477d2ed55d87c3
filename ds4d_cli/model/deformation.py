"""Deformation head: fused frame feature + HexPlane feature -> (d_mean, d_rot, d_scale).

    h = Linear(concat(fused_feature, hexplane(x, t)))
    h = MLP(h)                                 (ReLU, ``depth`` hidden layers of ``width``)
    d_mean, d_rot, d_scale = three linear heads

The heads start at zero, so the canonical Gaussians are rendered unchanged at step 0.
Offsets are added to the canonical mean, the (wxyz, unnormalised) quaternion and the log-scale.

``scale_bound`` (> 0) limits the log-scale offset to +-scale_bound (a smooth tanh clamp). Why:
unbounded, a moving part is not followed but faded: measured on a fitted windmill, the
Gaussians on the blades changed their log-volume by a median of 9.6 over the clip (static ones
0.13) and travelled 0.1 (the blade tips sweep arcs of about 0.7), i.e. each frame's blades were
different Gaussians shrunk to nothing in the other frames. A moving rigid part needs no scale
change, so a bounded one leaves moving as the only way to follow it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .hexplane import HexPlane


@dataclass
class Deformed:
    means: Tensor  # [B, N, 3]
    quats: Tensor  # [B, N, 4] wxyz, unnormalised
    scales: Tensor  # [B, N, 3] log
    d_means: Tensor  # [B, N, 3], the offsets (for regularisers)


class DeformationNet(nn.Module):
    def __init__(
        self,
        feat_dim: int,
        bound: float = 1.0,
        time_resolution: int = 16,
        hex_channels: int = 16,
        hex_resolutions: tuple[int, ...] = (32, 64),
        width: int = 64,
        depth: int = 2,
        scale_bound: float = 0.0,
    ) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.scale_bound = float(scale_bound)
        self.hexplane = HexPlane(bound, hex_channels, hex_resolutions, time_resolution)
        self.join = nn.Linear(feat_dim + self.hexplane.out_dim, width)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.ReLU(), nn.Linear(width, width)]
        layers.append(nn.ReLU())
        self.mlp = nn.Sequential(*layers)
        self.head_mean = nn.Linear(width, 3)
        self.head_rot = nn.Linear(width, 4)
        self.head_scale = nn.Linear(width, 3)
        for head in (self.head_mean, self.head_rot, self.head_scale):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def offsets(self, xyz: Tensor, t: Tensor, feat: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(d_mean, d_rot, d_scale), each [B, N, .]; ``feat`` [B, N, feat_dim] or None if 0-dim."""
        hex_f = self.hexplane(xyz, t)
        x = hex_f if feat is None or self.feat_dim == 0 else torch.cat([feat, hex_f], dim=-1)
        h = self.mlp(self.join(x))
        d_scale = self.head_scale(h)
        if self.scale_bound > 0:
            d_scale = self.scale_bound * torch.tanh(d_scale / self.scale_bound)
        return self.head_mean(h), self.head_rot(h), d_scale

    def forward(self, means: Tensor, quats: Tensor, log_scales: Tensor, t: Tensor, feat: Tensor | None) -> Deformed:
        dm, dr, ds = self.offsets(means.detach(), t, feat)
        return Deformed(means.unsqueeze(0) + dm, quats.unsqueeze(0) + dr, log_scales.unsqueeze(0) + ds, dm)
