"""HexPlane: a factorised 4D (x, y, z, t) feature field, as in 4D Gaussian Splatting.

Six learnable 2D grids (xy, xz, yz for space; xt, yt, zt for space-time) at a few spatial
resolutions. A point's feature at one resolution is the product of its six bilinear samples;
resolutions are concatenated. Time planes start at 1 so that, at initialisation, the field does
not depend on time (the deformation starts static and learns motion where the images demand it).

Why factorised: N Gaussians x B frames of lookups cost six 2D samples each, instead of a dense
4D grid that would not fit in memory at any useful resolution.

On the CPU the field and its backward run fused in the C++ kernel library
(``render/csrc/hexplane.cpp``; twelve ``grid_sample`` calls, whose backward runs on one thread,
took 50-60 ms of every default step); the torch path below stays for CUDA, for gradients to the
points or times, and when the library does not build. Both give the same values and gradients
(tests/test_deformation.py).
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
        p = (xyz / self.bound).clamp(-1, 1)
        tt = (t * 2 - 1).clamp(-1, 1)
        lib = self._kernel_for(p, tt)
        if lib is not None:
            return _FusedHexPlane.apply(p, tt, lib, self.channels, self.num_levels, *self.space, *self.time)
        return self.forward_torch(p, tt)

    def _kernel_for(self, p: Tensor, tt: Tensor):
        """The loaded C++ library when the fused path applies, else None."""
        if p.device.type != "cpu" or p.requires_grad or tt.requires_grad or self.channels > 64:
            return None
        if min(min(q.shape[2:]) for q in (*self.space, *self.time)) < 2:
            return None
        if p.dtype not in (torch.float32, torch.float64) or any(q.dtype != p.dtype for q in self.parameters()):
            return None
        from ..render import build

        return build.load()

    def forward_torch(self, p: Tensor, tt: Tensor) -> Tensor:
        """The field in plain torch (``grid_sample``) at normalised points ``p`` and times ``tt``."""
        n, b = p.shape[0], tt.shape[0]
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


class _FusedHexPlane(torch.autograd.Function):
    """HexPlane forward/backward in the C++ library; gradients to the planes only."""

    @staticmethod
    def forward(ctx, p: Tensor, tt: Tensor, lib, channels: int, levels: int, *planes: Tensor) -> Tensor:  # type: ignore[override]
        from ..render.cpu import _sfx, kernel_threads

        space, time = planes[: 3 * levels], planes[3 * levels :]
        ordered = [q for lvl in range(levels) for q in (*space[3 * lvl : 3 * lvl + 3], *time[3 * lvl : 3 * lvl + 3])]
        # channels-last, all planes in one buffer: a point's C channels are adjacent in memory
        flat = torch.cat([q.detach()[0].permute(1, 2, 0).reshape(-1) for q in ordered])
        sizes = torch.tensor([q[0].numel() for q in ordered], dtype=torch.int64)
        offsets = torch.cumsum(sizes, 0) - sizes
        res = torch.tensor([space[3 * lvl].shape[-1] for lvl in range(levels)], dtype=torch.int32)
        rows = int(time[0].shape[2])
        pc, tc = p.detach().contiguous(), tt.detach().contiguous()
        n, b = pc.shape[0], tc.shape[0]
        out = torch.empty(b, n, levels * channels, dtype=pc.dtype)
        sfx, nt = _sfx(pc.dtype), kernel_threads()
        getattr(lib, f"ds4d_hexplane_{sfx}")(
            n, b, channels, levels, res.data_ptr(), rows, flat.data_ptr(), offsets.data_ptr(), pc.data_ptr(),
            tc.data_ptr(), out.data_ptr(), nt,
        )
        ctx.save_for_backward(pc, tc, flat, offsets, res)
        ctx.meta = (lib, sfx, nt, channels, levels, rows, [tuple(q.shape) for q in ordered])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        pc, tc, flat, offsets, res = ctx.saved_tensors
        lib, sfx, nt, channels, levels, rows, shapes = ctx.meta
        g = grad.to(flat.dtype).contiguous()
        gflat = torch.empty_like(flat)
        getattr(lib, f"ds4d_hexplane_backward_{sfx}")(
            pc.shape[0], tc.shape[0], channels, levels, res.data_ptr(), rows, flat.data_ptr(), offsets.data_ptr(),
            flat.numel(), pc.data_ptr(), tc.data_ptr(), g.data_ptr(), gflat.data_ptr(), nt,
        )
        grads = []
        for start, shape in zip(offsets.tolist(), shapes):
            _, c, h, w = shape
            grads.append(gflat[start : start + c * h * w].view(h, w, c).permute(2, 0, 1).unsqueeze(0))
        space = [q for lvl in range(levels) for q in grads[6 * lvl : 6 * lvl + 3]]
        time = [q for lvl in range(levels) for q in grads[6 * lvl + 3 : 6 * lvl + 6]]
        return (None, None, None, None, None, *space, *time)
