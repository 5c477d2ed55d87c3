"""A default fit step of this checkout against an older revision's, same workspace, same machine.

Issue 12 asks for a 24-frame, 7-view default fit at 128 px at least 2x faster than the code it
measured (``--base``, default f546251, the last commit before the fused C++ render path). Both
revisions fit the same workspace (built once, as ``bench_step.py`` builds it) in child
processes, alternately (base, current, base, current) so that a busy machine slows both alike;
each child times ``--steps`` steps after the first 200 (past the first densifications) with one
torch thread, as the fit stage runs. The base revision is checked out in a temporary worktree.

    python bench/bench_speedup.py                      # 128 px, windmill
    python bench/bench_speedup.py --resolution 256 --base HEAD~5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

CHILD = r"""
import json, statistics, sys, time
repo, ws_path, res, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, repo)
import torch
try:  # newer revisions tune the allocator in the fit stage
    from ds4d_cli.allocator import retain_freed_memory
    retain_freed_memory()
except ImportError:
    pass
from ds4d_cli.workspace import Workspace
from ds4d_cli.stages import fit as fitstage
from ds4d_cli.model.trainer import Trainer
torch.set_num_threads(1)
opts = fitstage.resolve_options(fitstage.FitOptions(resolution=res))
data, _ = fitstage.load_fit_data(Workspace.open(ws_path), opts)
trainer = Trainer(data, fitstage.train_config(opts))
while trainer.step_count < 200:
    trainer.step()
times, cpu0 = [], time.process_time()
for _ in range(steps):
    t0 = time.perf_counter()
    trainer.step()
    times.append(time.perf_counter() - t0)
print(json.dumps({"step_ms": 1000 * statistics.median(times), "cpu_ms": 1000 * (time.process_time() - cpu0) / steps,
                  "gaussians": trainer.gaussians.num_gaussians}))
"""


def _time(repo: Path, ws: Path, resolution: int, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(repo), str(ws), str(resolution), str(steps)],
                         check=True, capture_output=True, text=True, cwd=repo)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="f546251", help="the older revision (default: the code issue 12 measured)")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--case", default="windmill")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    from example_views import ZPP

    sys.path.insert(0, str(REPO / "tests"))
    from fit_workspace import build_workspace

    with tempfile.TemporaryDirectory(prefix="ds4d-speedup-") as tmp:
        work = Path(tmp)
        ws = build_workspace(work / "ws", REPO.parent / "shared" / "examples" / a.case, ZPP, list(range(24)))
        base = work / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), a.base], check=True,
                       capture_output=True)
        try:
            runs: dict[str, list[dict]] = {"base": [], "current": []}
            for _ in range(a.rounds):
                runs["base"].append(_time(base, ws.root, a.resolution, a.steps))
                runs["current"].append(_time(REPO, ws.root, a.resolution, a.steps))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False,
                           capture_output=True)
    med = {k: (statistics.median(r["step_ms"] for r in v), statistics.median(r["cpu_ms"] for r in v),
               v[-1]["gaussians"]) for k, v in runs.items()}
    print(f"default fit step, {a.case}, 24 frames x 7 views, {a.resolution} px (median of {a.rounds} runs of "
          f"{a.steps} steps after step 200)")
    print("| code | step (wall) | step (CPU) | Gaussians |\n|---|---|---|---|")
    for k, label in (("base", f"{a.base} (base)"), ("current", "this checkout")):
        print(f"| {label} | {med[k][0]:.0f} ms | {med[k][1]:.0f} ms | {med[k][2]} |")
    print(f"| **speed-up** | **{med['base'][0] / med['current'][0]:.2f}x** | "
          f"**{med['base'][1] / med['current'][1]:.2f}x** | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
