"""DSFD — dynamic-static feature decoupling along time (parameter-free).

For one view and one Gaussian, ``f[t]`` is the feature it samples from frame ``t``. With a
reference feature ``R`` that summarises the clip,

    R = a * f[t_mid] + (1 - a) * mean_t f[t]            (a = 0.5, our choice; see below)
    S[t] = (<f[t], R> / (<R, R> + eps)) * R             static part: projection onto R
    D[t] = f[t] - S[t]                                  dynamic part, orthogonal to R
    g[t] = concat(f[t], D[t])                           decoupled feature

A static pixel has f[t] equal over time, hence parallel to R, hence D = 0: only what changes
relative to the clip's "average look" survives in D. The paper does not say how R combines the
middle frame and the temporal mean; an equal mix keeps R anchored on the frame the Gaussians are
initialised on while averaging out one-frame noise. Everything is along the last (channel) axis,
so the same functions serve sampled per-Gaussian features and whole feature maps.
"""

from __future__ import annotations

import torch
from torch import Tensor

MID_WEIGHT = 0.5


def reference_feature(f_mid: Tensor, f_mean: Tensor, mid_weight: float = MID_WEIGHT) -> Tensor:
    """R = a * f_mid + (1 - a) * f_mean."""
    return mid_weight * f_mid + (1.0 - mid_weight) * f_mean


def reference_from_clip(f: Tensor, time_dim: int = 0, mid_weight: float = MID_WEIGHT) -> Tensor:
    """R from a whole clip ``f`` (time along ``time_dim``); the middle frame is T // 2."""
    t = f.shape[time_dim]
    f_mid = f.select(time_dim, t // 2)
    return reference_feature(f_mid, f.mean(dim=time_dim), mid_weight)


def decouple(f: Tensor, ref: Tensor, dim: int = -1, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Split ``f`` into (static, dynamic): projection onto ``ref`` and the orthogonal rest.

    ``ref`` broadcasts against ``f`` (e.g. [V, N, C] against [B, V, N, C]).
    """
    coef = (f * ref).sum(dim, keepdim=True) / ((ref * ref).sum(dim, keepdim=True) + eps)
    static = coef * ref
    return static, f - static


def dsfd(f: Tensor, ref: Tensor, dim: int = -1, eps: float = 1e-6) -> Tensor:
    """Decoupled feature g = concat(f, D) along ``dim`` (twice the channels)."""
    _, dynamic = decouple(f, ref, dim=dim, eps=eps)
    return torch.cat([f, dynamic], dim=dim)
