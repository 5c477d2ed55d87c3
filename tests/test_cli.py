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


# ------------------------------------------------------- common options before or after the command
def _capture_stage(monkeypatch: pytest.MonkeyPatch, module: str) -> dict:
    """Replace a stage's run() with one that records its workspace argument and reports a line."""
    import importlib

    from ds4d_cli import report

    seen: dict = {}

    def fake_run(workspace, opts, force=False):
        seen["workspace"] = workspace
        report.info("an info line")
        report.warn("a warning line")
        raise SystemExit(0)

    monkeypatch.setattr(importlib.import_module(f"ds4d_cli.stages.{module}"), "run", fake_run)
    return seen


@pytest.mark.parametrize("command", COMMANDS)
def test_workspace_option_after_every_command(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    ws = tmp_path / "after"
    if command in ("preprocess", "run"):  # these create the workspace: check what reaches the stage
        seen = _capture_stage(monkeypatch, "preprocess")
        code, _, err = run_cli(capsys, "-w", str(tmp_path / "before"), command, "clip.mp4", "-w", str(ws), "--quiet")
        assert code == 0 and Path(seen["workspace"]) == ws  # after the command wins over before it
        assert "a warning line" in err and "an info line" not in err  # --quiet after the command
    elif command == "doctor":  # needs no workspace, but accepts the common options
        import ds4d_cli.doctor

        monkeypatch.setattr(ds4d_cli.doctor, "print_report", lambda: print("doctor ran"))
        code, out, _ = run_cli(capsys, command, "-w", str(ws), "--quiet", "--debug")
        assert code == 0 and "doctor ran" in out
    else:
        extra = ["--gt", str(tmp_path)] if command == "eval" else []
        code, _, err = run_cli(capsys, command, *extra, "-w", str(ws))
        assert code == 2 and f"no ds4d workspace at {ws}" in err.replace("\n", ""), err
        code, _, err = run_cli(capsys, command, *extra, "--workspace", str(ws), "--debug")
        assert code == 2 and "Traceback" in err  # --debug after the command


def test_quiet_before_the_command_still_works(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _capture_stage(monkeypatch, "preprocess")
    code, _, err = run_cli(capsys, "--quiet", "-w", str(tmp_path), "preprocess", "clip.mp4")
    assert code == 0 and "a warning line" in err and "an info line" not in err
    code, _, err = run_cli(capsys, "-w", str(tmp_path), "preprocess", "clip.mp4")
    assert code == 0 and "an info line" in err


def test_common_options_are_in_every_command_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in COMMANDS:
        _, out, _ = run_cli(capsys, command, "--help")
        assert all(opt in out for opt in ("--workspace", "--debug", "--quiet")), command


def test_cli_runner_accepts_the_workspace_after_the_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ds4d_cli.cli import app

    result = CliRunner().invoke(app, ["status", "-w", str(tmp_path / "ws")])
    assert result.exit_code != 0 and "No such option" not in result.output
    assert "no ds4d workspace" in str(result.exception)
