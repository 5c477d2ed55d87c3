"""`make gpu-check`: the paths CPU CI cannot run, checked in one command on a CUDA machine.

Prints one table:
  1. gsplat's JIT build of its CUDA kernels (seconds; the first use of the ``cuda`` backend);
  2. the ``cuda`` backend against the ``cpu`` one on the render tests' hard scene and on batched
     cameras with per-camera Gaussians: max image/alpha/depth difference, worst relative
     gradient error over every input (and ``info["means2d"]``);
  3. ``ds4d fit`` at its CUDA defaults (256 px, 4 frames/step, 20000 Gaussians) for 500 steps on
     the windmill example (input + az090 + az270, 8 frames): s/step and input-view PSNR;
  4. a tiny random-weight Zero123++ generated in fp16 on CUDA over 2 frames with the STAG4D
     anchor: seconds, dtype, finite latents.

``--dry-run`` runs all of it on the CPU (float32 for step 4; gsplat's kernels replaced by the
stand-ins of ds4d_cli.render.testing; 3 fit steps at 32 px), so the script itself is tested
where there is no GPU (tests/test_gpu_check.py). ``--simulate-bare`` (with ``--dry-run``) reruns
it under ``python -S`` with only torch, torch's own dependencies and the packages of
bench/gpu_wheels.sh's ``bare`` set importable (symlinked from this environment): the wheel list
is complete when that run passes. The table is followed by the third-party distributions the run
imported that the wheel sets do not carry (optional probes of diffusers/transformers show here).

Run from the repository root, with ``PYTHONPATH`` holding the repository and the installed
wheels (the Makefile does this). Exit status 1 if a check failed, 0 otherwise (skips included).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # fit_workspace: the fit tests' workspace builder

#: what torch's own wheel installs (not carried by bench/gpu_wheels.sh)
TORCH_PROVIDED = {"torch", "triton", "filelock", "fsspec", "jinja2", "markupsafe", "networkx", "sympy", "mpmath",
                  "typing-extensions", "setuptools"}
#: imported here by tests/test_render.py (a stand-in replaces it where pytest is absent)
TEST_ONLY = {"pytest", "pluggy", "iniconfig"}
FIT_FRAMES = list(range(0, 24, 3))
FIT_VIEWS = ["az090", "az270"]


# ------------------------------------------------------------------------------------ checks
def check_jit_build(dry: bool) -> dict[str, Any]:
    if dry:
        return {"value": "n/a (dry run: kernels emulated)", "ok": True}
    import torch

    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")  # only this GPU's code
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 8))
    try:  # the ninja wheel's binary, for torch's extension builder
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    t0 = time.perf_counter()
    from gsplat.cuda._backend import _C

    seconds = time.perf_counter() - t0
    if _C is None:
        return {"value": "gsplat found no CUDA toolkit (nvcc)", "ok": False}
    return {"value": f"{seconds:.0f} s (arch {major}.{minor}, MAX_JOBS {os.environ['MAX_JOBS']})", "ok": True,
            "seconds": round(seconds, 1)}


def _render_tests():
    """tests/test_render.py, for its scenes and helpers; a machine without pytest gets a stand-in
    for the decorators it applies at import."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        import types

        class _Mark:
            def __getattr__(self, name):
                return lambda *a, **k: (a[0] if len(a) == 1 and callable(a[0]) and not k else (lambda f: f))

        sys.modules["pytest"] = types.SimpleNamespace(mark=_Mark(), fixture=lambda *a, **k: (lambda f: f))
    import test_render

    return test_render


def _scenes():
    """(name, params, background, cameras) of the render tests' scenes, float32."""
    import torch

    _cameras, _hard_scene = _render_tests()._cameras, _render_tests()._hard_scene

    W, H = 64, 48
    vm, K = _cameras([0.0, 75.0], [0.0, 25.0], W, H)
    hard = ("hard scene, 2 cameras", _hard_scene(torch.float32), torch.tensor([[0.2, 0.3, 0.4], [1.0, 1.0, 1.0]]),
            vm, K, W, H, {})
    g = torch.Generator().manual_seed(3)
    C, n = 4, 400
    base = torch.randn(n, 3, generator=g) * 0.4
    means = torch.stack([base + 0.05 * c * torch.randn(n, 3, generator=g) for c in range(C)])
    params = [means, torch.randn(C, n, 4, generator=g), torch.rand(C, n, 3, generator=g) * 0.1 + 0.02,
              torch.rand(n, generator=g) * 0.9 + 0.05, torch.randn(n, 4, 3, generator=g) * 0.4]
    vm4, K4 = _cameras([0.0, 90.0, 200.0, 300.0], [0.0, 20.0, -10.0, 35.0], W, H)
    batched = ("per-camera Gaussians, SH, 4 cameras", params, torch.rand(C, 3, generator=g), vm4, K4, W, H,
               {"sh_degree": 1})
    return [hard, batched]


def check_render(device: str) -> dict[str, Any]:
    import torch

    GRAD_NAMES, _render_with_grads = _render_tests().GRAD_NAMES, _render_tests()._render_with_grads

    worst_img, worst_grad, parts = 0.0, 0.0, []
    for name, params, bg, vm, K, W, H, kw in _scenes():
        ref, ref_grads = _render_with_grads("cpu", params, vm, K, W, H, bg, **kw)
        dev = torch.device(device)
        out, grads = _render_with_grads("cuda", [p.to(dev) for p in params], vm.to(dev), K.to(dev), W, H,
                                        bg.to(dev), **kw)
        assert out.info["backend"] == "cuda"
        img = max(float((getattr(out, k).detach().cpu() - getattr(ref, k).detach()).abs().max())
                  for k in ("rgb", "alpha", "depth"))
        rel = max(float((g.cpu() - r).norm() / r.norm().clamp_min(1e-12)) for g, r in zip(grads, ref_grads))
        worst_img, worst_grad = max(worst_img, img), max(worst_grad, rel)
        parts.append(f"{name}: {img:.1e} / {rel:.1e}")
    ok = worst_img < 1e-4 and worst_grad < 1e-3
    return {"value": f"max |image diff| {worst_img:.1e}, worst grad rel. error {worst_grad:.1e} "
                     f"({len(GRAD_NAMES)} tensors)", "ok": ok, "detail": "; ".join(parts),
            "max_image_diff": worst_img, "max_grad_rel_error": worst_grad}


def check_fit(example: Path, work: Path, dry: bool, steps: int) -> dict[str, Any]:
    from fit_workspace import build_workspace

    from ds4d_cli.stages import fit

    frames = FIT_FRAMES[:3] if dry else FIT_FRAMES
    ws = build_workspace(work / "fit_ws", example, FIT_VIEWS, frames, size=64 if dry else 256)
    if dry:  # CUDA defaults where they do not cost time; tiny sizes; the emulated cuda backend
        opts = fit.FitOptions(device="cpu", backend="cuda", steps=steps, resolution=32, batch_frames=4,
                              num_gaussians=300, max_gaussians=2000, opacity_reset_every=3000,
                              checkpoint_every=0, preview_every=0, log_every=1)
    else:
        opts = fit.FitOptions(device="cuda", backend="cuda", steps=steps, checkpoint_every=0, preview_every=0,
                              log_every=50)
    t0 = time.perf_counter()
    result = fit.run(ws, opts, force=True)
    wall = time.perf_counter() - t0
    s = result.summary
    psnr = s["psnr"]["input"]
    ok = psnr == psnr and (dry or psnr > 20.0)
    return {"value": f"{s['seconds_per_step'] * 1000:.0f} ms/step, input-view PSNR {psnr:.2f} dB "
                     f"({s['steps']} steps at {s['resolution']} px, {s['gaussians']} Gaussians, {wall:.0f} s)",
            "ok": ok, "seconds_per_step": s["seconds_per_step"], "psnr_input": psnr, "psnr": s["psnr"]}


def check_zero123pp(example: Path, work: Path, device: str, view_size: int, steps: int) -> dict[str, Any]:
    import torch
    from PIL import Image

    from ds4d_cli.priors.layout import split_grid
    from ds4d_cli.priors.loading import load_zero123pp
    from ds4d_cli.priors.ref_attention import AnchorCache
    from ds4d_cli.priors.testing import build_tiny_zero123pp

    folder = work / "tiny_zero123pp"
    build_tiny_zero123pp(work / "tiny_scratch").save_pretrained(folder)
    pipe = load_zero123pp(str(folder), device=device)  # fp16 on CUDA, fp32 on CPU
    dtype = pipe.unet.dtype
    anchor = AnchorCache()
    noise = pipe.prepare_noise(torch.Generator().manual_seed(0), view_size=view_size)
    t0 = time.perf_counter()
    grids = []
    for f in (0, 3):
        image = Image.open(example / "input" / f"{f:03d}.png").convert("RGBA")
        out = pipe(image, num_inference_steps=steps, latents=noise, anchor=anchor, view_size=view_size,
                   generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(out.latents).all(), "non-finite latents"
        grids.append(out.images[0])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tiles = split_grid(grids[1])
    ok = len(tiles) == 6 and tiles[0].shape == (view_size, view_size, 3) and anchor.recorded
    return {"value": f"{seconds:.1f} s for 2 frames x {steps} steps at {view_size} px views, {str(dtype).replace('torch.', '')} "
                     f"on {pipe.device}, anchor cache {anchor.nbytes / 1e6:.1f} MB on {anchor.device}", "ok": ok,
            "seconds": round(seconds, 2), "dtype": str(dtype)}


# ------------------------------------------------------------------------------ wheel audit
def wheel_packages() -> dict[str, set[str]]:
    """The distributions each GPU_WHEELS set of bench/gpu_wheels.sh downloads (normalised names)."""
    text = (REPO / "bench" / "gpu_wheels.sh").read_text()
    sets: dict[str, set[str]] = {}
    for name in ("CORE", "PRIOR", "BARE"):
        body = re.search(rf"^{name}=\((.*?)\)", text, re.S | re.M)
        assert body, name
        sets[name] = {_norm(tok.split("==")[0]) for tok in body.group(1).split()}
    return sets


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions() -> set[str]:
    import importlib.metadata as md

    tops = {m.split(".")[0] for m in list(sys.modules)}
    mapping = md.packages_distributions()
    return {_norm(d) for t in tops for d in mapping.get(t, [])} - {"ds4d"}


def shadow_site(dists: set[str], dest: Path) -> None:
    """Symlink into ``dest`` the top-level modules and metadata of the installed ``dists`` only."""
    import importlib.metadata as md

    dest.mkdir(parents=True, exist_ok=True)
    for dist in md.distributions():
        if _norm(dist.metadata["Name"]) not in dists:
            continue
        for f in dist.files or []:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            src, link = Path(dist.locate_file(top)), dest / top
            if src.exists() and not link.exists():
                link.symlink_to(src)


def simulate_bare(argv: list[str]) -> int:
    """Rerun this script (dry) with only torch, its dependencies and the bare wheel set importable."""
    import subprocess

    sets = wheel_packages()
    with tempfile.TemporaryDirectory(prefix="ds4d-bare-site-") as site:
        shadow_site(sets["CORE"] | sets["PRIOR"] | sets["BARE"] | TORCH_PROVIDED, Path(site))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, str(REPO)]))
        args = [a for a in argv if a != "--simulate-bare"]
        return subprocess.run([sys.executable, "-S", str(Path(__file__).resolve()), *args], env=env).returncode


# ------------------------------------------------------------------------------------ main
def _example(arg: str | None) -> Path:
    for cand in ([Path(arg)] if arg else []) + [REPO / ".gpucheck" / "windmill", REPO.parent / "shared" / "examples" / "windmill"]:
        if (cand / "cameras.json").is_file():
            return cand
    raise SystemExit("no windmill example found: run `make gpu-check-data` (copies it into .gpucheck/) "
                     "or pass --example DIR")


def _run(name: str, needs: list[str], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    import importlib.util

    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        return {"check": name, "value": f"skipped: missing {', '.join(missing)} (see bench/gpu_wheels.sh)",
                "ok": None}
    t0 = time.perf_counter()
    try:
        row = fn()
    except Exception as exc:  # noqa: BLE001 - a failed check is a row of the table, not the end
        traceback.print_exc()
        row = {"value": f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", "ok": False}
    row["check"] = name
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="everything on the CPU, gsplat's kernels emulated")
    ap.add_argument("--steps", type=int, default=None, help="fit steps (500; dry run 3)")
    ap.add_argument("--example", default=None, help="the windmill example folder (default .gpucheck/windmill)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--simulate-bare", action="store_true",
                    help="with --dry-run: only torch and the wheel set importable (checks the wheel list)")
    args = ap.parse_args(argv)
    dry = args.dry_run
    if args.simulate_bare:
        if not dry:
            raise SystemExit("--simulate-bare goes with --dry-run")
        return simulate_bare(sys.argv[1:] if argv is None else argv)
    steps = args.steps or (3 if dry else 500)

    import contextlib

    import torch
    from rich.console import Console
    from rich.table import Table

    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or use --dry-run here")
    device = "cpu" if dry else "cuda"
    example = _example(args.example)
    env = (f"torch {torch.__version__}, python {sys.version.split()[0]}, "
           + (torch.cuda.get_device_name() if not dry else "CPU (dry run)"))
    rows: list[dict[str, Any]] = []
    emulate = contextlib.nullcontext()
    if dry:
        from ds4d_cli.render.testing import emulated_gsplat_cuda

        emulate = emulated_gsplat_cuda()
    with tempfile.TemporaryDirectory(prefix="ds4d-gpu-check-") as tmp, emulate:
        work = Path(tmp)
        rows.append(_run("gsplat JIT build", ["gsplat", "ninja"], lambda: check_jit_build(dry)))
        rows.append(_run("render: cuda vs cpu", ["gsplat", "jaxtyping"], lambda: check_render(device)))
        rows.append(_run(f"fit at CUDA defaults, {steps} steps", ["gsplat", "pytorch_msssim", "PIL"],
                         lambda: check_fit(example, work, dry, steps)))
        rows.append(_run("Zero123++ tiny, " + ("fp32 cpu" if dry else "fp16 cuda"), ["diffusers", "transformers"],
                         lambda: check_zero123pp(example, work, device, 64 if dry else 320, 2 if dry else 4)))
        shutil.rmtree(work, ignore_errors=True)

    sets = wheel_packages()
    carried = sets["CORE"] | sets["PRIOR"] | sets["BARE"]
    uncarried = sorted(imported_distributions() - carried - TORCH_PROVIDED - TEST_ONLY)

    table = Table(title=f"ds4d gpu-check ({env})")
    for col in ("check", "result", "", "seconds"):
        table.add_column(col, overflow="fold")
    for r in rows:
        mark = {True: "[green]ok[/green]", False: "[red]FAIL[/red]", None: "[yellow]skip[/yellow]"}[r["ok"]]
        table.add_row(r["check"], r["value"], mark, str(r.get("wall_s", "")))
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    for r in rows:
        if r.get("detail"):
            print(f"  {r['check']}: {r['detail']}")
    print("imported but not carried by bench/gpu_wheels.sh:", ", ".join(uncarried) or "none")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "dry_run": dry, "rows": rows, "uncarried": uncarried},
                                              indent=2, default=str))
    return 1 if any(r["ok"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
