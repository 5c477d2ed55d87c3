"""The CLI contract: every command has help, user errors are one line + hint + exit 2, --debug traces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ds4d_cli.cli import main

COMMANDS = ["preprocess", "generate", "fit", "export", "eval", "run", "status", "doctor"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert "Usage" in out and len(out.split()) > 15


def test_missing_workspace_is_one_line_with_hint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, "-w", str(tmp_path / "none"), "status")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "no ds4d workspace" in lines[0] and "ds4d preprocess" in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["generate"], ["fit"], ["export"], ["eval", "--gt", "x"]])
def test_later_stages_without_workspace_fail_cleanly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    code, _, err = run_cli(capsys, "-w", str(tmp_path / "none"), *command)
    assert code == 2
    assert "Traceback" not in err and "error:" in err


def test_workspace_from_environment(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DS4D_WORKSPACE", str(tmp_path / "from_env"))
    code, _, err = run_cli(capsys, "status")
    assert code == 2 and str(tmp_path / "from_env") in err.replace("\n", "")


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "--debug", "-w", str(tmp_path / "none"), "status")
    assert code == 2
    assert "Traceback" in err


def test_missing_input_file_is_a_user_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "-w", str(tmp_path / "ws"), "preprocess", str(tmp_path / "nope.mp4"))
    assert code == 2
    assert "nope.mp4" in err and "Traceback" not in err
    assert not (tmp_path / "ws" / "preprocess" / "manifest.json").exists()


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "fit", "--no-such-option")
    assert code == 2 and "No such option" in err


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("ds4d")
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ds4d ")
