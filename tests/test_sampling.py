"""Per-Gaussian feature sampling: the C++ kernel is torch's grid_sample, values and gradients."""

from __future__ import annotations

import pytest
import torch

from ds4d_cli.model.sampling import _kernel_for, sample_maps, sample_maps_torch
from ds4d_cli.render import build

pytestmark = pytest.mark.skipif(build.load() is None, reason="C++ kernel library not built")


def _case(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(2, 3, 5, 7, 9, generator=g, dtype=dtype).requires_grad_(True)  # B, V, C, h, w
    # inside, near and beyond every edge, exactly on pixel centres and the image border
    grid = torch.rand(3, 60, 2, generator=g, dtype=dtype) * 2.6 - 1.3
    grid[:, 0] = torch.tensor([-1.0, -1.0], dtype=dtype)
    grid[:, 1] = torch.tensor([1.0, 1.0], dtype=dtype)
    grid[:, 2] = torch.tensor([1.0 / 9 - 1, 1.0 / 7 - 1], dtype=dtype)
    return maps, grid


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_kernel_equals_grid_sample(dtype, tol):
    maps, grid = _case(dtype)
    assert _kernel_for(maps, grid) is not None
    ours, ref = sample_maps(maps, grid), sample_maps_torch(maps, grid)
    assert ours.shape == ref.shape == (2, 3, 60, 5)
    assert torch.allclose(ours, ref, atol=tol, rtol=0)
    w = torch.randn(ours.shape, dtype=dtype)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), maps)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), maps)
    assert torch.allclose(g_ours, g_ref, atol=tol * 10, rtol=0)


def test_gradcheck_in_double():
    maps, grid = _case(torch.float64, seed=1)
    assert torch.autograd.gradcheck(lambda m: sample_maps(m, grid), (maps,), eps=1e-6, atol=1e-8)


def test_grid_gradients_use_torch():
    maps, grid = _case(torch.float32)
    grid.requires_grad_(True)
    assert _kernel_for(maps, grid) is None
    (g,) = torch.autograd.grad(sample_maps(maps, grid).sum(), grid)
    assert g.abs().sum() > 0
