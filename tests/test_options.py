"""Options are declared once: each stage's options dataclass holds the defaults; the CLI restates
them and these tests fail on any drift (CLI defaults, help strings quoting computed defaults,
and what `ds4d run` passes to each stage)."""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path

import pytest
import typer

from ds4d_cli.cli import COMMON_OPTIONS, app, main
from ds4d_cli.stages.evaluate import EvalOptions
from ds4d_cli.stages.export import DEFAULT_FPS, ExportOptions
from ds4d_cli.stages.fit import DEVICE_DEFAULTS, FitOptions
from ds4d_cli.stages.generate import DEFAULT_GUIDANCE, GenerateOptions
from ds4d_cli.stages.preprocess import PreprocessOptions

#: CLI parameter name -> options field, where the two differ.
RENAMED = {"background_plate": "background", "prior_dir": "import_dir", "fmt": "format"}
#: CLI parameters that are not stage options.
CLI_ONLY = {"force", "as_json", "formats", *COMMON_OPTIONS}
#: Fields a stage command does not expose (with the reason).
NOT_EXPOSED = {
    ExportOptions: {"min_opacity"},  # a cleaning threshold, not a user choice
    FitOptions: {"view_check"},  # derived from --view-correction's auto default, not a user choice
}
STAGE_OPTIONS = {"preprocess": PreprocessOptions, "generate": GenerateOptions, "fit": FitOptions,
                 "export": ExportOptions, "eval": EvalOptions}


def _command(name: str):
    return typer.main.get_command(app).commands[name]


def _defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _cli_default(param):
    value = param.default
    return value.value if isinstance(value, Enum) else value


@pytest.mark.parametrize("command", sorted(STAGE_OPTIONS))
def test_stage_command_defaults_are_the_dataclass_defaults(command: str) -> None:
    cls = STAGE_OPTIONS[command]
    fields = {f.name for f in dataclasses.fields(cls)}
    defaults = _defaults(cls)
    exposed = set()
    for param in _command(command).params:
        if param.name in CLI_ONLY:
            continue
        field = RENAMED.get(param.name, param.name)
        assert field in fields, f"{command} --{param.name} is not a field of {cls.__name__}"
        exposed.add(field)
        if field in defaults:
            assert _cli_default(param) == defaults[field], f"{command} --{param.name}"
        else:  # a required field is a required CLI parameter
            assert param.required, f"{command} {param.name}"
    assert fields - exposed == NOT_EXPOSED.get(cls, set()), f"{command} does not expose {fields - exposed}"


def test_run_options_have_their_stage_defaults() -> None:
    owners = [PreprocessOptions, GenerateOptions, FitOptions]
    for param in _command("run").params:
        if param.name in CLI_ONLY or param.required:
            continue
        field = RENAMED.get(param.name, param.name)
        owning = [cls for cls in owners if field in _defaults(cls)]
        assert owning, f"run --{param.name} belongs to no stage"
        for cls in owning:
            assert _cli_default(param) == _defaults(cls)[field], f"run --{param.name} vs {cls.__name__}"


def _help(command: str, name: str) -> str:
    return next(p.help for p in _command(command).params if p.name == name)


def test_help_strings_quote_the_computed_defaults() -> None:
    from ds4d_cli.priors.layout import DEFAULT_STEPS
    from ds4d_cli.video import DEFAULT_FOLDER_FPS

    for name, (cpu, cuda) in DEVICE_DEFAULTS.items():
        assert f"{cpu} on CPU, {cuda} on CUDA" in _help("fit", name), name
    assert f"default {DEFAULT_STEPS['v1.1']} / {DEFAULT_STEPS['v1.2']} on v1.2" in _help("generate", "steps")
    assert f"default {DEFAULT_GUIDANCE}" in _help("generate", "guidance")
    assert f"default {DEFAULT_FOLDER_FPS:g}" in _help("preprocess", "fps")
    assert f"at least {DEFAULT_FPS:g}" in _help("export", "fps")


def test_run_passes_each_stage_its_own_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`ds4d run CLIP` hands every stage exactly its dataclass defaults: nothing hard-coded can drift."""
    from ds4d_cli.stages import export, fit, generate, preprocess
    from ds4d_cli.workspace import StageResult, Workspace

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not decoded here")
    seen: dict[str, list] = {}

    def fake(stage):
        def run(workspace, opts, force=False):
            seen.setdefault(stage, []).append(opts)
            if stage == "preprocess":
                Workspace.create(workspace, clip)
            return StageResult(stage, False, {"outputs": []}, tmp_path)
        return run

    for module, name in ((preprocess, "preprocess"), (generate, "generate"), (fit, "fit"), (export, "export")):
        monkeypatch.setattr(module, "run", fake(name))
    with pytest.raises(SystemExit) as exc:
        main(["-w", str(tmp_path / "ws"), "run", str(clip)])
    assert exc.value.code == 0, capsys.readouterr().err
    assert seen["preprocess"] == [PreprocessOptions(source=str(clip))]
    assert seen["generate"] == [GenerateOptions()]
    assert seen["fit"] == [FitOptions()]
    assert seen["export"] == [ExportOptions(format="ply"), ExportOptions(format="mp4")]


#: `ds4d batch` parameters that `ds4d run` does not have (the batch's own), and run's that batch
#: leaves out (with the reason).
BATCH_ONLY = {"clips", "out", "workers", "ray"}
RUN_ONLY = {"source", "prior_dir"}  # one clip; `--prior import DIR` holds one clip's views


def test_batch_takes_runs_options_with_the_same_defaults() -> None:
    run_params = {p.name: p for p in _command("run").params}
    batch_params = {p.name: p for p in _command("batch").params}
    assert set(batch_params) - BATCH_ONLY == set(run_params) - RUN_ONLY
    for name in set(batch_params) - BATCH_ONLY:
        assert _cli_default(batch_params[name]) == _cli_default(run_params[name]), f"batch --{name}"


def test_batch_passes_each_stage_its_own_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`ds4d batch CLIP --out D` plans exactly the dataclass defaults for every stage of every clip."""
    from ds4d_cli.batch import runner
    from ds4d_cli.batch.worker import StagePlan

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not decoded here")
    seen = {}

    def fake_run_batch(clips, out, plan, **kwargs):
        seen.update(clips=clips, out=out, plan=plan, **kwargs)
        return runner.BatchReport(out, [])

    monkeypatch.setattr(runner, "run_batch", fake_run_batch)
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(clip), "--out", str(tmp_path / "out")])
    assert exc.value.code == 0, capsys.readouterr().err
    assert seen["plan"] == StagePlan.from_options(PreprocessOptions(source=str(clip)), GenerateOptions(), FitOptions(),
                                                  [ExportOptions(format="ply"), ExportOptions(format="mp4")])
    assert seen["clips"] == [str(clip)] and seen["workers"] is None and seen["ray"] is False


def test_views_per_step_reaches_the_trainer_and_a_negative_one_is_refused() -> None:
    from ds4d_cli.errors import Ds4dError
    from ds4d_cli.stages.fit import resolve_options, train_config

    assert train_config(resolve_options(FitOptions(device="cpu", views_per_step=4))).views_per_step == 4
    assert train_config(resolve_options(FitOptions(device="cpu", views_per_step=0))).views_per_step == 0
    assert train_config(resolve_options(FitOptions(device="cpu"))).views_per_step == 4  # the CPU default
    with pytest.raises(Ds4dError, match="--views-per-step"):
        resolve_options(FitOptions(device="cpu", views_per_step=-1))
