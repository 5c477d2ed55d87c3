"""TSSF — similarity fusion of per-view features (the V+1 views of one frame).

Input: ``g`` [B, V, N, C], the (DSFD-decoupled) feature each Gaussian samples from each view
(view 0 is the input/reference view), and ``vis`` [V, N] or [B, V, N] in [0, 1]: how visible the
Gaussian is in that view. Hidden points contribute zeros (``g * vis``) and are left out of the
weights. Output: [B, N, C].

Variants:
- ``mean`` (ablation, ``--no-tssf``): visibility-weighted mean over views.
- ``ga``: a learned logit per view, w = softmax_v(a_v) over visible views, out = sum_v w_v g_v.
- ``da`` (default): distance-aware. The anchor is the input view's feature g_0 (where the point is
  hidden in the input view, the visibility-weighted mean of all views stands in):
      d_v = mean_c |g_v - anchor|                      L1 distance, per point
      w_v = softmax_v(-d_v / (tau * mean_v' d_v'))     closer to the anchor = higher weight
      out = 0.5 * (anchor + sum_v w_v g_v)             combined with the input view's feature
  Dividing by the mean distance makes the weighting independent of the feature scale (which
  drifts while a jointly-trained encoder learns); ``tau`` is a learned temperature. The exact
  weighting is not published; this is our documented choice.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Fusion = Literal["da", "ga", "mean"]
FUSIONS = ("da", "ga", "mean")
_NEG = -1e4


def _vis4(vis: Tensor, g: Tensor) -> Tensor:
    """Visibility as [B, V, N, 1] (broadcast over the batch if given per view only)."""
    if vis.dim() == 2:
        vis = vis.unsqueeze(0)
    return vis.expand(g.shape[0], -1, -1).unsqueeze(-1).to(g.dtype)


def mean_weights(v: Tensor, eps: float = 1e-6) -> Tensor:
    """Visibility-weighted mean's weights vis_v / sum(vis) over dim 1 (all ~0 where hidden everywhere)."""
    return v / (v.sum(1, keepdim=True) + eps)


def mean_fusion(g: Tensor, vis: Tensor) -> Tensor:
    """The ``mean`` fusion (the ``--no-tssf`` ablation): visibility-weighted mean over views."""
    return (mean_weights(_vis4(vis, g)) * g).sum(1)


def masked_softmax(logits: Tensor, vis: Tensor, dim: int = 1) -> Tensor:
    """Softmax over ``dim`` where weights of hidden entries (vis ~ 0) are pushed to zero.

    Multiplying by visibility after the softmax and renormalising keeps soft visibility
    meaningful; a point hidden everywhere gets all-zero weights.
    """
    w = torch.softmax(logits.masked_fill(vis <= 1e-3, _NEG), dim=dim) * vis
    return w / w.sum(dim, keepdim=True).clamp_min(1e-6)


def da_weights(g: Tensor, vis: Tensor, tau: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """Distance-aware weights [B, V, N, 1] and the anchor feature [B, N, C]."""
    v = _vis4(vis, g)
    gv = g * v
    mean = gv.sum(1) / (v.sum(1) + 1e-6)
    v0 = v[:, 0]
    anchor = v0 * gv[:, 0] + (1 - v0) * mean
    dist = (gv - anchor.unsqueeze(1)).abs().mean(-1, keepdim=True)  # [B, V, N, 1]
    scale = (dist * v).sum(1, keepdim=True) / (v.sum(1, keepdim=True) + 1e-6) + 1e-6
    w = masked_softmax(-dist / (scale * tau), v, dim=1)
    return w, anchor


class TSSF(nn.Module):
    """Fuses [B, V, N, C] per-view features into [B, N, C] with one of ``FUSIONS``."""

    def __init__(self, num_views: int, mode: Fusion = "da") -> None:
        super().__init__()
        if mode not in FUSIONS:
            raise ValueError(f"unknown fusion {mode!r}; expected one of {FUSIONS}")
        self.mode = mode
        self.view_logits = nn.Parameter(torch.zeros(num_views)) if mode == "ga" else None
        self.log_tau = nn.Parameter(torch.zeros(())) if mode == "da" else None

    def _weights(self, g: Tensor, vis: Tensor) -> tuple[Tensor, Tensor | None]:
        """(effective weights [B, V, N, 1] that multiply g, DA's anchor [B, N, C] or None).

        Hidden views (soft visibility ~ 0) get ~0: for ``mean`` the weight is vis / sum(vis); for
        ``ga``/``da`` the visibility-masked softmax, times the visibility once more (the feature of a
        half-visible point counts half).
        """
        v = _vis4(vis, g)
        if self.mode == "mean":
            return mean_weights(v), None
        if self.mode == "ga":
            return masked_softmax(self.view_logits.view(1, -1, 1, 1).expand_as(v), v) * v, None
        w, anchor = da_weights(g, vis, self.log_tau.exp())
        return w * v, anchor

    def weights(self, g: Tensor, vis: Tensor) -> Tensor:
        """Per-view weights [B, V, N] -- the very ones :meth:`forward` combines the views with."""
        return self._weights(g, vis)[0].squeeze(-1)

    def forward(self, g: Tensor, vis: Tensor) -> Tensor:
        """sum_v w_v g_v, averaged with DA's anchor (the input view's feature) for ``da``."""
        lib = self._kernel_for(g, vis)
        if lib is not None:
            return _FusedDA.apply(g, vis, self.log_tau, lib)
        return self.forward_torch(g, vis)

    def _kernel_for(self, g: Tensor, vis: Tensor):
        """The loaded C++ library when the fused ``da`` path applies, else None."""
        if self.mode != "da" or g.device.type != "cpu" or g.dtype not in (torch.float32, torch.float64):
            return None
        if vis.dim() != 2 or vis.requires_grad or g.dim() != 4 or g.shape[1] > 16 or g.shape[3] > 128:
            return None
        from ..render import build

        return build.load()

    def forward_torch(self, g: Tensor, vis: Tensor) -> Tensor:
        """:meth:`forward` in plain torch (the definition the C++ kernel is tested against)."""
        w, anchor = self._weights(g, vis)
        fused = (w * g).sum(1)
        return fused if anchor is None else 0.5 * (anchor + fused)


class _FusedDA(torch.autograd.Function):
    """The ``da`` fusion in the C++ library (``render/csrc/tssf.cpp``): [B, V, N, C] -> [B, N, C]."""

    @staticmethod
    def forward(ctx, g: Tensor, vis: Tensor, log_tau: Tensor, lib) -> Tensor:  # type: ignore[override]
        from ..render.cpu import _sfx, kernel_threads

        gc, vc = g.detach().contiguous(), vis.detach().to(g.dtype).contiguous()
        b, v, n, c = gc.shape
        tau = float(log_tau.detach().exp())
        out = torch.empty(b, n, c, dtype=gc.dtype)
        sfx, nt = _sfx(gc.dtype), kernel_threads()
        getattr(lib, f"ds4d_tssf_da_{sfx}")(b, v, n, c, gc.data_ptr(), vc.data_ptr(), tau, out.data_ptr(), nt)
        ctx.save_for_backward(gc, vc)
        ctx.meta = (lib, sfx, nt, tau, log_tau.dtype)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        gc, vc = ctx.saved_tensors
        lib, sfx, nt, tau, tau_dtype = ctx.meta
        b, v, n, c = gc.shape
        go = grad.to(gc.dtype).contiguous()
        gg = torch.empty_like(gc)
        gt = torch.zeros(1, dtype=gc.dtype)
        getattr(lib, f"ds4d_tssf_da_backward_{sfx}")(b, v, n, c, gc.data_ptr(), vc.data_ptr(), tau, go.data_ptr(),
                                                     gg.data_ptr(), gt.data_ptr(), nt)
        return gg, None, gt[0].to(tau_dtype), None
