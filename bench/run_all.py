"""`make bench`: every speed and memory figure of the project, measured in one run.

1. the CPU rasterizer against the dense torch reference (bench_render.py);
2. fit seconds per step with DS4D's modules against the plain path (--no-dsfd --no-tssf);
3. end-to-end wall time and peak memory of the bundled demo, and of its all-cached rerun;
4. the viewer page: MB per frame, load time, frame rate and fidelity in Chromium (bench_viewer.py).
5. preprocessing: seconds per frame, peak RSS and mask IoU per example and segmenter, and the
   4K / 960x540 timing targets (bench_preprocess.py);
6. the default fit step split into its parts, against its own batched renders (bench_step.py).

Everything printed is also written to ``bench/results.md`` (with the date, the machine and the
commit), which the README quotes: every figure a reader sees has this one recorded run behind it.
The quality table is ``make eval`` (bench/quality.py -> bench/quality_results.md).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_demo  # noqa: E402
import bench_preprocess  # noqa: E402
import bench_render  # noqa: E402
import bench_step  # noqa: E402
import bench_viewer  # noqa: E402
from provenance import header  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results.md"


def main() -> int:
    console = Console(width=None if sys.stdout.isatty() else 160, record=True)  # logs keep whole table rows
    quick = "--quick" in sys.argv
    rows = bench_render.run(quick=quick, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    console.print(bench_render.render_table(rows))
    targets = bench_render.check_targets(rows)

    with tempfile.TemporaryDirectory(prefix="ds4d-bench-") as tmp:
        console.print("[dim]demo: ds4d run on assets/windmill (fresh workspace, then cached)[/dim]")
        demo = bench_demo.measure_demo(Path(tmp))
        console.print("[dim]fit: 60 steps with DSFD+TSSF and with --no-dsfd --no-tssf[/dim]")
        fits = bench_demo.measure_fit_variants(Path(tmp))

    table = Table(title="fit and end-to-end (CPU)")
    for col in ("figure", "value", "ratio"):
        table.add_column(col, justify="right" if col != "figure" else "left")
    table.add_row("fit s/step, DSFD+TSSF", f"{fits['ds4d'] * 1000:.0f} ms", f"{fits['ds4d'] / fits['plain']:.2f}x plain")
    table.add_row("fit s/step, plain path", f"{fits['plain'] * 1000:.0f} ms", "1.00x")
    table.add_row("fit it/s in the demo", f"{1 / demo['fit_s_per_step']:.2f}", "")
    table.add_row("demo wall time (make demo's run)", f"{demo['wall_s']:.0f} s", "")
    table.add_row("demo rerun, all stages cached", f"{demo['cached_rerun_s']:.1f} s",
                  f"{demo['wall_s'] / demo['cached_rerun_s']:.0f}x faster")
    table.add_row("demo peak RSS", f"{demo['peak_rss_mb']:.0f} MB", "")
    console.print(table)

    console.print("[dim]viewer: the exported page in headless Chromium (SwiftShader), 5k and 50k Gaussians[/dim]")
    console.print(bench_viewer.render_table(bench_viewer.run()))

    targets.append(("demo finishes in minutes (<= 10 min)", demo["wall_s"] <= 600, f"{demo['wall_s']:.0f} s"))

    pre = bench_preprocess.run(quick=quick, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    for t in bench_preprocess.render_tables(pre):
        console.print(t)
    targets += bench_preprocess.check_targets(pre)

    console.print("[dim]fit step: the default step's parts (windmill, 24 frames x 7 views)[/dim]")
    step = bench_step.measure()
    console.print(bench_step.table(step))
    targets.append(("fit step <= 1.5x its own renders", step["ratio"] <= 1.5, f"{step['ratio']:.2f}x"))

    summary = Table(title="targets")
    for col in ("target", "met", "measured"):
        summary.add_column(col)
    for name, ok, value in targets:
        summary.add_row(name, "[green]yes[/green]" if ok else "[red]no[/red]", value)
    console.print(summary)
    RESULTS.write_text(header("make bench") + "```\n" + console.export_text() + "```\n")
    console.print(f"[dim]written to {RESULTS}[/dim]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
