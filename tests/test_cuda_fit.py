"""A fit at the CUDA defaults, on CPU tensors, through the ``cuda`` backend with gsplat's kernels
emulated (:mod:`ds4d_cli.render.testing`): the trainer's use of what the CUDA path returns,
gsplat's DefaultStrategy densifying on it, and agreement with the CPU backend.

Black-box on purpose: only ``Trainer(data, cfg, device)``, ``step()``, ``gaussians`` and
``state_dict()`` are used, so the trainer's internals may change freely.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ds4d_cli.render.testing import emulated_gsplat_cuda

sys.path.insert(0, str(Path(__file__).parent))
from fit_workspace import build_workspace  # noqa: E402


@pytest.fixture(scope="module")
def cuda_defaults():
    """FitOptions as ``resolve_options`` fills them on a CUDA machine (only its CUDA probe is faked)."""
    from ds4d_cli.stages.fit import FitOptions, resolve_options

    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)
        o = resolve_options(FitOptions(device="auto"))
    assert o.device == "cuda" and o.batch_frames == 4 and o.resolution == 256 and o.num_gaussians == 20000
    return o


@pytest.fixture(scope="module")
def fit_data(cuda_defaults, tmp_path_factory, windmill_dir):
    from ds4d_cli.stages.fit import load_fit_data

    ws = build_workspace(tmp_path_factory.mktemp("cudafit"), windmill_dir, ["az090"], [0, 3, 6, 9, 12], size=64)
    data, _ = load_fit_data(ws, replace(cuda_defaults, resolution=32))
    return data


def _trainer(cuda_defaults, data, backend: str, **cfg):
    """CUDA defaults (batch of 4 frames, SH degree, learning rates, schedules) at tiny sizes."""
    from ds4d_cli.model.trainer import Trainer
    from ds4d_cli.stages.fit import train_config

    o = replace(cuda_defaults, device="cpu", backend=backend, resolution=32, steps=40, num_gaussians=200,
                max_gaussians=2000, densify_every=3)
    c = train_config(o)
    for k, v in cfg.items():
        setattr(c, k, v)
    return Trainer(data, c, device=o.device)


def _first_step_grads(trainer) -> tuple[float, dict[str, torch.Tensor], dict]:
    grads: dict[str, torch.Tensor] = {}
    for name, p in trainer.gaussians.params.items():
        if p.numel():
            p.register_hook(lambda g, name=name: grads.__setitem__(name, g.detach().clone()))
    stats = trainer.step()
    return stats.loss, grads, trainer.state_dict()["strategy_state"]


def test_cuda_default_step_matches_cpu_backend(cuda_defaults, fit_data):
    """Step 1 from the same seed: same loss, same gradient on every Gaussian parameter, and the same
    densification statistics (so ``info``'s means2d grads, radii, n_cameras and size are consumed alike)."""
    with emulated_gsplat_cuda() as calls:
        loss_gpu, grads_gpu, state_gpu = _first_step_grads(_trainer(cuda_defaults, fit_data, "cuda"))
        assert calls["rasterize_to_pixels_3dgs_fwd"] >= 2 and calls["rasterize_to_pixels_3dgs_bwd"] == 1
    loss_cpu, grads_cpu, state_cpu = _first_step_grads(_trainer(cuda_defaults, fit_data, "cpu"))
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-5)
    assert grads_cpu.keys() == grads_gpu.keys() and {"means", "scales", "quats", "opacities", "sh0"} <= grads_cpu.keys()
    for name, ref in grads_cpu.items():
        got = grads_gpu[name]
        if name == "quats":  # isotropic at initialisation: a rotation changes nothing yet
            assert torch.allclose(got, ref, atol=1e-7), name
            continue
        assert ref.abs().max() > 0, name
        assert ((got - ref).norm() / ref.norm()) < 1e-4, name
    for key in ("grad2d", "count"):
        assert state_cpu[key].abs().sum() > 0, key
        assert torch.allclose(state_gpu[key], state_cpu[key], rtol=1e-4, atol=1e-9), key


def _snapshot(trainer) -> dict:
    """state_dict() with every tensor copied (it shares storage with the live parameters)."""
    sd = trainer.state_dict()
    return {k: {n: t.clone() for n, t in sd[k].items()} for k in ("gaussians", "deform")}


def test_cuda_default_fit_densifies_and_trains(cuda_defaults, fit_data):
    with emulated_gsplat_cuda():
        tr = _trainer(cuda_defaults, fit_data, "cuda", grow_grad2d=1e-9)
        before = _snapshot(tr)
        n0 = tr.gaussians.num_gaussians
        losses = [tr.step().loss for _ in range(4)]  # refinement at step 3
        n1 = tr.gaussians.num_gaussians
        after = tr.state_dict()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert n1 > n0, "DefaultStrategy must have grown the set from the cuda path's info"
    for key, p in tr.gaussians.params.items():
        assert p.shape[0] == n1, key
        assert torch.isfinite(p).all(), key
    for key in ("means", "scales", "quats", "opacities", "sh0"):
        # survivors moved: gradients reached every Gaussian parameter (the first n0 keep their rows)
        assert not torch.equal(after["gaussians"][key][: n0 // 2], before["gaussians"][key][: n0 // 2]), key
    moved = [k for k, v in before["deform"].items() if not torch.equal(v, after["deform"][k])]
    assert len(moved) >= len(before["deform"]) // 2, "gradients must reach the deformation network"
