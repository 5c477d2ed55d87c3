"""`ds4d run`: every stage in order, then all cache hits on the second call."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import pytest
from plyfile import PlyData

from ds4d_cli.cli import main
from ds4d_cli.workspace import STAGES, Workspace


def _run(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    _, err = capsys.readouterr()
    assert exc.value.code == 0, err
    return err


@pytest.mark.slow
def test_run_twice_second_is_all_cache_hits(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            assets_dir: Path) -> None:
    case = assets_dir / "windmill"
    ws_dir = tmp_path / "ws"
    args = [
        "-w", str(ws_dir), "run", str(case / "input.mp4"), "--prior", "import", str(case), "--views", "az090,az270",
        "--frames", "4", "--size", "64", "--segmenter", "static-bg", "--background-plate", str(case / "background.png"),
        "--steps", "30", "--resolution", "64", "--formats", "ply,mp4",
    ]
    first = _run(capsys, args)
    assert "cached" not in first
    ws = Workspace.open(ws_dir)
    for stage in ("preprocess", "generate", "fit", "export/ply", "export/mp4"):
        assert ws.status(stage).state == "done", stage
    assert ws.status("export/grid").state == "missing" and "export/grid" in STAGES

    plys = sorted((ws_dir / "export" / "ply").glob("frame_*.ply"))
    assert len(plys) == 4
    assert PlyData.read(str(plys[0]))["vertex"].count > 100
    meta = iio.immeta(ws_dir / "export" / "mp4" / "turntable.mp4")
    assert meta.get("codec") in ("h264", "libx264") or "h264" in str(meta)
    assert "turntable.mp4" in first  # the final listing names the outputs

    mtimes = {p: p.stat().st_mtime_ns for p in ws_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    second = _run(capsys, args)
    for stage in ("preprocess", "generate", "fit", "export/ply", "export/mp4"):
        assert f"{stage}: cached" in second, second
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing was rewritten
