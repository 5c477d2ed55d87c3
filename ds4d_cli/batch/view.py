"""What a person sees while a batch runs: a live table on a terminal, plain lines in a log.

The CLI side of ``ds4d batch`` (like :mod:`ds4d_cli.terminal`): ``cli.py`` hands
:func:`make_view` to :func:`ds4d_cli.batch.runner.run_batch`, which feeds it the workers' messages.

:class:`Board` is the batch's live state (per clip: state, stage, the running task's progress
and figures, seconds), fed by the workers' messages (:mod:`ds4d_cli.batch.worker`), which carry
the stages' own report events; nothing parses output. :class:`LiveTable` redraws it with rich on
a terminal; :class:`BatchLog` writes whole lines instead (each clip's events through
:class:`ds4d_cli.terminal.LogRenderer`, prefixed with the clip's name), for logs and pipes.
:func:`summary_table` is the table printed at the end.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TextIO

from ds4d_cli import report
from ds4d_cli.batch.runner import BatchView
from ds4d_cli.batch.worker import DONE, ClipEvent, ClipFinished, ClipResult, StageStarted
from ds4d_cli.terminal import LogRenderer, figures_text, format_duration

QUEUED, RUNNING = "queued", "running"


@dataclass
class ClipRow:
    """One line of the live table."""

    clip: str
    state: str = QUEUED  # queued | running | done | failed
    stage: str = ""
    where: str = ""  # the worker's share: "GPU 0", "2 rasterizer threads", a Ray node's request
    task: Optional[report.TaskStarted] = None
    completed: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    started: Optional[float] = None
    ended: Optional[float] = None
    error: Optional[str] = None
    cached: list[str] = field(default_factory=list)  # stages found done in the workspace

    def seconds(self, now: float) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or now) - self.started

    def progress_text(self) -> str:
        if self.task is None:
            return ""
        unit = f"{self.task.unit} " if self.task.unit else ""
        return f"{self.task.title}: {unit}{int(self.completed)}/{int(self.task.total)}"


class Board:
    """The live state of every clip, from the workers' messages."""

    def __init__(self, clips: list[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.rows = {name: ClipRow(name) for name in clips}
        self.clock = clock

    def start(self, clip: str, where: str = "") -> None:
        row = self.rows[clip]
        row.state, row.where, row.started = RUNNING, where, self.clock()

    def handle(self, msg: Any) -> None:
        if isinstance(msg, StageStarted):
            row = self.rows[msg.clip]
            row.stage, row.task, row.figures = msg.stage, None, {}
            if row.started is None:  # Ray: a task starts when a node takes it, not when submitted
                row.state, row.started = RUNNING, self.clock()
        elif isinstance(msg, ClipEvent):
            row, event = self.rows[msg.clip], msg.event
            if isinstance(event, report.TaskStarted):
                row.task, row.completed, row.figures = event, event.completed, {}
            elif isinstance(event, report.TaskProgress) and row.task is not None and event.task == row.task.task:
                row.completed, row.figures = event.completed, dict(event.figures)
            elif isinstance(event, report.StageDone) and event.cached:
                row.cached.append(event.stage)
        elif isinstance(msg, ClipFinished):
            row = self.rows[msg.result.clip]
            row.state, row.error, row.ended = msg.result.status, msg.result.error, self.clock()
            row.task = None
            if row.started is None:
                row.started = row.ended - msg.result.seconds

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows.values():
            out[row.state] = out.get(row.state, 0) + 1
        return out


class LiveTable(BatchView):
    """The board redrawn with rich, a few times a second, until :meth:`close`."""

    def __init__(self, board: Board, console: Any) -> None:
        from rich.live import Live

        self.board, self.console = board, console
        # transient: the summary table printed at the end replaces it
        self._live = Live(console=console, refresh_per_second=4, get_renderable=self._render, transient=True)
        self._live.start()

    def start(self, clip: str, where: str) -> None:
        self.board.start(clip, where)

    def handle(self, msg: Any) -> None:
        self.board.handle(msg)
        if isinstance(msg, ClipEvent) and isinstance(msg.event, report.Message) and msg.event.level == report.WARNING:
            from rich.text import Text

            self.console.print(Text.assemble((f"{msg.clip}: ", "bold"), ("warning:", "yellow"), " ", msg.event.text),
                               soft_wrap=True)

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        now = self.board.clock()
        table = Table(title=_title(self.board), title_justify="left", expand=False)
        for col, justify in (("clip", "left"), ("state", "left"), ("stage", "left"), ("progress", "left"),
                             ("", "left"), ("seconds", "right")):
            table.add_column(col, justify=justify, no_wrap=True)
        table.add_column("figures / error", no_wrap=True, overflow="ellipsis", min_width=30, max_width=70)
        for row in self.board.rows.values():
            style = {"done": "green", "failed": "red", RUNNING: "cyan"}.get(row.state, "dim")
            bar: Any = ""
            if row.task is not None and row.task.total > 0:
                bar = ProgressBar(total=row.task.total, completed=row.completed, width=20)
            figures = figures_text(row.task.fields, row.figures) if row.task else (row.error or "")
            table.add_row(row.clip, Text(row.state, style=style), row.stage if row.state == RUNNING else "",
                          row.progress_text(), bar, f"{row.seconds(now):.0f}" if row.started is not None else "",
                          Text(figures, style="red" if row.error else ""))
        return table

    def close(self) -> None:
        self._live.refresh()
        self._live.stop()


class BatchLog(BatchView):
    """Whole plain lines: each clip's events as ``ds4d`` prints them in a log, prefixed ``[clip]``."""

    def __init__(self, board: Board, stream: Optional[TextIO] = None, quiet: bool = False) -> None:
        self.board, self.quiet = board, quiet
        self._stream = stream
        self._event_time = 0.0  # each clip's log lines are timed by its worker's clock, not by arrival
        self._renderers = {name: LogRenderer(_Prefixed(self._write, name), quiet=quiet, clock=lambda: self._event_time)
                           for name in board.rows}

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def start(self, clip: str, where: str) -> None:
        self.board.start(clip, where)
        if not self.quiet:
            self._write(f"[{clip}] started{' on ' + where if where else ''}")

    def handle(self, msg: Any) -> None:
        self.board.handle(msg)
        if isinstance(msg, StageStarted) and not self.quiet:
            self._write(f"[{msg.clip}] {msg.stage}")
        elif isinstance(msg, ClipEvent):
            self._event_time = msg.time
            self._renderers[msg.clip].emit(msg.event)
        elif isinstance(msg, ClipFinished):
            r = msg.result
            took = f"in {format_duration(r.seconds)}"
            self._write(f"[{r.clip}] done {took}" if r.status == DONE else f"[{r.clip}] failed {took}: {r.error}")

    def close(self) -> None:
        return None


class _Prefixed:
    """A text stream that prefixes each line with the clip's name (for a LogRenderer)."""

    def __init__(self, write: Callable[[str], None], clip: str) -> None:
        self._write, self._clip = write, clip

    def write(self, text: str) -> None:
        for line in text.splitlines():
            self._write(f"[{self._clip}] {line}")

    def flush(self) -> None:
        return None


def _title(board: Board) -> str:
    counts = board.counts()
    parts = [f"{counts[k]} {k}" for k in (RUNNING, QUEUED, "done", "failed") if counts.get(k)]
    return "ds4d batch: " + ", ".join(parts)


def make_view(clips: list[str], quiet: bool = False, stream: Optional[TextIO] = None) -> BatchView:
    """The live table when ``stream`` (default stderr) is a terminal and not quiet, else log lines."""
    board = Board(clips)
    stream = stream or sys.stderr
    if not quiet and getattr(stream, "isatty", lambda: False)():
        from ds4d_cli.console import console

        return LiveTable(board, console)
    return BatchLog(board, stream, quiet)


def summary_table(results: list[ClipResult], stages: list[str], title: str) -> Any:
    """The table printed at the end: per clip its state, seconds per stage, input-view PSNR, error."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left",
                  caption="seconds spent in each stage by this run (c = cached: already done in the workspace); "
                          "PSNR: the fit's input view, all frames, in dB")
    table.add_column("clip", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for stage in stages:
        table.add_column(stage, justify="right", no_wrap=True)
    table.add_column("PSNR", justify="right", no_wrap=True)
    table.add_column("total s", justify="right", no_wrap=True)
    table.add_column("error / workspace")
    for r in results:
        cells = []
        for stage in stages:
            s = r.stages.get(stage)
            cells.append("" if s is None else ("c" if s["cached"] else f"{s['seconds']:.1f}"))
        psnr = f"{r.psnr_input:.2f}" if r.psnr_input is not None else ""
        state = Text(r.status, style="green" if r.status == DONE else "bold red")
        table.add_row(r.clip, state, *cells, psnr, f"{r.seconds:.1f}",
                      Text(r.error, style="red") if r.error else Text(r.workspace, style="dim"))
    return table
