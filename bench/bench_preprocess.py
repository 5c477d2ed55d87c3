"""Preprocessing: seconds per frame, peak RSS and mask IoU, per example and per segmenter.

Every measurement is one `ds4d preprocess` in a child process on a fresh workspace, so the
time is what a user waits for (probe, decode, segment, check, crop, write) and the peak RSS is
the child's own (`VmHWM`-equivalent via getrusage under a fresh, small parent). IoU is measured
the way tests/test_preprocess.py does: the output alpha against the ground-truth alpha
(input/NNN.png) pushed through the same crop and resize, alpha >= 0.5 on both sides.

Clips: the shared examples (windmill, flapper; their _noisy copies have byte-identical
input.mp4 and input/, so their rows repeat the clean case's measurement), a synthetic 4K phone
clip and a 960x540 15-frame clip (bench/clips.py). CPU seconds (user + sys of the child) are
printed beside wall seconds because the 2-core machine is shared: wall time depends on the load.

    python bench/bench_preprocess.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO.parent / "shared" / "examples"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import clips  # noqa: E402

_PEAK_CHILD = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(done.returncode, r.ru_maxrss, r.ru_utime + r.ru_stime)"
)
#: The issue's targets (2-core machine): 4K 32 frames <= 60 s and <= 1.5 GB; 540p 15 frames <= 20 s.
TARGET_4K_S, TARGET_4K_MB, TARGET_540_S = 60.0, 1536.0, 20.0
TARGET_IOU = 0.92


def _ds4d() -> str:
    return str(Path(sys.executable).with_name("ds4d"))


def preprocess(source: Path, ws: Path, *args: str) -> dict[str, Any]:
    """Run `ds4d preprocess` in a child under a small fresh parent; wall, CPU, peak RSS."""
    cmd = [_ds4d(), "--quiet", "-w", str(ws), "preprocess", str(source), "--force", *args]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, *cmd], stdout=subprocess.PIPE, text=True, check=True)
    wall = time.perf_counter() - start
    code, maxrss, cpu = out.stdout.split()[-3:]
    return {"ok": code == "0", "wall_s": wall, "cpu_s": float(cpu), "peak_mb": int(maxrss) / 1024}


def crop_space_iou(ws: Path, case_dir: Path) -> list[float]:
    from ds4d_cli.crop import crop_rgba

    meta = json.loads((ws / "preprocess" / "meta.json").read_text())
    scores = []
    for t, index in enumerate(meta["frame_indices"]):
        gt = np.asarray(Image.open(case_dir / "input" / f"{index:03d}.png"))
        gt_a = crop_rgba(gt[..., :3], gt[..., 3] / 255.0, meta["crop_box"], meta["size"])[..., 3] >= 128
        ours = np.asarray(Image.open(ws / "preprocess" / "frames" / f"{t:03d}.png"))[..., 3] >= 128
        scores.append(float((gt_a & ours).sum() / max((gt_a | ours).sum(), 1)))
    return scores


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(quick: bool = False, progress: Any = print) -> dict[str, Any]:
    frames = 8 if quick else 24
    segmenters: list[tuple[str, list[str]]] = [
        ("u2netp", ["--segmenter", "u2netp"]),
        ("hybrid", ["--segmenter", "hybrid"]),
        ("hybrid + plate", ["--segmenter", "hybrid", "--background-plate", "{plate}"]),
        ("static-bg + plate", ["--segmenter", "static-bg", "--background-plate", "{plate}"]),
    ]
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ds4d-bench-pre-") as tmp:
        for case in ("windmill", "flapper", "windmill_noisy", "flapper_noisy"):
            case_dir = EXAMPLES / case
            digest = _digest(case_dir / "input.mp4")
            for name, args in segmenters:
                key = (digest, name)
                if key in seen:
                    rows.append({**seen[key], "case": case, "same_as": seen[key]["case"]})
                    continue
                progress(f"preprocess {case} --segmenter {name} ({frames} frames)")
                ws = Path(tmp) / f"{case}-{name.replace(' ', '')}"
                argv = [a.replace("{plate}", str(case_dir / "background.png")) for a in args]
                m = preprocess(case_dir / "input.mp4", ws, "--frames", str(frames), "--size", "256", "--force-masks", *argv)
                scores = crop_space_iou(ws, case_dir) if m["ok"] else [0.0]
                row = {"case": case, "segmenter": name, "frames": frames, **m,
                       "iou_mean": float(np.mean(scores)), "iou_min": float(np.min(scores))}
                seen[key] = row
                rows.append(row)
        timing: list[dict[str, Any]] = []
        for label, make, n, segs in (
            ("4K phone clip (3840x2160, 30 fps, 12 s)", clips.phone_4k, 32, ("hybrid",)),
            ("960x540, 15 frames", clips.archive_540p, 15, ("hybrid",) if quick else ("hybrid", "u2netp")),
        ):
            source = make(EXAMPLES)
            for seg in segs:
                progress(f"preprocess {label} --segmenter {seg} ({n} frames)")
                m = preprocess(source, Path(tmp) / f"t-{seg}", "--frames", str(n), "--segmenter", seg)
                timing.append({"clip": label, "segmenter": seg, "frames": n, **m})
    return {"rows": rows, "timing": timing, "load": os.getloadavg()}


def render_tables(result: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    iou = Table(title=f"preprocess masks vs ground truth (IoU of alpha >= 0.5; load avg {result['load'][0]:.1f})")
    for col in ("example", "segmenter", "frames", "IoU mean", "IoU min", "s/frame wall", "s/frame CPU", "peak RSS"):
        iou.add_column(col, justify="left" if col in ("example", "segmenter") else "right")
    for r in result["rows"]:
        same = f" (= {r['same_as']})" if r.get("same_as") else ""
        iou.add_row(r["case"] + same, r["segmenter"], str(r["frames"]), f"{r['iou_mean']:.3f}", f"{r['iou_min']:.3f}",
                    f"{r['wall_s'] / r['frames']:.2f}", f"{r['cpu_s'] / r['frames']:.2f}", f"{r['peak_mb']:.0f} MB")
    timing = Table(title="preprocess timing on larger clips")
    for col in ("clip", "segmenter", "frames", "wall", "CPU", "peak RSS"):
        timing.add_column(col, justify="left" if col in ("clip", "segmenter") else "right")
    for r in result["timing"]:
        timing.add_row(r["clip"], r["segmenter"], str(r["frames"]), f"{r['wall_s']:.0f} s", f"{r['cpu_s']:.0f} s",
                       f"{r['peak_mb']:.0f} MB")
    return [iou, timing]


def check_targets(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    out = []
    for r in result["timing"]:
        if r["clip"].startswith("4K") and r["segmenter"] == "hybrid":
            out.append(("4K 32 frames <= 60 s (wall)", r["wall_s"] <= TARGET_4K_S, f"{r['wall_s']:.0f} s"))
            out.append(("4K 32 frames <= 1.5 GB peak", r["peak_mb"] <= TARGET_4K_MB, f"{r['peak_mb']:.0f} MB"))
        if r["clip"].startswith("960") and r["segmenter"] == "hybrid":
            out.append(("960x540 15 frames <= 20 s (wall)", r["wall_s"] <= TARGET_540_S, f"{r['wall_s']:.0f} s"))
    for r in result["rows"]:
        if r["segmenter"] == "hybrid" and not r.get("same_as"):
            out.append((f"hybrid IoU >= {TARGET_IOU} on {r['case']}", r["iou_mean"] >= TARGET_IOU, f"{r['iou_mean']:.3f}"))
    return out


def main() -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 160)
    result = run(args.quick, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    for table in render_tables(result):
        console.print(table)
    for name, ok, value in check_targets(result):
        console.print(f"{'met' if ok else 'NOT met'}: {name}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
