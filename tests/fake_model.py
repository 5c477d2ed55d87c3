"""A tiny hand-made dynamic model with the fitted model's interface, for export/eval tests.

A static blob of Gaussians (the "tower") plus a few that travel along +X over the clip (the
"blade"), rendered with ds4d_cli.render. It exposes what ``load_fitted(ws)`` returns:
``num_frames``, ``frame_times``, ``gaussians_at(i)`` (raw layout: log-scales, opacity logits,
SH) and ``render(i, viewmats, Ks, width, height, background)``.
"""

from __future__ import annotations

import math

import torch

from ds4d_cli.render import render

SH_C0 = 0.28209479177387814


class FakeModel:
    def __init__(self, num_frames: int = 4, n_static: int = 40, n_moving: int = 8, sh_degree: int = 0,
                 seed: int = 0, travel: float = 0.4, extra_bad: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.num_frames = num_frames
        self.frame_times = [i / num_frames for i in range(num_frames)]
        self.sh_degree = sh_degree
        n = n_static + n_moving
        means = torch.randn(n, 3, generator=g) * torch.tensor([0.08, 0.08, 0.25])
        means[n_static:] = torch.tensor([-0.2, -0.15, 0.25]) + 0.03 * torch.randn(n_moving, 3, generator=g)
        self.base_means = means
        self.moving = torch.zeros(n, dtype=torch.bool)
        self.moving[n_static:] = True
        self.travel = travel
        self.quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
        self.log_scales = torch.log(torch.rand(n, 3, generator=g) * 0.04 + 0.02)
        self.opacity_logits = torch.full((n,), 3.0)
        rgb = torch.rand(n, 3, generator=g)
        rgb[n_static:] = torch.tensor([0.9, 0.1, 0.1])
        self.sh0 = ((rgb - 0.5) / SH_C0)[:, None, :]
        k = (sh_degree + 1) ** 2 - 1
        self.shN = 0.3 * torch.randn(n, k, 3, generator=g)
        if extra_bad:  # one NaN Gaussian and one invisible one, which export must drop
            self.base_means = torch.cat([self.base_means, torch.tensor([[math.nan, 0.0, 0.0], [0.0, 0.0, 0.0]])])
            self.moving = torch.cat([self.moving, torch.tensor([False, False])])
            self.quats = torch.cat([self.quats, torch.tensor([[1.0, 0, 0, 0]] * 2)])
            self.log_scales = torch.cat([self.log_scales, torch.full((2, 3), math.log(0.05))])
            self.opacity_logits = torch.cat([self.opacity_logits, torch.tensor([3.0, -10.0])])
            self.sh0 = torch.cat([self.sh0, torch.zeros(2, 1, 3)])
            self.shN = torch.cat([self.shN, torch.zeros(2, k, 3)])

    def means_at(self, i: int) -> torch.Tensor:
        shift = torch.tensor([self.travel * self.frame_times[i], 0.0, 0.0])
        return self.base_means + self.moving[:, None].float() * shift

    def gaussians_at(self, i: int) -> dict[str, torch.Tensor]:
        return {"means": self.means_at(i), "quats": self.quats, "scales": self.log_scales,
                "opacities": self.opacity_logits, "sh0": self.sh0, "shN": self.shN}

    def render(self, i, viewmats, Ks, width, height, background=None):
        keep = torch.isfinite(self.means_at(i)).all(dim=1)
        if self.sh_degree > 0:
            colors, deg = torch.cat([self.sh0, self.shN], dim=1)[keep], self.sh_degree
        else:
            colors, deg = (0.5 + SH_C0 * self.sh0[:, 0, :])[keep], None
        return render(self.means_at(i)[keep], self.quats[keep], torch.exp(self.log_scales[keep]),
                      torch.sigmoid(self.opacity_logits[keep]), colors, viewmats, Ks, width, height,
                      background=background, sh_degree=deg)
