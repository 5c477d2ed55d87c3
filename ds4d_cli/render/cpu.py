"""CPU backend: tiled front-to-back compositor (placeholder: delegates to the dense reference
until the tiled kernel lands)."""

from __future__ import annotations

from torch import Tensor

from . import dense


def composite(means2d: Tensor, conics: Tensor, feats: Tensor, opacities: Tensor, depths: Tensor,
              radii: Tensor, width: int, height: int) -> tuple[Tensor, Tensor]:
    valid = (radii > 0).all(dim=-1)
    return dense.composite(means2d, conics, feats, opacities, depths, valid, width, height)
