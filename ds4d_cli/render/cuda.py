"""CUDA backend: gsplat's tile intersection and rasterizer on our projection.

Our projection (same maths as gsplat's) runs in torch on the GPU; gsplat's CUDA kernels sort
the tile intersections and composite. Going through the lower-level calls, not
``gsplat.rasterization``, lets every camera carry its own deformed copy of the Gaussians
([C,N,...] inputs) and keeps ``info`` identical across backends.

gsplat's rasterizer is float32 only (and its tile sort reads depths as float32 bits), so other
dtypes are composited in float32 and the results cast back; autograd follows the casts.
Proven on the CPU against the CPU backend with the kernels emulated (tests/test_cuda_backend.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .projection import num_tiles

TILE = 16


def composite(means2d: Tensor, conics: Tensor, feats: Tensor, opacities: Tensor, depths: Tensor,
              radii: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Accumulated features [C,H,W,D] (no background) and alpha [C,H,W,1] via gsplat CUDA."""
    from gsplat.cuda._wrapper import isect_offset_encode, isect_tiles, rasterize_to_pixels

    dtype = feats.dtype
    means2d, conics, feats, opacities, depths = (
        t.float() for t in (means2d, conics, feats, opacities, depths))
    C = means2d.shape[0]
    tw, th = num_tiles(width, TILE), num_tiles(height, TILE)
    _, isect_ids, flatten_ids = isect_tiles(
        means2d.detach().contiguous(), radii.to(torch.int32).contiguous(), depths.detach().contiguous(),
        TILE, tw, th,
    )
    offsets = isect_offset_encode(isect_ids, C, tw, th)
    img, alpha = rasterize_to_pixels(
        means2d, conics.contiguous(), feats.contiguous(), opacities.contiguous(),
        width, height, TILE, offsets, flatten_ids,
    )
    return img.to(dtype), alpha.to(dtype)
