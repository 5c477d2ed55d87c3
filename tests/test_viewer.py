"""The 4D viewer in a real browser: ``ds4d view`` and the exported page (file://), driven in
Debian's headless Chromium by playwright-core (tests/browser/drive_viewer.mjs), plus the page's
files and the local server.

The browser tests compare what the page draws (Spark, in Chromium's software WebGL) with ds4d's
own renderer at the same camera, and drive the page's controls as a person would.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from viewer_workspace import CLIP_SECONDS, dense_fake_model, fitted_workspace

from ds4d_cli.errors import Ds4dError
from ds4d_cli.export.views import Framing, orbit_views
from ds4d_cli.stages import export as export_stage
from ds4d_cli.stages.export import ExportOptions
from ds4d_cli.fitted import load_fitted
from ds4d_cli.viewer.server import make_server, url_of

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "browser" / "drive_viewer.mjs"
CHROMIUM = os.environ.get("DS4D_CHROMIUM", "/usr/bin/chromium")
FRAMES = 6
SCRUB_TO = 3
SIZE = 256
# The test camera: an orbit view the page takes from its URL, and ds4d renders the same way.
AZ, EL, RADIUS, FOV = 30.0, 15.0, 2.0, 49.1
QUERY = f"?size={SIZE}&play=0&az={AZ}&el={EL}&r={RADIUS}&fov={FOV}&bg=%23ffffff"


@pytest.fixture(scope="module")
def page_ws(tmp_path_factory: pytest.TempPathFactory):
    ws = fitted_workspace(tmp_path_factory.mktemp("viewer"), dense_fake_model(FRAMES))
    result = export_stage.run(ws, ExportOptions(format="html"))
    return ws, result


@pytest.fixture(scope="module")
def browser() -> None:
    """Chromium and playwright-core must be installed (`make test` does it): never skipped."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `make test` (installs Debian's chromium as root) "
                    "or `apt-get install chromium`, or set DS4D_CHROMIUM")
    if shutil.which("node") is None or not (REPO / "node_modules" / "playwright-core").is_dir():
        pytest.fail("node and the npm package playwright-core are needed: run `make setup`")


# ---------------------------------------------------------------- the page's files (fast)


def test_page_folder_is_self_contained_and_sized(page_ws) -> None:
    ws, result = page_ws
    out = ws.stage_dir("export/html")
    for name in ("index.html", "viewer.js", "viewer.css", "vendor/ds4d-lib.js", "scene.js"):
        assert (out / name).is_file(), name
    scene = json.loads(re.search(r"window.DS4D_SCENE = (.*);\s*$", (out / "scene.js").read_text(), re.S).group(1))
    assert [f["file"] for f in scene["frames"]] == [f"frames/frame_{i:04d}.spz.js" for i in range(FRAMES)]
    assert [f["seconds"] for f in scene["frames"]] == pytest.approx([CLIP_SECONDS * i / FRAMES for i in range(FRAMES)])
    assert scene["fps"] == pytest.approx(FRAMES / CLIP_SECONDS)
    assert scene["input"] == [f"input/{i:03d}.png" for i in range(FRAMES)]
    assert all((out / p).is_file() for p in scene["input"])
    # No address outside the folder anywhere in what the page loads (no CDN, no fonts, no analytics).
    for path in out.rglob("*"):
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text(errors="replace")
            assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path
            assert not re.search(r"""(fetch|import)\(\s*["']https?://""", text), path
    # Readable by a web server running as another user.
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o004 for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    # Compressed: SPZ is well under the 248 bytes per Gaussian of an SH-1 3DGS PLY.
    per_gaussian = result.summary["spz_mb_per_frame"] * 1e6 / result.summary["gaussians_max"]
    assert per_gaussian < 40, per_gaussian
    assert export_stage.run(ws, ExportOptions(format="html")).cached


def test_server_serves_the_page_and_reports_a_busy_port(page_ws) -> None:
    ws, _ = page_ws
    server = make_server(ws.stage_dir("export/html"), "127.0.0.1", 0)
    import threading

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = url_of(server)
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "index.html", timeout=10) as resp:
            assert resp.status == 200 and "ds4d viewer" in resp.read().decode()
        with urllib.request.urlopen(url + "viewer.js", timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/javascript")
        with pytest.raises(Ds4dError, match="already in use"):
            make_server(ws.stage_dir("export/html"), "127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_view_without_a_fit_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ds4d_cli.cli import main
    from ds4d_cli.workspace import Workspace

    src = tmp_path / "clip.mp4"
    src.write_bytes(b"x")
    Workspace.create(tmp_path / "ws", src)
    with pytest.raises(SystemExit) as exc:
        main(["-w", str(tmp_path / "ws"), "view", "--port", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "ds4d fit" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) <= 2


# ---------------------------------------------------------------- in the browser (slow)


def drive(url: str, out_dir: Path) -> dict:
    subprocess.run(["node", str(DRIVER), url, str(out_dir), str(SCRUB_TO)], check=True, timeout=240,
                   cwd=REPO, capture_output=True)
    return json.loads((out_dir / "report.json").read_text())


def screenshot(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def silhouette(rgb: np.ndarray) -> np.ndarray:
    """Pixels visibly different from the white background."""
    return np.abs(rgb - 1.0).max(axis=-1) > 0.1


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def check_viewer(report: dict, out_dir: Path, ws, allowed: tuple[str, ...]) -> None:
    assert report["ok"], report.get("failure")
    assert not report["pageErrors"] and not report["consoleErrors"], (report["pageErrors"], report["consoleErrors"])
    # Offline: every request the page made stays inside the served folder (or is an in-page blob/data URL).
    outside = [u for u in report["requests"] if not u.startswith(allowed + ("blob:", "data:"))]
    assert not outside, outside
    assert report["numFrames"] == FRAMES and report["startFrame"] == 0

    # The canvas shows the object as ds4d renders it from the same camera, at two times.
    model = load_fitted(ws)
    viewmats, Ks = orbit_views([AZ], EL, SIZE, Framing(RADIUS, FOV))
    ours = {t: model.render(t, viewmats, Ks, SIZE, SIZE, torch.ones(3)).rgb[0].numpy() for t in (0, SCRUB_TO)}
    start, scrubbed = screenshot(out_dir / "start.png"), screenshot(out_dir / "scrubbed.png")
    assert start.shape == (SIZE, SIZE, 3)
    for t, shot in ((0, start), (SCRUB_TO, scrubbed)):
        score = iou(silhouette(shot), silhouette(ours[t]))
        assert score >= 0.8, (t, score)
    # The two times differ where the object moves (and only there, up to rendering noise).
    moving = np.abs(ours[0] - ours[SCRUB_TO]).max(-1) > 0.2
    assert moving.sum() > 200
    assert np.abs(start - scrubbed).max(-1)[moving].mean() > 0.2
    assert np.abs(start - scrubbed).max(-1)[~moving].mean() < 0.03

    # The controls: scrubbing, play, pause, speed, orbit.
    assert report["scrubbedFrame"] == SCRUB_TO
    assert report["counterStart"].startswith(f"frame 1 / {FRAMES}")
    assert report["counterScrubbed"].startswith(f"frame {SCRUB_TO + 1} / {FRAMES}")
    assert report["inputSrcScrubbed"] == f"input/{SCRUB_TO:03d}.png" != report["inputSrcStart"]
    assert report["playingAfterClick"] is True and len(set(report["framesWhilePlaying"])) == 3
    assert report["playingAfterSecondClick"] is False and len(set(report["framesWhilePaused"])) == 1
    assert report["speedAfterSelect"] == 2
    assert report["frameAfterHome"] == 0
    before, orbited = screenshot(out_dir / "before_orbit.png"), screenshot(out_dir / "orbited.png")
    assert np.abs(before - orbited).mean() > 0.01


@pytest.mark.slow
def test_ds4d_view_serves_a_page_that_plays_the_fit(page_ws, browser, tmp_path: Path) -> None:
    ws, _ = page_ws
    log = (tmp_path / "view.log").open("w")  # not a pipe: a chatty stderr must never block the server
    proc = subprocess.Popen([sys.executable, "-m", "ds4d_cli.cli", "-w", str(ws.root), "view", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "ds4d viewer:" not in line:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                pytest.fail("ds4d view printed no URL within 120 s")
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"ds4d view exited: {(tmp_path / 'view.log').read_text()}")
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        report = drive(url + QUERY, tmp_path)
        check_viewer(report, tmp_path, ws, (url,))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_exported_page_plays_from_disk(page_ws, browser, tmp_path: Path) -> None:
    ws, _ = page_ws
    index = ws.stage_dir("export/html") / "index.html"
    folder = index.parent.as_uri() + "/"
    report = drive(index.as_uri() + QUERY, tmp_path)
    check_viewer(report, tmp_path, ws, (folder,))


def test_view_and_new_export_formats_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    from ds4d_cli.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["view", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--port" in out and "--host" in out
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    for word in ("html", "glb", "obj", "--mesh-resolution", "--iso"):
        assert word in out
