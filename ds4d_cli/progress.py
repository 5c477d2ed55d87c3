"""Rich progress bars with the figures a user watches (step, losses, PSNR, it/s, ETA).

Stages call :func:`progress_bar`; model code never does (it reports through callbacks).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ds4d_cli.console import console, is_quiet


class _RateColumn(ProgressColumn):
    """Iterations per second, which rich's bundled columns only show for transfers."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} it/s" if speed else "-- it/s", style="progress.data.speed")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Bar:
    """Handle returned by :func:`progress_bar`; ``advance`` moves it and updates its figures."""

    def __init__(self, progress: Progress | None, task_id: int | None, fields: Sequence[str]) -> None:
        self._progress = progress
        self._task_id = task_id
        self._fields = list(fields)
        self.values: dict[str, Any] = {}

    def _text(self) -> str:
        return "  ".join(f"{k} {_format(self.values[k])}" for k in self._fields if k in self.values)

    def advance(self, n: float = 1, **fields: Any) -> None:
        self.values.update(fields)
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, advance=n, figures=self._text())

    def update(self, *, completed: float | None = None, **fields: Any) -> None:
        """Set absolute progress (e.g. when resuming from a checkpoint) and figures."""
        self.values.update(fields)
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, completed=completed, figures=self._text())


@contextlib.contextmanager
def progress_bar(description: str, total: float, fields: Sequence[str] = ()) -> Iterator[Bar]:
    """Show a bar for ``total`` steps; silent (but still usable) under ``--quiet``."""
    if is_quiet():
        yield Bar(None, None, fields)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[figures]}"),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task_id = progress.add_task(description, total=total, figures="")
        yield Bar(progress, task_id, fields)
