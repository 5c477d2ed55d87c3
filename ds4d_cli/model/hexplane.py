"""HexPlane: a factorised 4D (x, y, z, t) feature field, as in 4D Gaussian Splatting.

Six learnable 2D grids (xy, xz, yz for space; xt, yt, zt for space-time) at a few spatial
resolutions. A point's feature at one resolution is the product of its six bilinear samples;
resolutions are concatenated. Time planes start at 1 so that, at initialisation, the field does
not depend on time (the deformation starts static and learns motion where the images demand it).

Why factorised: N Gaussians x B frames of lookups cost six 2D samples each, instead of a dense
4D grid that would not fit in memory at any useful resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SPACE = ((0, 1), (0, 2), (1, 2))
_TIME = (0, 1, 2)


class HexPlane(nn.Module):
    def __init__(
        self,
        bound: float = 1.0,
        channels: int = 16,
        resolutions: tuple[int, ...] = (32, 64),
        time_resolution: int = 16,
    ) -> None:
        super().__init__()
        self.bound = float(bound)
        self.channels = channels
        self.space = nn.ParameterList()
        self.time = nn.ParameterList()
        for r in resolutions:
            for _ in _SPACE:
                self.space.append(nn.Parameter(torch.empty(1, channels, r, r).uniform_(0.1, 0.5)))
            for _ in _TIME:
                self.time.append(nn.Parameter(torch.ones(1, channels, time_resolution, r)))
        self.num_levels = len(resolutions)

    @property
    def out_dim(self) -> int:
        return self.channels * self.num_levels

    def forward(self, xyz: Tensor, t: Tensor) -> Tensor:
        """Features [B, N, out_dim] for points ``xyz`` [N, 3] at times ``t`` [B] in [0, 1]."""
        n, b = xyz.shape[0], t.shape[0]
        p = (xyz / self.bound).clamp(-1, 1)
        tt = (t * 2 - 1).clamp(-1, 1)
        feats = []
        for lvl in range(self.num_levels):
            space = None
            for k, (i, j) in enumerate(_SPACE):
                grid = p[:, (i, j)].view(1, 1, n, 2)
                s = F.grid_sample(self.space[lvl * 3 + k], grid, align_corners=True)  # [1,C,1,N]
                space = s if space is None else space * s
            timef = None
            for k, i in enumerate(_TIME):
                # x axis = coordinate, y axis = time
                grid = torch.stack(
                    [p[:, i].view(1, n).expand(b, n), tt.view(b, 1).expand(b, n)], dim=-1
                ).view(1, b, n, 2)
                s = F.grid_sample(self.time[lvl * 3 + k], grid, align_corners=True)  # [1,C,B,N]
                timef = s if timef is None else timef * s
            f = space * timef  # [1, C, B, N]
            feats.append(f[0].permute(1, 2, 0))
        return torch.cat(feats, dim=-1)

    @torch.no_grad()
    def extrapolate_time_row(self, row: int, towards: int, velocity: bool = True) -> None:
        """Set time row ``row`` from the two rows next to it on the side of ``towards``.

        With neighbours ``a`` (next) and ``b`` (the one after) the row becomes ``2a - b``: a
        constant-velocity guess of the next frame's deformation, so that a frame entering the
        temporal curriculum starts where the motion was heading instead of at the untrained
        initial value (a plain copy of ``a`` at the edge of the grid, or with ``velocity`` False:
        a part that reverses, like a flapping wing, is not thrown past its turning point).
        """
        step = 1 if towards > row else -1
        a, b = row + step, row + 2 * step
        for plane in self.time:
            r = plane.shape[2]
            if not 0 <= a < r:
                continue
            extrapolate = velocity and 0 <= b < r
            plane[:, :, row] = 2 * plane[:, :, a] - plane[:, :, b] if extrapolate else plane[:, :, a]

    def smoothness(self) -> Tensor:
        """Temporal smoothness: squared 2nd difference of the time planes along t (4DGS-style)."""
        loss = torch.zeros((), device=self.time[0].device)
        for plane in self.time:
            if plane.shape[2] >= 3:
                d2 = plane[:, :, 2:] - 2 * plane[:, :, 1:-1] + plane[:, :, :-2]
                loss = loss + d2.pow(2).mean()
        return loss / len(self.time)
