"""CPU rasterizer vs the dense reference: forward and forward+backward time, peak memory.

Every configuration runs in its own child process, so its peak RSS (getrusage) is honest and
no allocator state leaks between rows. Scenes: N Gaussians uniform in a ball of radius 0.5
(3-NN scales, opacity 0.1, random colours) seen from the default orbit camera at W x W px;
the loss sums rgb and alpha so every gradient path runs.

The dense reference (every pixel x every Gaussian, `backend="dense"`) costs exactly
pixels x N per pass, so for large configurations it is timed on a horizontal band of rows
through the image centre (same N, same per-pixel work; the camera's principal point is moved
so the band is the middle of the full image) and the time is scaled by H / rows. Those
rows are marked "~" in the table, and their memory is that of the band (the dense reference
is chunked over pixels, so it barely depends on the image size). One configuration is also
timed in full to check the scaling. The pure-torch fallback is timed at 128 px by default.
The dense baseline runs with whichever torch thread count (1 or the default) is faster on the
machine at that moment (a busy box penalises OpenMP heavily); the CPU backend's own torch
work is single-threaded by design and its C++ kernel uses every core.

    python bench/bench_render.py            # the table (a few minutes on 2 busy cores)
    python bench/bench_render.py --quick    # fewer repeats, smaller dense bands
    python bench/bench_render.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
SIZES = (128, 256)
COUNTS = (2000, 5000, 20000)
TARGET_FB_S = 0.10  # 5k Gaussians at 128 px, forward+backward median
TARGET_RATIO = 30.0
TARGET_RSS_MB = 2048.0  # 20k Gaussians at 256 px

_CHILD = r"""
import json, resource, sys, time, statistics
import torch
sys.path.insert(0, {repo!r})
from ds4d_cli import cameras as cam
from ds4d_cli.gaussians import Gaussians
from ds4d_cli.render import render

cfg = json.loads(sys.argv[1])
n, size, backend, rows, reps = cfg["n"], cfg["size"], cfg["backend"], cfg["rows"], cfg["reps"]
gs = Gaussians.random_ball(n, radius=0.5, seed=0)
vm = cam.c2w_to_viewmat(cam.orbit_camera(20.0, 10.0))[None]
K = cam.intrinsics_from_fov(cam.DEFAULT_FOV_DEG, size)[None].clone()
height = size
if rows and rows < size:
    # a band of `rows` rows through the image centre: same per-pixel work, fewer pixels
    K[0, 1, 2] -= (size - rows) / 2.0
    height = rows
params = [gs.params[k] for k in ("means", "quats", "scales", "opacities", "sh0")]

def step(backward):
    out = render(gs.means, gs.quats, gs.scales, gs.opacities, gs.colors, vm, K, size, height,
                 backend=backend)
    if backward:
        (out.rgb.sum() + out.alpha.sum()).backward()
        for p in params:
            p.grad = None
    return out

base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
step(True)  # warm-up (kernel load, allocator)
res = {{"base_rss_mb": base_rss}}
if cfg.get("best_threads"):
    # give the baseline its best torch thread count on this machine right now: on a busy
    # box one thread often beats the OpenMP pool, on an idle one two threads win
    probe = {{}}
    for nt in sorted({{1, torch.get_num_threads()}}):
        torch.set_num_threads(nt)
        t = time.perf_counter()
        with torch.no_grad():
            step(False)
        probe[nt] = time.perf_counter() - t
    torch.set_num_threads(min(probe, key=probe.get))
res["torch_threads"] = torch.get_num_threads()
for name, backward in (("fwd", False), ("fb", True)):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        if backward:
            step(True)
        else:
            with torch.no_grad():
                step(False)
        times.append(time.perf_counter() - t)
    res[name + "_s"] = statistics.median(times)
    res[name + "_min_s"] = min(times)
res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with torch.no_grad():
    res["coverage"] = float(step(False).alpha.mean())
print("RESULT " + json.dumps(res))
"""


def run_config(n: int, size: int, backend: str, reps: int, rows: Optional[int] = None,
               timeout: float = 900.0, best_threads: bool = False) -> dict[str, Any]:
    """Measure one configuration in a fresh interpreter; returns the timings and memory."""
    cfg = {"n": n, "size": size, "backend": backend, "rows": rows, "reps": reps,
           "best_threads": best_threads}
    code = _CHILD.format(repo=str(REPO))
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**cfg, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**cfg, "error": tail}
    res = json.loads(lines[-1][7:])
    res.update(cfg)
    res["wall_s"] = time.perf_counter() - start
    if rows and rows < size:
        scale = size / rows
        for key in ("fwd_s", "fwd_min_s", "fb_s", "fb_min_s"):
            res[key] *= scale
        res["scaled_from_rows"] = rows
    return res


def dense_band_rows(n: int, size: int, pairs: float) -> int:
    """Rows of the dense band: about ``pairs`` pixel x Gaussian pairs per pass, so that the
    fixed per-call cost (projection, sort) stays negligible next to the per-pixel work."""
    return int(min(size, max(4, round(pairs / (n * size)))))


def run(quick: bool = False, dense: bool = True, fallback: str = "128", progress=print) -> list[dict]:
    reps = 3 if quick else 7
    pairs = 4e6 if quick else 1e7
    rows: list[dict] = []
    for size in SIZES:
        for n in COUNTS:
            progress(f"cpu    N={n:>6} {size}px")
            rows.append(run_config(n, size, "cpu-ext", reps))
            if fallback == "all" or (fallback == "128" and size == 128):
                progress(f"torch  N={n:>6} {size}px")
                rows.append(run_config(n, size, "cpu-torch", 2 if quick else 3))
            if dense:
                band = dense_band_rows(n, size, pairs)
                progress(f"dense  N={n:>6} {size}px (band of {band} rows)")
                rows.append(run_config(n, size, "dense", 1, rows=band, best_threads=True))
    if dense and not quick:
        progress("dense  N=  2000 128px (full image, checks the band scaling)")
        rows.append(run_config(2000, 128, "dense", 1, best_threads=True))
    return rows


def _fmt_s(v: Optional[float], approx: bool = False) -> str:
    if v is None:
        return "-"
    txt = f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    return ("~" if approx else "") + txt


def render_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="CPU rasterizer vs dense reference (median wall time; peak RSS of a fresh process)")
    for col in ("N", "px", "backend", "forward", "fwd+bwd", "dense/cpu fwd", "dense/cpu f+b",
                "peak RSS", "Δ RSS"):
        table.add_column(col, justify="right" if col not in ("backend",) else "left")
    cpu = {(r["n"], r["size"]): r for r in rows if r["backend"] == "cpu-ext" and "error" not in r}
    names = {"cpu-ext": "cpu C++", "cpu-torch": "cpu torch fallback", "dense": "dense reference"}
    for r in rows:
        name = names.get(r["backend"], r["backend"])
        if "error" in r:
            table.add_row(str(r["n"]), str(r["size"]), name, f"[red]{r['error']}[/red]", "", "", "", "", "")
            continue
        approx = "scaled_from_rows" in r
        if approx:
            name += f" ({r['scaled_from_rows']}-row band)"
        if r["backend"] == "dense":
            name += f", {r['torch_threads']} thr"
        ref = cpu.get((r["n"], r["size"]))
        ratio_f = ratio_b = "-"
        if ref and r["backend"] != "cpu-ext":
            ratio_f = f"{r['fwd_s'] / ref['fwd_s']:.0f}x"
            ratio_b = f"{r['fb_s'] / ref['fb_s']:.0f}x"
        table.add_row(
            str(r["n"]), str(r["size"]), name, _fmt_s(r["fwd_s"], approx), _fmt_s(r["fb_s"], approx),
            ratio_f, ratio_b, f"{r['peak_rss_mb']:.0f} MB", f"{r['peak_rss_mb'] - r['base_rss_mb']:.0f} MB",
        )
    return table


def check_targets(rows: list[dict]) -> list[tuple[str, bool, str]]:
    """The issue's targets, evaluated on the measured rows."""
    def find(backend, n, size, full=None):
        for r in rows:
            if r["backend"] == backend and r["n"] == n and r["size"] == size and "error" not in r:
                if full is None or full == ("scaled_from_rows" not in r):
                    return r
        return None

    out = []
    c5 = find("cpu-ext", 5000, 128)
    d5 = find("dense", 5000, 128)
    c20 = find("cpu-ext", 20000, 256)
    if c5:
        out.append(("5k @128 px forward+backward <= 0.10 s", c5["fb_s"] <= TARGET_FB_S, _fmt_s(c5["fb_s"])))
    if c5 and d5:
        ratio = d5["fb_s"] / c5["fb_s"]
        out.append((">= 30x faster than dense (5k @128, f+b)", ratio >= TARGET_RATIO, f"{ratio:.0f}x"))
    if c20:
        out.append(("peak RSS <= 2 GB (20k @256 px)", c20["peak_rss_mb"] <= TARGET_RSS_MB,
                    f"{c20['peak_rss_mb']:.0f} MB"))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    from rich.console import Console

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and thinner dense bands")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    ap.add_argument("--fallback", choices=("none", "128", "all"), default="128",
                    help="which sizes also time the pure-torch fallback (default: 128 px only)")
    ap.add_argument("--json", type=Path, help="also write the raw rows here")
    args = ap.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 132)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows = run(quick=args.quick, dense=not args.no_dense, fallback=args.fallback,
               progress=lambda msg: console.print(f"[dim]measuring {msg}[/dim]"))
    console.print(render_table(rows))
    for label, ok, value in check_targets(rows):
        console.print(f"  {'[green]PASS' if ok else '[red]MISS'}[/] {label}: {value}")
    console.print(f"[dim]{os.cpu_count()} CPUs, load average {load0:.1f} at start / "
                  f"{os.getloadavg()[0]:.1f} at end; total {time.perf_counter() - t0:.0f} s. "
                  "'~' = dense time scaled from a band of rows.[/dim]")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
