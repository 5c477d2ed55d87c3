"""Dense reference compositor: every pixel against every Gaussian, in depth order.

Deliberately plain (no tiles, no culling beyond the projection's validity test) so that it
can serve as the ground truth for the tiled backends and as the benchmark baseline. Pixels are
processed in chunks (recomputed in backward through checkpointing) so that memory stays
bounded; the maths is unaffected.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN, pixel_centers


def _composite_chunk(
    pix: Tensor, means2d: Tensor, conics: Tensor, opacities: Tensor, feats: Tensor, valid: Tensor
) -> tuple[Tensor, Tensor]:
    """pix [P,2]; Gaussians [N,...] already sorted front to back. Returns [P,D], [P]."""
    d = pix[:, None, :] - means2d[None, :, :]
    dx, dy = d[..., 0], d[..., 1]
    sigma = 0.5 * (conics[:, 0] * dx * dx + conics[:, 2] * dy * dy) + conics[:, 1] * dx * dy
    usable = valid[None, :] & (sigma >= 0)
    sigma = torch.where(usable, sigma, torch.full_like(sigma, 1e4))
    alpha = torch.clamp_max(opacities[None, :] * torch.exp(-sigma), ALPHA_MAX)
    alpha = torch.where(usable & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    with torch.no_grad():
        # A Gaussian that would bring transmittance to <= T_MIN ends the ray (exclusive);
        # transmittance only falls, so the rule is a prefix mask.
        contributes = torch.cumprod(1.0 - alpha, dim=1) > T_MIN
    alpha = alpha * contributes
    trans = torch.cumprod(1.0 - alpha, dim=1)
    trans = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=1)
    weights = alpha * trans
    return weights @ feats, weights.sum(dim=1)


def composite(
    means2d: Tensor,  # [C,N,2]
    conics: Tensor,  # [C,N,3]
    feats: Tensor,  # [C,N,D]
    opacities: Tensor,  # [C,N]
    depths: Tensor,  # [C,N]
    valid: Tensor,  # [C,N] bool
    width: int,
    height: int,
    max_chunk_elems: int = 1 << 22,
) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of all Gaussians at all pixels.

    Returns the accumulated features [C,H,W,D] (no background) and alpha [C,H,W,1].
    """
    C, N, D = feats.shape
    pix = pixel_centers(width, height, dtype=means2d.dtype, device=means2d.device)
    chunk = max(1, max_chunk_elems // max(N, 1))
    use_ckpt = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, feats, opacities)
    )
    images, alphas = [], []
    for c in range(C):
        key = torch.where(valid[c], depths[c], torch.full_like(depths[c], float("inf")))
        order = torch.argsort(key.detach(), stable=True)
        args = (means2d[c, order], conics[c, order], opacities[c, order], feats[c, order], valid[c, order])
        img_parts, alpha_parts = [], []
        for start in range(0, pix.shape[0], chunk):
            p = pix[start : start + chunk]
            if use_ckpt:
                out = checkpoint(_composite_chunk, p, *args, use_reentrant=False)
            else:
                out = _composite_chunk(p, *args)
            img_parts.append(out[0])
            alpha_parts.append(out[1])
        images.append(torch.cat(img_parts).reshape(height, width, D))
        alphas.append(torch.cat(alpha_parts).reshape(height, width, 1))
    return torch.stack(images), torch.stack(alphas)
