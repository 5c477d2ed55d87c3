"""Run small torch sub-graphs single-threaded, forward and backward.

The renderer's torch work outside the kernel (projection, SH, binning, gradient gathering) is
many small element-wise ops on [C,N,...] tensors. With an OpenMP thread pool on a busy
machine each of them can wait milliseconds for a descheduled worker (measured on the 2-core
dev box: ``sqrt`` of 100k floats, 8 ms with 2 threads vs 0.04 ms with 1), which made the
projection 60x slower than single-threaded. :func:`run_serial` evaluates such a sub-graph
with one intra-op thread, and its backward too (a custom autograd.Function that keeps the
inner graph). Disable with ``DS4D_RENDER_SERIAL=0``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor


def enabled() -> bool:
    return os.environ.get("DS4D_RENDER_SERIAL", "1").lower() not in ("0", "off", "false", "no")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Temporarily use a single intra-op thread (no-op when disabled or already 1)."""
    n = torch.get_num_threads()
    if n == 1 or not enabled():
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _differentiable(t) -> bool:
    return isinstance(t, Tensor) and t.is_floating_point()


class _Serial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, n_inputs, *inputs):
        leaves = [
            x.detach().requires_grad_(x.requires_grad) if _differentiable(x) else x for x in inputs
        ]
        with torch.enable_grad(), one_thread():
            outs = tuple(fn(*leaves))
        ctx.leaves = leaves
        ctx.outs = outs
        returned = tuple(o.detach() for o in outs)
        ctx.mark_non_differentiable(
            *[r for r, o in zip(returned, outs) if not (_differentiable(o) and o.requires_grad)]
        )
        return returned

    @staticmethod
    def backward(ctx, *grads):
        outs, gouts = [], []
        for o, g in zip(ctx.outs, grads):
            if _differentiable(o) and o.requires_grad and g is not None:
                outs.append(o)
                gouts.append(g)
        wants = [i for i, x in enumerate(ctx.leaves) if _differentiable(x) and x.requires_grad]
        result: list = [None] * len(ctx.leaves)
        if outs and wants:
            with one_thread():
                # keep the inner graph: the caller may backward again (retain_graph=True)
                got = torch.autograd.grad(
                    outs, [ctx.leaves[i] for i in wants], gouts, allow_unused=True, retain_graph=True
                )
            for i, g in zip(wants, got):
                result[i] = g
        return (None, None, *result)


def run_serial(fn: Callable[..., Sequence], *inputs) -> tuple:
    """``fn(*inputs)`` (returning a tuple of tensors, no ``None``) evaluated single-threaded, with autograd.

    Without grad needed, or when disabled, this is a plain call under :func:`one_thread`.
    """
    needs_grad = torch.is_grad_enabled() and any(
        _differentiable(x) and x.requires_grad for x in inputs
    )
    if not needs_grad or not enabled():
        with one_thread():
            return tuple(fn(*inputs))
    return _Serial.apply(fn, len(inputs), *inputs)
