"""End-to-end figures of the bundled demo, and the cost of DS4D's modules per fit step.

Runs the same command as `make demo` in a child process on a fresh workspace, so the wall time
is what a user waits for; the child's peak RSS comes from the kernel (getrusage). Then it fits
copies of that workspace for a fixed number of steps with and without DSFD/TSSF, and reads the
seconds per step from each fit's own log.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_ARGS = [
    "run", str(REPO / "assets/windmill/input.mp4"),
    "--prior", "import", str(REPO / "assets/windmill"), "--views", "az090,az270",
    "--frames", "12", "--size", "128", "--segmenter", "static-bg",
    "--background-plate", str(REPO / "assets/windmill/background.png"),
]


def _ds4d() -> str:
    return str(Path(sys.executable).with_name("ds4d"))


def seconds_per_step(workspace: Path) -> float:
    """Median step time the fit logged (its ``seconds`` field, per step)."""
    rows = [json.loads(line) for line in (workspace / "fit" / "log.jsonl").read_text().splitlines() if line.strip()]
    return statistics.median(r["seconds"] for r in rows if "seconds" in r)


_PEAK_CHILD = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def _run_with_peak_rss(cmd: list[str]) -> float:
    """Run ``cmd`` under a fresh Python parent so its peak RSS is its own (MB), not an earlier child's."""
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, *cmd], check=True, stdout=subprocess.PIPE, text=True)
    return float(out.stdout.strip().splitlines()[-1]) / 1024


def measure_demo(work: Path) -> dict[str, float]:
    """Wall time and peak RSS of the demo from scratch, then of an all-cached rerun."""
    ws = work / "demo"
    cmd = [_ds4d(), "--quiet", "-w", str(ws), *DEMO_ARGS]
    start = time.perf_counter()
    peak_mb = _run_with_peak_rss(cmd)
    wall = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    cached = time.perf_counter() - start
    return {"wall_s": wall, "cached_rerun_s": cached, "peak_rss_mb": peak_mb, "fit_s_per_step": seconds_per_step(ws)}


def measure_fit_variants(work: Path, steps: int = 60) -> dict[str, float]:
    """Seconds per step of short fits on the demo's inputs: full DS4D vs the plain path."""
    out = {}
    for name, flags in (("ds4d", []), ("plain", ["--no-dsfd", "--no-tssf"])):
        ws = work / f"fit-{name}"
        shutil.copytree(work / "demo", ws, ignore=shutil.ignore_patterns("fit", "export"))
        subprocess.run([_ds4d(), "--quiet", "-w", str(ws), "fit", "--steps", str(steps), "--checkpoint-every", "1000",
                        *flags], check=True)
        out[name] = seconds_per_step(ws)
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ds4d-bench-") as tmp:
        print(measure_demo(Path(tmp)))
        print(measure_fit_variants(Path(tmp)))
