"""Renderers of :mod:`ds4d_cli.report` events for a person: rich on a terminal, plain lines in a log.

The CLI picks one with :func:`make_renderer`: :class:`RichRenderer` when stderr is a terminal
(bars with the figures, it/s and ETA), else :class:`LogRenderer`, which writes one whole line per
task every few seconds and when it ends, e.g.
``Fitting: step 120/1000 loss 0.0123 psnr 28.41 gaussians 5210 4.1 it/s ETA 3:35`` -- never
wrapped or cut to a terminal width. ``quiet`` keeps warnings and stage results only.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TextIO

from ds4d_cli.report import WARNING, Event, Message, Reporter, StageDone, TaskEnded, TaskProgress, TaskStarted

#: Seconds between two progress lines of one task in a log.
LOG_INTERVAL_S = 5.0


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def figures_text(fields: tuple[str, ...], figures: dict[str, Any], sep: str = " ") -> str:
    """``loss 0.0123 psnr 28.41`` for the named fields that have a value, in their order."""
    return sep.join(f"{k} {format_value(figures[k])}" for k in fields if k in figures)


def format_duration(seconds: float) -> str:
    """``3:35`` or ``1:02:03``."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_rate(per_second: float) -> str:
    return f"{per_second:.1f}" if per_second >= 1 else f"{per_second:.2f}"


def stage_summary(event: StageDone, max_figures: int = 6) -> str:
    """The short scalar figures of a stage's summary as ``key=value`` pairs."""
    figures = {k: v for k, v in event.summary.items()
               if isinstance(v, (int, float, str)) and not isinstance(v, bool) and len(str(v)) < 60}
    return "  ".join(f"{k}={format_value(v)}" for k, v in list(figures.items())[:max_figures])


def stage_warnings(event: StageDone) -> list[str]:
    """Warnings a stage recorded in its summary (shown again on every cached rerun)."""
    return [str(w) for w in event.summary.get("warnings", []) or []]


@dataclass
class _TaskState:
    start: TaskStarted
    t0: float
    completed: float
    figures: dict[str, Any]
    last_line: float

    def counts(self) -> str:
        done = int(self.completed) if float(self.completed).is_integer() else self.completed
        total = int(self.start.total) if float(self.start.total).is_integer() else self.start.total
        return f"{self.start.unit + ' ' if self.start.unit else ''}{done}/{total}"

    def rate(self, now: float) -> Optional[float]:
        elapsed, done = now - self.t0, self.completed - self.start.completed
        return done / elapsed if elapsed > 0 and done > 0 else None


class LogRenderer(Reporter):
    """Plain lines for a log file or a pipe: whole lines, a task's figures every ``interval`` s."""

    def __init__(self, stream: Optional[TextIO] = None, quiet: bool = False, interval: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self.quiet = quiet
        self.interval = interval
        self._clock = clock
        self._tasks: dict[str, _TaskState] = {}

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def _task_line(self, st: _TaskState, now: float, final: bool) -> str:
        parts = [f"{st.start.title}: {st.counts()}"]
        figures = figures_text(st.start.fields, st.figures)
        if figures:
            parts.append(figures)
        rate = st.rate(now)
        if rate:
            parts.append(f"{format_rate(rate)} it/s")
        if final:
            parts.append(f"took {format_duration(now - st.t0)}")
        elif rate:
            parts.append(f"ETA {format_duration((st.start.total - st.completed) / rate)}")
        return " ".join(parts)

    def emit(self, event: Event) -> None:
        if isinstance(event, Message):
            if event.level == WARNING:
                self._write(f"warning: {event.text}")
            elif not self.quiet:
                self._write(event.text)
        elif isinstance(event, StageDone):
            self._write(f"{event.stage}: {'cached' if event.cached else 'done'}  {stage_summary(event)}  {event.dir or ''}".rstrip())
            for w in stage_warnings(event):
                self._write(f"warning: {w}")
        elif self.quiet:
            return
        elif isinstance(event, TaskStarted):
            now = self._clock()
            self._tasks[event.task] = _TaskState(event, now, event.completed, {}, now)
        elif isinstance(event, TaskProgress):
            st = self._tasks.get(event.task)
            if st is None:
                return
            st.completed, st.figures = event.completed, dict(event.figures)
            now = self._clock()
            if now - st.last_line >= self.interval:
                st.last_line = now
                self._write(self._task_line(st, now, final=False))
        elif isinstance(event, TaskEnded):
            st = self._tasks.pop(event.task, None)
            if st is not None:
                self._write(self._task_line(st, self._clock(), final=True))


class RichRenderer(Reporter):
    """Rich bars (title, bar, n/total, %, figures, it/s, elapsed, ETA) and coloured lines."""

    def __init__(self, console: Any, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self._progress: Any = None
        self._tasks: dict[str, tuple[Any, TaskStarted]] = {}

    def _print(self, text: str, style: str = "") -> None:
        from rich.text import Text

        self.console.print(Text(text, style=style), soft_wrap=True)

    def emit(self, event: Event) -> None:
        if isinstance(event, Message):
            if event.level == WARNING:
                from rich.text import Text

                self.console.print(Text.assemble(("warning:", "yellow"), " ", event.text), soft_wrap=True)
            elif not self.quiet:
                self._print(event.text)
        elif isinstance(event, StageDone):
            from rich.text import Text

            line = Text.assemble(f"{event.stage}: ", ("cached" if event.cached else "done", "green"),
                                 f"  {stage_summary(event)}  ", (event.dir or "", "dim"))
            self.console.print(line, soft_wrap=True)
            for w in stage_warnings(event):
                self.console.print(Text.assemble(("warning:", "bold yellow"), " ", w), soft_wrap=True)
        elif self.quiet:
            return
        elif isinstance(event, TaskStarted):
            if self._progress is None:
                self._progress = _rich_progress(self.console)
                self._progress.start()
            rid = self._progress.add_task(event.title, total=event.total, completed=event.completed, figures="")
            self._tasks[event.task] = (rid, event)
        elif isinstance(event, TaskProgress):
            if event.task in self._tasks:
                rid, start = self._tasks[event.task]
                self._progress.update(rid, completed=event.completed,
                                      figures=figures_text(start.fields, event.figures, sep="  "))
        elif isinstance(event, TaskEnded):
            self._tasks.pop(event.task, None)
            if not self._tasks and self._progress is not None:
                self._progress.stop()
                self._progress = None


def _rich_progress(console: Any) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Iterations per second, which rich's bundled columns only show for transfers."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{format_rate(speed)} it/s" if speed else "-- it/s", style="progress.data.speed")

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("{task.fields[figures]}"), RateColumn(), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=console, transient=False,
    )


def make_renderer(quiet: bool = False, stream: Optional[TextIO] = None) -> Reporter:
    """Rich bars when ``stream`` (default stderr) is a terminal, plain log lines otherwise."""
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from ds4d_cli.console import console

        return RichRenderer(console, quiet)
    return LogRenderer(stream, quiet)
