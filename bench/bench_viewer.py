"""The viewer page's figures: size per frame, load time, frame rate and fidelity in Chromium.

For 5k and 50k Gaussians (a FakeModel blob with a moving part, SH degree 0 as ds4d's fits), the
page is exported with the same code as ``ds4d export --format html``; then headless Chromium
(SwiftShader: WebGL on the CPU, so frame rates are a lower bound) loads it from disk, and its
first image is compared with ds4d's own renderer at the same camera (PSNR, silhouette IoU).

    python bench/bench_viewer.py        (also part of `make bench`)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fake_model import FakeModel  # noqa: E402

from ds4d_cli.export.html import write_page  # noqa: E402
from ds4d_cli.export.ply import write_frame_ply  # noqa: E402
from ds4d_cli.export.views import Framing, orbit_views  # noqa: E402

SIZE, AZ, EL = 512, 30.0, 15.0
FRAMES = 8


def measure(n: int, tmp: Path, seconds: float = 5.0) -> dict[str, float]:
    model = FakeModel(num_frames=FRAMES, n_static=int(0.8 * n), n_moving=n - int(0.8 * n), sh_degree=0, seed=1)
    model.log_scales = model.log_scales - 0.5 * np.log(n / 1000.0)  # denser clouds of smaller splats
    out = tmp / f"page_{n}"
    summary = write_page(out, model, list(range(FRAMES)), cameras=None, input_dir=None, duration_s=1.0)
    ply_bytes = write_frame_ply(tmp / f"frame_{n}.ply", model.gaussians_at(0)) and (tmp / f"frame_{n}.ply").stat().st_size
    shot = tmp / f"shot_{n}.png"
    url = (out / "index.html").as_uri() + f"?size={SIZE}&play=0&az={AZ}&el={EL}&r=2&fov=49.1"
    run = subprocess.run(["node", str(REPO / "bench" / "viewer_fps.mjs"), url, str(shot), str(seconds)],
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    if run.returncode:
        raise RuntimeError(f"browser run failed: {run.stderr[-2000:]}")
    browser = json.loads(run.stdout)
    viewmats, Ks = orbit_views([AZ], EL, SIZE, Framing(2.0, 49.1))
    ours = model.render(0, viewmats, Ks, SIZE, SIZE, torch.ones(3)).rgb[0].numpy()
    page = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32) / 255.0
    sil_a, sil_b = np.abs(ours - 1).max(-1) > 0.1, np.abs(page - 1).max(-1) > 0.1
    return {
        "gaussians": n,
        "page_mb_per_frame": summary["mb_per_frame"],
        "spz_mb_per_frame": summary["spz_mb_per_frame"],
        "ply_mb_per_frame": ply_bytes / 1e6,
        "load_s": browser["loadSeconds"],
        "paused_fps": browser["pausedFps"],
        "playing_fps": browser["playingFps"],
        "psnr_db": float(-10 * np.log10(((ours - page) ** 2).mean())),
        "iou": float((sil_a & sil_b).sum() / max(1, (sil_a | sil_b).sum())),
    }


def run(sizes: tuple[int, ...] = (5000, 50000)) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="ds4d-viewer-bench-") as tmp:
        return [measure(n, Path(tmp)) for n in sizes]


def render_table(rows: list[dict[str, float]]):
    from rich.table import Table

    table = Table(title=f"viewer page ({FRAMES} frames, {SIZE}x{SIZE} canvas, headless Chromium + SwiftShader)")
    for col in ("Gaussians", "page MB/frame", "SPZ MB/frame", "PLY MB/frame", "load s", "fps paused", "fps playing", "PSNR vs ds4d", "IoU"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['gaussians']:,}", f"{r['page_mb_per_frame']:.3f}", f"{r['spz_mb_per_frame']:.3f}",
                      f"{r['ply_mb_per_frame']:.2f}", f"{r['load_s']:.1f}", f"{r['paused_fps']:.1f}", f"{r['playing_fps']:.1f}", f"{r['psnr_db']:.1f} dB",
                      f"{r['iou']:.3f}")
    return table


if __name__ == "__main__":
    from rich.console import Console

    Console().print(render_table(run()))
