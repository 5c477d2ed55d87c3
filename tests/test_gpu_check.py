"""bench/gpu_check.py without a GPU: its dry run does every step but CUDA (gsplat's kernels
emulated), under ``python -S`` with only torch, torch's dependencies and the wheels that
bench/gpu_wheels.sh downloads importable -- so the script runs and its wheel list is complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_passes_with_only_the_carried_wheels(tmp_path: Path, windmill_dir: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--simulate-bare",
         "--example", str(windmill_dir), "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["check"].split(",")[0]: r for r in result["rows"]}
    assert set(rows) == {"gsplat JIT build", "render: cuda vs cpu", "fit at CUDA defaults", "Zero123++ tiny"}
    assert all(r["ok"] is True for r in rows.values()), rows  # none skipped for a missing package
    assert rows["render: cuda vs cpu"]["max_image_diff"] < 1e-5
    assert rows["render: cuda vs cpu"]["max_grad_rel_error"] < 1e-4
    assert rows["fit at CUDA defaults"]["seconds_per_step"] > 0
    assert result["uncarried"] == []
    assert "ds4d gpu-check" in proc.stdout  # the table
