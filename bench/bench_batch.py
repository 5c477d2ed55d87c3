"""`ds4d batch` on this machine: clips per minute with 1 and with 2 local workers, and the
all-cached rerun (what a resumed batch pays per finished clip).

    .venv/bin/python bench/bench_batch.py [--clips 4] [--steps 200]

Each run is a fresh `--out` and a subprocess, as a user runs it; the clips are the tests' moving
squares (tests/batch_clips.py) at 64 px. On a 2-core CPU this is the measurement behind the
default of one CPU worker per 2 cores (ds4d_cli/batch/local.py): a CPU fit runs torch on one
thread and the rasterizer on every core, so two fits on two cores mostly take turns.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from batch_clips import square_clip  # noqa: E402

COLOURS = [(220, 40, 40), (40, 40, 220), (40, 160, 40), (200, 160, 20), (160, 40, 160), (20, 160, 160)]


def run_batch(clips: list[Path], out: Path, steps: int, workers: int) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "ds4d_cli", "batch", *map(str, clips), "--out", str(out), "--workers", str(workers),
           "--prior", "none", "--frames", "8", "--size", "64", "--segmenter", "static-bg", "--resolution", "64",
           "--steps", str(steps), "--formats", "ply"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"batch failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, json.loads((out / "batch.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ds4d-bench-batch-") as tmp:
        root = Path(tmp)
        clips = [square_clip(root / "clips" / f"clip{i}.mp4", COLOURS[i % len(COLOURS)], frames=8, size=96)
                 for i in range(args.clips)]
        rows = []
        for workers in (1, 2):
            out = root / f"out{workers}"
            wall, record = run_batch(clips, out, args.steps, workers)
            fit_s = [c["stages"]["fit"]["seconds"] for c in record["clips"]]
            rows.append((f"{workers} worker(s)", wall, 60 * len(clips) / wall, sum(fit_s) / len(fit_s)))
        cached, _ = run_batch(clips, root / "out2", args.steps, 2)
    print(f"{args.clips} clips, 8 frames, {args.steps} steps at 64 px, CPU\n")
    print("| workers | wall s | clips/min | mean fit s per clip |")
    print("|---|---|---|---|")
    for name, wall, per_min, fit in rows:
        print(f"| {name} | {wall:.0f} | {per_min:.2f} | {fit:.0f} |")
    print(f"\nall-cached rerun of the {args.clips} clips (2 workers): {cached:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
