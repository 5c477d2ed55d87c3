"""CPU rasterizer: forward+backward of the C++ kernel, the pure-torch fallback and the dense
reference, each beside the FLOP floor of the work it does.

Configurations (N Gaussians uniform in a ball of radius 0.5, 3-NN scales, opacity 0.1, random
colours, orbit cameras at 1.5x the ball's distance, W x W px; loss = sum of rgb and alpha so
every gradient path runs):
  5k @128, 20k @256, 100k @256 with one camera and shared Gaussians, and the trainer's default
  step: 14 cameras (2 frames x 7 views) x 5k @128 with per-camera means, quaternions and scales
  (one deformed copy per frame, repeated over its views) and shared opacities and colours.
Each configuration runs in its own child process (honest peak RSS, no allocator state shared),
with torch single-threaded as in the fit and the kernel on every core (``kernel_threads()``).

Columns:
- fwd, fwd+bwd: median wall time over the repeats (min in the JSON). The machine is shared, so
  wall times are noisy; ``cpu`` is the median CPU time of the process (all threads) per
  forward+backward, which other load disturbs much less (it still rises when a busy sibling
  hyperthread shares the core).
- pairs: Gaussian-pixel pairs the kernel composited (alpha >= 1/255 before the ray stopped),
  counted by the kernel; lanes/pair: SIMD lanes it evaluated per composited pair (it works on
  8-pixel half-rows of each Gaussian's box, so some lanes fall outside the ellipse).
- floor: pairs x FLOP_PER_PAIR / peak. FLOP_PER_PAIR = 109 is the kernel's arithmetic per
  composited pair, fused multiply-add counted as 2: forward 30 (sigma 3, exp 15, alpha 1,
  transmittance 2, weight 1, 4 channels x 2), backward 79 (sigma, exp and alpha again 19,
  1/(1-alpha) 2, transmittance and weight 2, 4 channels x 9, opacity 2, conic 6, means2d 8, rest
  4). peak: the machine's vector multiply-add throughput measured in the same child just before
  (``ds4d_probe_flops``: independent FMA chains on the kernel's threads), so a loaded machine
  lowers the peak and the floor follows it. Projection, sorting, binning and Python are not
  in the floor: it is the compositing work alone. ``x floor`` = fwd+bwd wall / floor.
- instructions: callgrind's count for one forward+backward through the kernel alone
  (bench/kernel_driver.cpp: projection, sort, binning, compositing, gradient gathering, no
  Python), independent of load; and the kernel's own CPU time per render outside callgrind.
  Needs valgrind (``apt-get install valgrind``); skipped otherwise. ``perf stat`` has no
  hardware counters on the dev VM, so instructions come from callgrind.

The dense reference (every pixel x every Gaussian) costs pixels x N per pass, so it is timed on
a horizontal band of rows through the image centre (same N, same per-pixel work; the principal
point moves so the band is the image's middle) and scaled by H / rows ("~" in the table). It
runs with whichever torch thread count (1 or the default) is faster at that moment.

    python bench/bench_render.py            # the table (several minutes on 2 busy cores)
    python bench/bench_render.py --quick    # fewer repeats, thinner dense bands, no callgrind
    python bench/bench_render.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
FLOP_PER_PAIR = 109
# (N, px, cameras): the three sizes and the trainer's default batched step
CONFIGS = ((5000, 128, 1), (20000, 256, 1), (100000, 256, 1), (5000, 128, 14))
TORCH_FALLBACK = {(5000, 128, 1), (20000, 256, 1), (5000, 128, 14)}  # affordable in a bench run
DENSE = {(5000, 128, 1), (20000, 256, 1), (100000, 256, 1)}
TARGET_FB_S = 0.015  # 5k Gaussians at 128 px, forward+backward median (quiet machine)
TARGET_FLOOR_RATIO = 3.0
TARGET_RSS_MB = 2048.0  # 20k @256

_CHILD = r"""
import json, resource, statistics, sys, time
import torch
sys.path.insert(0, {repo!r})
from ds4d_cli import cameras as cam
from ds4d_cli.gaussians import Gaussians
from ds4d_cli.render import build, cpu, render

torch.set_num_threads(1)  # as in the fit: the kernel has its own threads
cfg = json.loads(sys.argv[1])
n, size, C, backend, rows, reps = cfg["n"], cfg["size"], cfg["cameras"], cfg["backend"], cfg["rows"], cfg["reps"]
gs = Gaussians.random_ball(n, radius=0.5, seed=0)
views = min(C, 7)
az = torch.linspace(20.0, 20.0 + 360.0 * (views - 1) / views, views)
vm = cam.c2w_to_viewmat(cam.orbit_camera(az, torch.full((views,), 10.0))).repeat(C // views, 1, 1)
K = cam.intrinsics_from_fov(cam.DEFAULT_FOV_DEG, size)[None].repeat(C, 1, 1)
height = size
if rows and rows < size:
    # a band of `rows` rows through the image centre: same per-pixel work, fewer pixels
    K[:, 1, 2] -= (size - rows) / 2.0
    height = rows
with torch.no_grad():
    base = [gs.means, gs.quats, gs.scales, gs.opacities, gs.colors]
    if C > 1:  # the trainer's batch: one deformed copy per frame, repeated over its views
        g = torch.Generator().manual_seed(1)
        frames = C // views
        rep = lambda x: x.repeat_interleave(views, 0)
        base[0] = rep(gs.means[None] + 0.01 * torch.randn(frames, n, 3, generator=g))
        base[1] = rep(torch.nn.functional.normalize(gs.quats[None] + 0.05 * torch.randn(frames, n, 4, generator=g), dim=-1))
        base[2] = rep(gs.scales[None] * (1 + 0.05 * torch.randn(frames, n, 3, generator=g)))
leaves = [t.detach().clone().contiguous().requires_grad_(True) for t in base]

def step(backward):
    out = render(*leaves, vm, K, size, height, backend=backend)
    if backward:
        (out.rgb.sum() + out.alpha.sum()).backward()
        for p in leaves:
            p.grad = None
    return out

def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

if cfg.get("dump"):
    import pathlib
    d = pathlib.Path(cfg["dump"])
    d.mkdir(parents=True, exist_ok=True)
    strides = [0 if t.dim() == b else t[0].numel() for t, b in zip(leaves, (2, 2, 2, 1, 2))]
    (d / "meta").write_text(" ".join(map(str, [C, n, size, height, -1, 1] + strides)))
    for name, t in zip(("means", "quats", "scales", "opacities", "colors"), leaves):
        t.detach().numpy().tofile(d / f"{{name}}.bin")
    vm.numpy().tofile(d / "viewmats.bin")
    K.numpy().tofile(d / "Ks.bin")

base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
step(True)  # warm-up (kernel load, allocator)
res = {{"base_rss_mb": base_rss}}
if cfg.get("best_threads"):
    # give the dense baseline its best torch thread count right now: on a busy box one thread
    # often beats the OpenMP pool, on an idle one more threads win
    probe = {{}}
    for nt in sorted({{1, cfg["default_threads"]}}):
        torch.set_num_threads(nt)
        t = time.perf_counter()
        with torch.no_grad():
            step(False)
        probe[nt] = time.perf_counter() - t
    torch.set_num_threads(min(probe, key=probe.get))
res["torch_threads"] = torch.get_num_threads()
lib = build.load()
if lib is not None:
    # the machine's vector multiply-add peak on the kernel's threads, now
    nthr = cpu.kernel_threads()
    iters = 200000
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        flops = lib.ds4d_probe_flops(iters, nthr)
        best = max(best, flops / (time.perf_counter() - t))
    res["peak_flops"] = best
    res["kernel_threads"] = nthr
for name, backward in (("fwd", False), ("fb", True)):
    times, cpus = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), cpu_s()
        if backward:
            step(True)
        else:
            with torch.no_grad():
                step(False)
        times.append(time.perf_counter() - t)
        cpus.append(cpu_s() - c)
    res[name + "_s"] = statistics.median(times)
    res[name + "_min_s"] = min(times)
    res[name + "_cpu_s"] = statistics.median(cpus)
res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if backend == "cpu-ext":
    stats = cpu.count_work(True)
    with torch.no_grad():
        out = step(False)
    cpu.count_work(False)
    res["pairs"], res["lanes"] = int(stats[0]), int(stats[1])
else:
    with torch.no_grad():
        out = step(False)
res["coverage"] = float(out.alpha.mean())
print("RESULT " + json.dumps(res))
"""


def run_config(n: int, size: int, cameras: int, backend: str, reps: int, rows: Optional[int] = None,
               timeout: float = 900.0, best_threads: bool = False, dump: Optional[Path] = None) -> dict[str, Any]:
    """Measure one configuration in a fresh interpreter; returns the timings and memory."""
    cfg = {"n": n, "size": size, "cameras": cameras, "backend": backend, "rows": rows, "reps": reps,
           "best_threads": best_threads, "default_threads": os.cpu_count() or 1,
           "dump": str(dump) if dump else None}
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
        for key in ("fwd_s", "fwd_min_s", "fb_s", "fb_min_s", "fwd_cpu_s", "fb_cpu_s"):
            res[key] *= scale
        res["scaled_from_rows"] = rows
    return res


def dense_band_rows(n: int, size: int, pairs: float) -> int:
    """Rows of the dense band: about ``pairs`` pixel x Gaussian pairs per pass, so that the
    fixed per-call cost (projection, sort) stays negligible next to the per-pixel work."""
    return int(min(size, max(4, round(pairs / (n * size)))))


# ------------------------------------------------------------------------------ instructions
def _build_driver(workdir: Path) -> Optional[Path]:
    """Compile bench/kernel_driver.cpp with the kernel's flags (native, else portable)."""
    from ds4d_cli.render import build

    cxx = build.compiler()
    if cxx is None:
        return None
    exe = workdir / "kernel_driver"
    flags = [f for f in build.FLAGS if f not in ("-shared", "-fPIC")]
    src = REPO / "bench" / "kernel_driver.cpp"
    define = f'-DKERNEL_SOURCE="{build.CSRC / "raster.cpp"}"'  # the compositor alone (it includes pool.hpp)
    for extra in (build.NATIVE, []):
        proc = subprocess.run([cxx, *flags, *extra, define, str(src), "-o", str(exe)], capture_output=True,
                              text=True, timeout=600)
        if proc.returncode == 0:
            return exe
    return None


def kernel_figures(n: int, size: int, cameras: int, workdir: Path, exe: Path, threads: int,
                   callgrind: bool) -> dict[str, Any]:
    """The kernel's own CPU time per render and, with valgrind, its instruction count."""
    scene = workdir / f"scene_{n}_{size}_{cameras}"
    dumped = run_config(n, size, cameras, "cpu-ext", reps=1, dump=scene)
    if "error" in dumped:
        return {"error": dumped["error"]}
    out: dict[str, Any] = {}
    proc = subprocess.run([str(exe), str(scene), "10", str(threads)], capture_output=True, text=True, timeout=600)
    m = re.search(r"RESULT (\{.*\})", proc.stdout)
    if m:
        out.update(json.loads(m.group(1)))
    if callgrind and shutil.which("valgrind"):
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", "--toggle-collect=ds4d_render_once",
             f"--callgrind-out-file={workdir / 'callgrind.out'}", str(exe), str(scene), "0", "1"],
            capture_output=True, text=True, timeout=1800,
        )
        m = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
        if m:
            out["instructions"] = int(m.group(1))
    return out


def run(quick: bool = False, dense: bool = True, fallback: bool = True, callgrind: Optional[bool] = None,
        progress=print) -> list[dict]:
    reps = 5 if quick else 15
    pairs = 4e6 if quick else 1e7
    callgrind = (not quick) if callgrind is None else callgrind
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ds4d-bench-render-") as tmp:
        work = Path(tmp)
        exe = _build_driver(work)
        from ds4d_cli.render.cpu import kernel_threads

        for n, size, cams in CONFIGS:
            label = f"N={n:>6} {size}px x{cams}"
            progress(f"cpu C++   {label}")
            row = run_config(n, size, cams, "cpu-ext", reps if n < 50000 else max(3, reps // 3))
            if exe is not None and "error" not in row:
                progress(f"kernel    {label}" + (" (callgrind)" if callgrind else ""))
                row["kernel"] = kernel_figures(n, size, cams, work, exe, kernel_threads(), callgrind)
            rows.append(row)
            if fallback and (n, size, cams) in TORCH_FALLBACK:
                progress(f"torch     {label}")
                rows.append(run_config(n, size, cams, "cpu-torch", 2 if quick else 3))
            if dense and (n, size, cams) in DENSE:
                band = dense_band_rows(n, size, pairs)
                progress(f"dense     {label} (band of {band} rows)")
                rows.append(run_config(n, size, cams, "dense", 1, rows=band, best_threads=True))
    return rows


def _fmt_s(v: Optional[float], approx: bool = False) -> str:
    if v is None:
        return "-"
    txt = f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    return ("~" if approx else "") + txt


def floor_s(row: dict, pairs: Optional[int]) -> Optional[float]:
    """The FLOP floor of a row's compositing work (see the module docstring)."""
    if not pairs or not row.get("peak_flops"):
        return None
    return pairs * FLOP_PER_PAIR / row["peak_flops"]


def render_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="CPU rasterizer, forward+backward (median wall time; CPU = all threads of the process)")
    cols = ("N", "px", "cams", "backend", "fwd", "fwd+bwd", "cpu", "vs C++", "pairs", "lanes/pair",
            "floor", "x floor", "kernel cpu", "instructions", "instr/pair", "peak RSS")
    for col in cols:
        table.add_column(col, justify="left" if col == "backend" else "right")
    names = {"cpu-ext": "C++ kernel", "cpu-torch": "torch fallback", "dense": "dense reference"}
    ext = {(r["n"], r["size"], r["cameras"]): r for r in rows if r["backend"] == "cpu-ext" and "error" not in r}
    for r in rows:
        key = (r["n"], r["size"], r["cameras"])
        name = names.get(r["backend"], r["backend"])
        if "error" in r:
            table.add_row(str(r["n"]), str(r["size"]), str(r["cameras"]), name, f"[red]{r['error']}[/red]",
                          *[""] * (len(cols) - 5))
            continue
        approx = "scaled_from_rows" in r
        if approx:
            name += f" ({r['scaled_from_rows']}-row band, {r['torch_threads']} thr)"
        ref = ext.get(key)
        pairs = ref.get("pairs") if ref else None
        fl = floor_s(ref or r, pairs)
        k = r.get("kernel", {}) if r["backend"] == "cpu-ext" else {}
        instr = k.get("instructions")
        table.add_row(
            str(r["n"]), str(r["size"]), str(r["cameras"]), name, _fmt_s(r["fwd_s"], approx),
            _fmt_s(r["fb_s"], approx), _fmt_s(r["fb_cpu_s"], approx),
            f"{r['fb_s'] / ref['fb_s']:.0f}x" if ref and r is not ref else "-",
            f"{pairs / 1e6:.2f} M" if pairs and r is ref else "",
            f"{r['lanes'] / r['pairs']:.2f}" if r.get("pairs") else "",
            _fmt_s(fl) if fl and r is ref else "",
            f"{r['fb_s'] / fl:.1f}x" if fl else "-",
            _fmt_s(k.get("kernel_cpu_s")),
            f"{instr / 1e6:.1f} M" if instr else "-",
            f"{instr / pairs:.0f}" if instr and pairs else "-",
            f"{r['peak_rss_mb']:.0f} MB",
        )
    return table


def check_targets(rows: list[dict]) -> list[tuple[str, bool, str]]:
    """The issue's targets, evaluated on the measured rows."""
    def find(backend, n, size, cams=1):
        for r in rows:
            if (r["backend"], r["n"], r["size"], r["cameras"]) == (backend, n, size, cams) and "error" not in r:
                return r
        return None

    out = []
    c5 = find("cpu-ext", 5000, 128)
    c20 = find("cpu-ext", 20000, 256)
    if c5:
        out.append(("5k @128 px forward+backward <= 15 ms (median wall)", c5["fb_s"] <= TARGET_FB_S,
                    f"{_fmt_s(c5['fb_s'])} (cpu {_fmt_s(c5['fb_cpu_s'])})"))
        fl = floor_s(c5, c5.get("pairs"))
        if fl:
            ratio = c5["fb_s"] / fl
            out.append((f"5k @128 px forward+backward within {TARGET_FLOOR_RATIO:.0f}x of the FLOP floor",
                        ratio <= TARGET_FLOOR_RATIO, f"{ratio:.1f}x (floor {_fmt_s(fl)} at "
                        f"{c5['peak_flops'] / 1e9:.0f} GFLOP/s measured peak)"))
    if c20:
        out.append(("peak RSS <= 2 GB (20k @256 px)", c20["peak_rss_mb"] <= TARGET_RSS_MB,
                    f"{c20['peak_rss_mb']:.0f} MB"))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    from rich.console import Console

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, thinner dense bands, no callgrind")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    ap.add_argument("--no-fallback", action="store_true", help="skip the pure-torch fallback")
    ap.add_argument("--callgrind", action=argparse.BooleanOptionalAction, default=None,
                    help="count the kernel's instructions with valgrind (default: on unless --quick)")
    ap.add_argument("--json", type=Path, help="also write the raw rows here")
    args = ap.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows = run(quick=args.quick, dense=not args.no_dense, fallback=not args.no_fallback,
               callgrind=args.callgrind, progress=lambda msg: console.print(f"[dim]measuring {msg}[/dim]"))
    console.print(render_table(rows))
    for label, ok, value in check_targets(rows):
        console.print(f"  {'[green]PASS' if ok else '[red]MISS'}[/] {label}: {value}")
    peaks = [r["peak_flops"] for r in rows if r.get("peak_flops")]
    console.print(f"[dim]{os.cpu_count()} CPUs, load average {load0:.1f} at start / {os.getloadavg()[0]:.1f} at end; "
                  f"measured vector peak {min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f} GFLOP/s; "
                  f"floor = pairs x {FLOP_PER_PAIR} FLOP / peak; total {time.perf_counter() - t0:.0f} s. "
                  "'~' = dense time scaled from a band of rows.[/dim]" if peaks else "")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
