"""`make eval`: the quality table -- every shared example fitted as a user fits it, then scored.

For each case (windmill, flapper and their ``_noisy`` copies, from ``../shared/examples``):

1. ``ds4d preprocess CASE/input.mp4 --segmenter static-bg --background-plate CASE/background.png
   --frames 24`` (once per clip: the ``_noisy`` copies share their clean case's clip, so the
   preprocessed workspace is copied);
2. ``ds4d generate --prior import CASE --views <the six zpp_* views>`` (the degraded copy's views
   for ``_noisy``), or ``--prior none --input-camera CASE`` for the single-view column;
3. ``ds4d fit`` at the CPU defaults (plus the variant's flags: none, or ``--no-dsfd --no-tssf``),
   with ``--seed``;
4. ``ds4d eval --gt CLEANCASE --views input,<ho ring>`` (and the four standard views for
   ``--prior none``) -- always against the clean ground truth.

It prints one table (input / held-out PSNR, SSIM, moving-pixel PSNR, silhouette IoU, fit seconds)
plus two references: the "frozen ground truth" (each view's middle ground-truth frame shown at
every time: perfect shape, no motion) and "static" (frames 2, 8, 14 and 20 each fitted alone from
the same views, ``bench/static_frames.py``: no motion to learn, so the most those views allow a
novel view -- the ceiling that motion alone cannot lift), and writes every figure to a JSON file.

    python bench/quality.py                         # everything (hours on 2 cores)
    python bench/quality.py --cases windmill,flapper --variants full --seeds 0
    python bench/quality.py --fit-args "--steps 300"   # extra flags for every fit (experiments)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from example_views import HO, STANDARD, ZPP  # noqa: E402
from static_frames import FRAMES as STATIC_FRAMES  # noqa: E402

EXAMPLES = REPO.parent / "shared" / "examples"
CASES = ["windmill", "flapper", "windmill_noisy", "flapper_noisy"]
VARIANTS = {"full": [], "plain": ["--no-dsfd", "--no-tssf"], "none": [], "static": []}


def _ds4d() -> str:
    return str(Path(sys.executable).with_name("ds4d"))


ENV: dict[str, str] = {}  # extra environment for every ds4d call (--jobs: one render thread each)


def _run(args: list[str], log: Path) -> float:
    """Run ``ds4d ARGS`` (quiet, output appended to ``log``); wall seconds. Raises on failure."""
    start = time.perf_counter()
    with log.open("a") as fh:
        fh.write("$ ds4d " + " ".join(args) + "\n")
        fh.flush()
        res = subprocess.run([_ds4d(), "--quiet", *args], stdout=fh, stderr=subprocess.STDOUT,
                             env={**os.environ, **ENV})
    if res.returncode != 0:
        raise RuntimeError(f"ds4d {' '.join(args[:3])} failed (exit {res.returncode}); see {log}")
    return time.perf_counter() - start


def clean_case(case: str) -> str:
    return case.removesuffix("_noisy")


def preprocessed(work: Path, case: str) -> Path:
    """A workspace holding only the preprocessed clip of ``case`` (shared by its variants)."""
    base = clean_case(case)
    ws = work / f"pre-{base}"
    if not (ws / "preprocess" / "manifest.json").is_file():
        src = EXAMPLES / base
        _run(["-w", str(ws), "preprocess", str(src / "input.mp4"), "--segmenter", "static-bg",
              "--background-plate", str(src / "background.png"), "--frames", "24"], work / "log.txt")
    return ws


def fit_case(work: Path, case: str, variant: str, seed: int, fit_args: list[str]) -> dict[str, Any]:
    """Preprocess (shared), generate, fit and eval one (case, variant, seed); figures as a dict."""
    ws = work / f"{case}-{variant}-s{seed}"
    log = work / f"{ws.name}.log"
    if ws.exists():
        shutil.rmtree(ws)
    shutil.copytree(preprocessed(work, case), ws)
    gt = EXAMPLES / clean_case(case)
    if variant == "none":
        _run(["-w", str(ws), "generate", "--prior", "none", "--input-camera", str(gt)], log)
        views = ["input", *STANDARD, *HO]
    else:
        _run(["-w", str(ws), "generate", "--prior", "import", str(EXAMPLES / case), "--views", ",".join(ZPP)], log)
        views = ["input", *HO]
    if variant == "static":  # each of a few frames fitted alone: what the views allow without motion
        start = time.perf_counter()
        out = subprocess.run([sys.executable, str(REPO / "bench" / "static_frames.py"), str(ws), "--gt", str(gt),
                              "--frames", STATIC_FRAMES, "--seed", str(seed), "--views", ",".join(HO)],
                             check=True, stdout=subprocess.PIPE, text=True, env={**os.environ, **ENV})
        fig = json.loads(out.stdout.strip().splitlines()[-1])
        return {**fig, "fit_s": (time.perf_counter() - start) / len(fig["frames"])}
    fit_s = _run(["-w", str(ws), "fit", "--seed", str(seed), *VARIANTS[variant], *fit_args], log)
    out = subprocess.run([_ds4d(), "--quiet", "-w", str(ws), "eval", "--gt", str(gt), "--views", ",".join(views),
                          "--json"], check=True, stdout=subprocess.PIPE, text=True, env={**os.environ, **ENV})
    ev = json.loads(out.stdout)
    return summarise(ev, fit_s)


def summarise(ev: dict[str, Any], fit_s: Optional[float]) -> dict[str, Any]:
    """The table's figures from one ``ds4d eval --json`` result."""
    rows = {r["view"]: r for r in ev["views"]}
    held = [r for r in ev["views"] if r["view"] != "input"]
    inp = rows.get("input", {})
    agg = ev.get("held_out") or {}
    return {
        "input_psnr": inp.get("psnr"),
        "input_moving": inp.get("masked_psnr"),
        "held_psnr": float(np.mean([r["psnr"] for r in held])) if held else None,
        "held_ssim": float(np.mean([r["ssim"] for r in held])) if held else None,
        "held_moving": agg.get("masked_psnr"),
        "held_iou": float(np.mean([r["iou"] for r in held])) if held and "iou" in held[0] else None,
        "near_debris": max((r.get("near_debris", 0.0) for r in held), default=None),
        "sharpness": agg.get("moving_sharpness"),
        "fit_s": fit_s,
        "views": ev["views"],
    }


def _load(path: Path, bg: float = 1.0) -> np.ndarray:
    a = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float32) / 255.0
    return a[..., :3] * a[..., 3:] + bg * (1 - a[..., 3:])


def frozen_reference(case: str) -> dict[str, Any]:
    """Each view's middle ground-truth frame shown at every time, scored like ``ds4d eval``."""
    sys.path.insert(0, str(REPO))
    import torch

    from ds4d_cli import metrics

    gt = EXAMPLES / clean_case(case)
    rows = []
    for view in ["input", *HO]:
        folder = gt / "input" if view == "input" else gt / "gt" / view
        frames = np.stack([_load(p) for p in sorted(folder.glob("*.png"))])
        seq = torch.from_numpy(frames)
        mid = seq[len(seq) // 2].expand_as(seq)
        mask = metrics.moving_mask(seq)
        sq, count = metrics.masked_mse(mid, seq, mask)
        rows.append({"view": view, "psnr": float(metrics.psnr(mid, seq).mean()),
                     "ssim": float(metrics.ssim(mid, seq).mean()), "sq": sq, "count": count})
    held = [r for r in rows if r["view"] != "input"]
    return {
        "input_psnr": rows[0]["psnr"],
        "input_moving": metrics.psnr_from_mse(rows[0]["sq"] / rows[0]["count"]),
        "held_psnr": float(np.mean([r["psnr"] for r in held])),
        "held_ssim": float(np.mean([r["ssim"] for r in held])),
        "held_moving": metrics.psnr_from_mse(sum(r["sq"] for r in held) / sum(r["count"] for r in held)),
    }


def _fmt(x: Any, d: int = 2) -> str:
    return "-" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))


COLUMNS = (("input_psnr", "input PSNR", 2), ("input_moving", "input moving", 2), ("held_psnr", "held-out PSNR", 2),
           ("held_ssim", "held-out SSIM", 4), ("held_moving", "held-out moving", 2),
           ("sharpness", "held-out moving sharpness", 3), ("held_iou", "IoU", 3),
           ("fit_s", "fit s", 0))


def _mean(rows: list[dict[str, Any]], key: str) -> Optional[float]:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def table(results: list[dict[str, Any]]) -> str:
    """A markdown table, one row per (case, variant, seed), then means per variant."""
    head = "| case | variant | seed | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for r in results:
        lines.append(f"| {r['case']} | {r['variant']} | {r.get('seed', '-')} | "
                     + " | ".join(_fmt(r.get(k), d) for k, _, d in COLUMNS) + " |")
    def group(r: dict[str, Any]) -> str:
        return r["variant"] + (", noisy prior" if r["case"].endswith("_noisy") else "")

    for variant in dict.fromkeys(group(r) for r in results):
        sub = [r for r in results if group(r) == variant]
        means = [_fmt(_mean(sub, k), d) for k, _, d in COLUMNS]
        lines.append(f"| **mean** | **{variant}** | | " + " | ".join(means) + " |")
    return "\n".join(lines)


def targets(results: list[dict[str, Any]]) -> str:
    """The sharp-motion and single-view targets, each with what this run measured (met or not)."""
    full = [r for r in results if r["variant"] == "full"]
    clean_full = [r for r in full if not r["case"].endswith("_noisy")]
    lines = ["| target | measured | met |", "|---|---|---|"]

    def add(name: str, value: Optional[float], ok: Optional[bool], fmt: str = "{:.2f}") -> None:
        lines.append(f"| {name} | {'-' if value is None else fmt.format(value)} | "
                     f"{'-' if ok is None else ('yes' if ok else 'no')} |")

    held = _mean(clean_full, "held_psnr")
    add("held-out ring PSNR >= 32 dB (full, clean prior, mean)", held, None if held is None else held >= 32)
    mov = _mean(clean_full, "held_moving")
    add("held-out moving PSNR >= 25 dB", mov, None if mov is None else mov >= 25)
    imov = _mean(clean_full, "input_moving")
    add("input-view moving PSNR >= 30 dB", imov, None if imov is None else imov >= 30)
    gains = []
    for r in full:
        twin = [p for p in results if p["variant"] == "plain" and p["case"] == r["case"] and p.get("seed") == r.get("seed")]
        if twin and r.get("held_moving") is not None and twin[0].get("held_moving") is not None:
            gains.append(r["held_moving"] - twin[0]["held_moving"])
    gain = float(np.mean(gains)) if gains else None
    add(f"DSFD+TSSF - plain, held-out moving >= 1.5 dB ({len(gains)} case-seed pairs)", gain,
        None if gain is None else gain >= 1.5, "{:+.2f} dB")
    gaps = []
    for r in full:
        if r["case"].endswith("_noisy"):
            twin = [c for c in clean_full if c["case"] == r["case"].removesuffix("_noisy") and c.get("seed") == r.get("seed")]
            if twin:
                gaps.append(twin[0]["held_psnr"] - r["held_psnr"])
    gap = float(np.mean(gaps)) if gaps else None
    add("noisy prior: held-out PSNR within 2 dB of clean", gap, None if gap is None else gap <= 2, "{:.2f} dB lower")
    secs = _mean(full, "fit_s")
    add("default fit (24 frames x 7 views) <= 600 s", secs, None if secs is None else secs <= 600, "{:.0f} s")
    none = [r for r in results if r["variant"] == "none"]
    if none:
        iou = _mean(none, "held_iou")
        add("--prior none: held-out silhouette IoU >= 0.75", iou, None if iou is None else iou >= 0.75, "{:.3f}")
        npsnr = _mean(none, "held_psnr")
        add("--prior none: held-out PSNR >= 24 dB", npsnr, None if npsnr is None else npsnr >= 24)
        debris = max((r.get("near_debris") or 0.0 for r in none), default=None)
        add("--prior none: no near-plane debris (worst view share)", debris, None if debris is None else debris == 0,
            "{:.4f}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--variants", default="full,plain,none,static",
                    help="full, plain (--no-dsfd --no-tssf), none (--prior none), static (frames "
                         f"{STATIC_FRAMES} each fitted alone: no motion to learn; seed 0 only)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--fit-args", default="", help="extra flags for every fit, e.g. '--steps 300'")
    ap.add_argument("--jobs", type=int, default=1,
                    help="fits at once; with more than one, each gets one render thread (fit seconds then "
                         "measure one core each)")
    ap.add_argument("--work", default=str(REPO / "bench_quality"), help="workspaces and logs (kept for inspection)")
    ap.add_argument("--json", default=None, help="write every figure here (default WORK/quality.json)")
    ap.add_argument("--results", default=str(REPO / "bench" / "quality_results.md"),
                    help="the markdown table, with date, machine and commit (README quotes it); '' = none")
    args = ap.parse_args(argv)

    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    cases = [c for c in args.cases.split(",") if c]
    variants = [v for v in args.variants.split(",") if v]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    fit_args = args.fit_args.split()
    results = []
    for case in cases:
        results.append({"case": case, "variant": "frozen GT", **frozen_reference(case)})
    runs = [(case, variant, seed) for case in cases for variant in variants for seed in seeds
            if not (variant == "none" and case.endswith("_noisy"))  # no prior views: same as clean
            and not (variant == "static" and seed != seeds[0])]  # a reference: one seed
    if args.jobs > 1:
        ENV["DS4D_RENDER_THREADS"] = "1"
    for case in cases:
        preprocessed(work, case)  # before any parallel fit, so two never preprocess one clip

    def one(run: tuple[str, str, int]) -> dict[str, Any]:
        case, variant, seed = run
        print(f"[quality] {case} {variant} seed {seed} ...", flush=True)
        r = {"case": case, "variant": variant, "seed": seed, **fit_case(work, case, variant, seed, fit_args)}
        print(f"[quality] {case} {variant} seed {seed}: " + ", ".join(
            f"{k} {_fmt(r.get(k))}" for k, _, _ in COLUMNS), flush=True)
        return r

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for r in pool.map(one, runs):
            results.append(r)
            (Path(args.json) if args.json else work / "quality.json").write_text(json.dumps(results, indent=1))
    text = table(results) + "\n\n" + targets(results)
    print(text)
    if args.results:
        sys.path.insert(0, str(REPO / "bench"))
        from provenance import header

        cmd = "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.results).write_text(header(f"make eval (`{cmd.strip()}`)") + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
