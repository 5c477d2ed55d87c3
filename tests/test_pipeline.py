"""The flow the tool is designed around: `preprocess`, then `fit` (which runs a missing `generate`
itself, as make would), then `export`; and the clear errors where a missing stage cannot run by
itself. Output goes to a pipe here, so progress comes as plain lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from plyfile import PlyData

from ds4d_cli.cli import main
from ds4d_cli.workspace import Workspace


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.fixture
def preprocessed(tmp_path: Path, assets_dir: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    case = assets_dir / "windmill"
    ws = tmp_path / "ws"
    code, err = _cli(capsys, "preprocess", str(case / "input.mp4"), "-w", str(ws), "--frames", "3", "--size", "48",
                     "--segmenter", "static-bg", "--background-plate", str(case / "background.png"))
    assert code == 0, err
    return ws


@pytest.mark.slow
def test_preprocess_then_fit_then_export(preprocessed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = str(preprocessed)
    code, err = _cli(capsys, "fit", "-w", ws, "--steps", "8", "--resolution", "32", "--num-gaussians", "300",
                     "--preview-every", "0")
    assert code == 0, err
    lines = err.splitlines()
    announced = [line for line in lines if "'generate' has not run" in line]
    assert announced == ["fit: 'generate' has not run; running `ds4d generate --prior auto` first"]
    assert any(line.startswith("generate: done") for line in lines)
    assert lines.index(announced[0]) < next(i for i, line in enumerate(lines) if line.startswith("fit: done"))
    # no terminal: one whole plain progress line (the fit is shorter than the log interval)
    assert any(re.fullmatch(r"Fitting: step 8/8 loss [\d.e-]+ psnr [\d.]+ gaussians \d+ [\d.]+ it/s took \d+:\d\d", line)
               for line in lines), err
    assert "\x1b" not in err and "━" not in err

    code, err = _cli(capsys, "export", "-w", ws, "--format", "ply")
    assert code == 0, err
    plys = sorted((preprocessed / "export" / "ply").glob("frame_*.ply"))
    assert len(plys) == 3 and PlyData.read(str(plys[0]))["vertex"].count > 0
    w = Workspace.open(preprocessed)
    assert all(w.status(s).state == "done" for s in ("preprocess", "generate", "fit", "export/ply"))


def test_export_without_fit_is_a_clear_error_and_runs_nothing(preprocessed: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(capsys, "export", "-w", str(preprocessed), "--format", "ply")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "stage 'fit' has not run" in lines[0] and "`ds4d fit`" in lines[0], err
    assert "runs a missing generate itself" in lines[0]
    assert Workspace.open(preprocessed).read_manifest("generate") is None  # nothing ran before the error


def test_fit_without_preprocess_names_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    Workspace.create(tmp_path / "ws", clip)
    code, err = _cli(capsys, "fit", "-w", str(tmp_path / "ws"))
    assert code == 2 and "stage 'preprocess' has not run" in err and "ds4d preprocess CLIP" in err


def test_bad_fit_options_fail_before_generate_runs(preprocessed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(capsys, "fit", "-w", str(preprocessed), "--steps", "0")
    assert code == 2 and "--steps must be at least 1" in err
    assert Workspace.open(preprocessed).read_manifest("generate") is None
