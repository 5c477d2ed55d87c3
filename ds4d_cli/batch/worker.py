"""One clip of a batch, start to finish: the work a worker process or a Ray task does.

:func:`run_clip` runs preprocess, generate, fit and the exports in a clip's workspace, exactly
as ``ds4d run`` does, each stage cached and resumable (the fit resumes from its checkpoint). It
never raises for a bad clip: the first error becomes the clip's one-line ``error`` in its
:class:`ClipResult`, so one broken clip cannot stop the others. What the stages report is sent,
tagged with the clip's name, to ``send`` (a queue's ``put``), as plain picklable messages.

Nothing here imports torch at module level: a worker sets its environment (which GPU, how many
rasterizer threads) before the stages import it.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ds4d_cli import report
from ds4d_cli.batch.clips import Clip

DONE = "done"
FAILED = "failed"

#: Progress events a worker forwards per task and second; the live table needs no more.
PROGRESS_PER_SECOND = 2.0


@dataclass(frozen=True)
class StagePlan:
    """The options of every stage for each clip, as plain dicts (``asdict`` of the stages'
    options dataclasses), so a plan pickles without importing torch and reads back from JSON.
    ``preprocess`` has no ``source``: each clip brings its own."""

    preprocess: dict[str, Any]
    generate: dict[str, Any]
    fit: dict[str, Any]
    exports: tuple[dict[str, Any], ...]
    force: bool = False

    @classmethod
    def from_options(cls, preprocess: Any, generate: Any, fit: Any, exports: list[Any], force: bool = False) -> "StagePlan":
        pre = asdict(preprocess)
        pre.pop("source", None)
        return cls(pre, asdict(generate), asdict(fit), tuple(asdict(e) for e in exports), force)


@dataclass
class ClipResult:
    """What batch.json records for one clip."""

    clip: str
    source: str
    workspace: str
    status: str = FAILED  # done | failed
    error: Optional[str] = None  # one line: "stage: problem — fix"
    failed_stage: Optional[str] = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> {"seconds", "cached"}
    psnr_input: Optional[float] = None  # the fit's PSNR on the input view (dB, all frames)
    resumed_from: Optional[int] = None  # the fit step this run resumed from (0: from scratch)
    outputs: dict[str, list[str]] = field(default_factory=dict)  # export format -> paths
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- messages from a worker to the parent (picklable) -------------------------------------------
@dataclass(frozen=True)
class StageStarted:
    clip: str
    stage: str


@dataclass(frozen=True)
class ClipEvent:
    clip: str
    event: report.Event
    time: float = 0.0  # when the worker emitted it (time.time()): rates stay right when events come in bursts


@dataclass(frozen=True)
class ClipFinished:
    result: ClipResult


Message = Any  # StageStarted | ClipEvent | ClipFinished


class _ThrottledForwarder(report.Reporter):
    """Forwards every event tagged with its clip, but a task's progress at most a few times a
    second (the last one is always sent before the task ends, so its final count is right)."""

    def __init__(self, clip: str, send: Callable[[Message], None]) -> None:
        self._clip, self._send = clip, send
        self._last: dict[str, float] = {}
        self._held: dict[str, report.TaskProgress] = {}

    def emit(self, event: report.Event) -> None:
        if isinstance(event, report.TaskProgress):
            now = time.monotonic()
            if now - self._last.get(event.task, 0.0) < 1.0 / PROGRESS_PER_SECOND:
                self._held[event.task] = event
                return
            self._last[event.task] = now
            self._held.pop(event.task, None)
        elif isinstance(event, report.TaskEnded) and event.task in self._held:
            self._send(ClipEvent(self._clip, self._held.pop(event.task), time.time()))
        self._send(ClipEvent(self._clip, event, time.time()))


def one_line_error(exc: BaseException) -> str:
    """A user error as the CLI prints it (problem — fix); anything else as its type and first line."""
    from ds4d_cli.errors import Ds4dError

    if isinstance(exc, Ds4dError):
        return f"{exc.message} — {exc.hint}" if exc.hint else exc.message
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"internal error: {type(exc).__name__}{': ' + text if text else ''}"


def run_clip(clip: Clip, plan: StagePlan, send: Callable[[Message], None] = lambda m: None) -> ClipResult:
    """Run every stage of ``clip`` (cached ones are skipped); never raises for a bad clip."""
    result = ClipResult(clip.name, str(clip.source), str(clip.workspace))
    t_clip = time.perf_counter()
    stage = "preprocess"
    try:
        with report.using(_ThrottledForwarder(clip.name, send)):
            for stage, call in _stages(clip, plan):
                send(StageStarted(clip.name, stage))
                t0 = time.perf_counter()
                done = call()
                result.stages[stage] = {"seconds": round(time.perf_counter() - t0, 2), "cached": bool(done.cached)}
                _collect(result, stage, done.summary)
        result.status = DONE
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a clip's failure is data, not the batch's end
        result.error, result.failed_stage = f"{stage}: {one_line_error(exc)}", stage
        from ds4d_cli.errors import Ds4dError

        if not isinstance(exc, Ds4dError):  # a bug: keep its traceback beside the workspace
            _write_traceback(clip.workspace, stage)
    result.seconds = round(time.perf_counter() - t_clip, 2)
    return result


def _stages(clip: Clip, plan: StagePlan):
    """(stage name, call) in pipeline order; the options dataclasses are rebuilt here, in the worker."""
    from ds4d_cli.stages import export, fit, generate, preprocess
    from ds4d_cli.workspace import Workspace

    force = plan.force
    pre = preprocess.PreprocessOptions(source=str(clip.source), **plan.preprocess)
    yield "preprocess", lambda: preprocess.run(clip.workspace, pre, force=force)
    ws = Workspace.open(clip.workspace)
    yield "generate", lambda: generate.run(ws, generate.GenerateOptions(**plan.generate), force=force)
    yield "fit", lambda: fit.run(ws, fit.FitOptions(**plan.fit), force=force)
    for opts in plan.exports:
        yield f"export/{opts['format']}", lambda o=opts: export.run(ws, export.ExportOptions(**o), force=force)


def _collect(result: ClipResult, stage: str, summary: dict[str, Any]) -> None:
    if stage == "fit":
        result.psnr_input = (summary.get("psnr") or {}).get("input")
        result.resumed_from = summary.get("resumed_from")
    elif stage.startswith("export/"):
        result.outputs[stage.split("/", 1)[1]] = [str(p) for p in summary.get("outputs", [])]


def _write_traceback(workspace: Path, stage: str) -> None:
    try:
        workspace.mkdir(parents=True, exist_ok=True)
        (workspace / "batch-error.txt").write_text(f"stage: {stage}\n{traceback.format_exc()}", encoding="utf-8")
    except OSError:
        pass
