"""One-off comparison behind the viewer's choice: our Spark page against viser, same splats.

viser is not a ds4d dependency; run this in a separate venv that has both (for example
``python -m venv /tmp/v && /tmp/v/bin/pip install viser==1.1.1``, then let it see the project venv
(``PYTHONPATH=$PWD:$PWD/.venv/lib/python3.11/site-packages``) from the repository root)::

    /tmp/v/bin/python bench/compare_viser.py [5000 50000]   (DS4D_COMPARE_KEEP=DIR keeps the images)

For 5k and 50k Gaussians (bench_viewer's FakeModel cloud, frame 0, no motion) both viewers run in
the same headless Chromium (SwiftShader) at one camera, one after the other; we record the
browser's frame rate (requestAnimationFrame callbacks per second while idle), how the first
image compares with ds4d's own renderer (PSNR, silhouette IoU over the canvas), and every request
outside 127.0.0.1 each page makes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench_viewer import FRAMES  # noqa: E402
from fake_model import FakeModel  # noqa: E402

from ds4d_cli.cameras import c2w_to_viewmat, orbit_camera  # noqa: E402
from ds4d_cli.render.projection import quat_to_rotmat  # noqa: E402
from ds4d_cli.export.html import write_page  # noqa: E402

W, H, AZ, EL, RADIUS, FOV = 640, 480, 30.0, 15.0, 2.0, 49.1  # FOV: vertical, degrees

SHOT_JS = r"""
import { chromium } from "playwright-core";
const [url, shot, seconds, readyJs] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
         "--disable-background-networking", "--disable-component-update", "--no-first-run"] });
const page = await (await browser.newContext({ viewport: { width: %W%, height: %H% }, deviceScaleFactor: 1 })).newPage();
const outside = [];
page.on("request", (r) => { const u = r.url(); if (!/^(https?:\/\/127\.0\.0\.1|file:|blob:|data:)/.test(u)) outside.push(u); });
await page.addInitScript(() => {
  window.__rafCount = 0;
  const raf = window.requestAnimationFrame.bind(window);
  window.requestAnimationFrame = (cb) => raf((t) => { window.__rafCount++; cb(t); });
});
await page.goto(url);
await page.waitForFunction(readyJs, null, { timeout: 300000 });
await new Promise((r) => setTimeout(r, 8000));
// viser pops a "Software WebGL rendering detected" notification over the canvas: not part of the image.
await page.evaluate(() => document.querySelectorAll('[class*="Notification"]').forEach((e) => e.remove()));
await new Promise((r) => setTimeout(r, 1000));
const canvas = page.locator("canvas").first();
const box = await canvas.boundingBox();
await page.screenshot({ path: shot, clip: box, timeout: 300000 });
const c0 = await page.evaluate(() => window.__rafCount); const t0 = Date.now();
await new Promise((r) => setTimeout(r, Number(seconds) * 1000));
const c1 = await page.evaluate(() => window.__rafCount);
process.stdout.write(JSON.stringify({ fps: (c1 - c0) / ((Date.now() - t0) / 1000), outside, box }));
await browser.close();
""".replace("%W%", str(W)).replace("%H%", str(H))


def browse(url: str, shot: Path, ready_js: str, seconds: float = 8.0) -> dict:
    script = REPO / "bench" / ".compare_viser_driver.mjs"  # beside node_modules' resolution root
    script.write_text(SHOT_JS)
    try:
        out = subprocess.run(["node", str(script), url, str(shot), str(seconds), ready_js], capture_output=True,
                             text=True, cwd=REPO, timeout=900)
    finally:
        script.unlink()
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout)


def ours(model: FakeModel, width: int, height: int) -> np.ndarray:
    c2w = orbit_camera(AZ, EL, RADIUS)
    fy = 0.5 * height / np.tan(np.radians(FOV) / 2)
    K = torch.tensor([[fy, 0, width / 2], [0, fy, height / 2], [0, 0, 1]], dtype=torch.float32)[None]
    return model.render(0, c2w_to_viewmat(c2w)[None].float(), K, width, height, torch.ones(3)).rgb[0].numpy()


def scores(shot: Path, reference: np.ndarray) -> tuple[float, float]:
    page = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32) / 255.0
    a, b = np.abs(page - 1).max(-1) > 0.1, np.abs(reference - 1).max(-1) > 0.1
    return float(-10 * np.log10(((page - reference) ** 2).mean())), float((a & b).sum() / max(1, (a | b).sum()))


def viser_run(model: FakeModel, tmp: Path) -> dict:
    import viser

    g = model.gaussians_at(0)
    rot = quat_to_rotmat(g["quats"])
    cov = rot @ torch.diag_embed(torch.exp(2 * g["scales"])) @ rot.transpose(1, 2)
    rgb = (0.5 + 0.28209479177387814 * g["sh0"][:, 0]).clamp(0, 1)
    server = viser.ViserServer(host="127.0.0.1", port=8097, verbose=False)
    server.scene.set_up_direction("+z")
    server.gui.configure_theme(control_layout="collapsible", show_logo=False)
    server.scene.add_gaussian_splats("/splats", centers=g["means"].numpy(), covariances=cov.numpy(),
                                     rgbs=rgb.numpy(), opacities=torch.sigmoid(g["opacities"])[:, None].numpy())
    eye = orbit_camera(AZ, EL, RADIUS)[:3, 3].numpy()
    server.initial_camera.position = tuple(eye)
    server.initial_camera.look_at = (0.0, 0.0, 0.0)
    server.initial_camera.up = (0.0, 0.0, 1.0)
    server.initial_camera.fov = float(np.radians(FOV))
    time.sleep(1.0)
    try:
        result = browse("http://127.0.0.1:8097/", tmp / "viser.png",
                        "() => document.querySelector('canvas') !== null")
    finally:
        server.stop()
    return result


def spark_run(model: FakeModel, tmp: Path) -> dict:
    out = tmp / "page"
    write_page(out, model, list(range(FRAMES)), cameras=None, input_dir=None, duration_s=1.0)
    # The page's own canvas size is the holder's: the side panel takes 260 px of the width.
    url = (out / "index.html").as_uri() + f"?play=0&az={AZ}&el={EL}&r={RADIUS}&fov={FOV}"
    return browse(url, tmp / "spark.png", "() => document.body.dataset.ready === '1'")


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="ds4d-viser-") as tmp_name:
        tmp = Path(tmp_name)
        keep = os.environ.get("DS4D_COMPARE_KEEP")  # a folder to keep the screenshots in
        sizes = [int(a) for a in sys.argv[1:]] or [5000, 50000]
        for n in sizes:
            model = FakeModel(num_frames=FRAMES, n_static=int(0.8 * n), n_moving=n - int(0.8 * n), sh_degree=0, seed=1)
            model.log_scales = model.log_scales - 0.5 * np.log(n / 1000.0)
            for name, run in (("spark (ds4d page)", spark_run), ("viser 1.1.1", viser_run)):
                res = run(model, tmp)
                box = res["box"]
                reference = ours(model, int(round(box["width"])), int(round(box["height"])))
                shot = tmp / ("spark.png" if name.startswith("spark") else "viser.png")
                psnr, iou = scores(shot, reference)
                if keep:
                    Path(keep).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(shot, Path(keep) / f"{n}_{shot.name}")
                    Image.fromarray((reference * 255).astype(np.uint8)).save(Path(keep) / f"{n}_{shot.stem}_ds4d.png")
                rows.append((n, name, res["fps"], psnr, iou, len(res["outside"]), res["outside"][:2]))
                print(rows[-1], flush=True)
    print("| Gaussians | viewer | fps (SwiftShader) | PSNR vs ds4d | IoU | requests outside localhost |")
    print("|---|---|---|---|---|---|")
    for n, name, fps, psnr, iou, nout, _ in rows:
        print(f"| {n:,} | {name} | {fps:.1f} | {psnr:.1f} dB | {iou:.3f} | {nout} |")


if __name__ == "__main__":
    main()
