"""How stages tell the user what they are doing without knowing who listens.

A stage calls the module functions below: :func:`info` and :func:`warn` for messages,
:func:`progress` for a long task (a total, the figures a user watches, ``advance`` with new
figures, ended on leaving the ``with`` block), and :func:`stage_done` for a stage's result (the
workspace's ``run_stage`` sends it). Each call becomes an *event*: a small frozen dataclass of
plain values, so it can be pickled and sent to another process. The events go to the current
:class:`Reporter`:

- nothing is installed by default: the events are dropped (a library call or a test prints
  nothing; a test that wants them installs a :class:`Recorder`);
- the CLI installs a renderer from :mod:`ds4d_cli.terminal` (rich bars on a terminal, plain
  lines in a log);
- a worker process (a future ``ds4d batch``) installs a :class:`Forwarder` that sends each event
  to its parent, which replays them into its own renderer (``renderer.emit(event)``).

The current reporter is process-wide (not per thread), so a stage's worker threads report too.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

INFO = "info"
WARNING = "warning"


# ------------------------------------------------------------------------------------ events
@dataclass(frozen=True)
class Message:
    level: str  # INFO | WARNING
    text: str  # plain text (no markup): renderers decide how it looks


@dataclass(frozen=True)
class TaskStarted:
    task: str  # id, unique across processes ("pid:n"), so a parent can merge several workers
    title: str  # e.g. "Fitting"
    total: float
    fields: tuple[str, ...] = ()  # figure names, in the order they are shown
    unit: str = ""  # what one unit of progress is ("step", "frame"), shown in log lines
    completed: float = 0.0  # where the task starts (a resumed fit starts at its checkpoint)


@dataclass(frozen=True)
class TaskProgress:
    task: str
    completed: float  # absolute, so a renderer that missed an event is still right
    figures: dict[str, Any] = field(default_factory=dict)  # every figure known so far


@dataclass(frozen=True)
class TaskEnded:
    task: str


@dataclass(frozen=True)
class StageDone:
    stage: str  # e.g. "fit", "export/ply"
    cached: bool  # True: the workspace already held this result
    summary: dict[str, Any] = field(default_factory=dict)
    dir: Optional[str] = None


Event = Union[Message, TaskStarted, TaskProgress, TaskEnded, StageDone]


# ------------------------------------------------------------------------------- reporters
class Reporter:
    """Receives events. This base class drops them; renderers override :meth:`emit`."""

    def emit(self, event: Event) -> None:  # noqa: ARG002 - dropping is the point
        return None


class Recorder(Reporter):
    """Keeps every event (tests, or a parent that renders later)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def messages(self, level: Optional[str] = None) -> list[str]:
        return [e.text for e in self.events if isinstance(e, Message) and (level is None or e.level == level)]

    def warnings(self) -> list[str]:
        return self.messages(WARNING)


class Forwarder(Reporter):
    """Hands each event to ``send`` (e.g. a multiprocessing queue's ``put``)."""

    def __init__(self, send: Callable[[Event], None]) -> None:
        self._send = send

    def emit(self, event: Event) -> None:
        self._send(event)


_current: Reporter = Reporter()
_lock = threading.Lock()
_ids = itertools.count(1)


def current() -> Reporter:
    return _current


@contextlib.contextmanager
def using(reporter: Reporter) -> Iterator[Reporter]:
    """Send every event to ``reporter`` inside the block (then restore the previous one)."""
    global _current
    with _lock:
        previous, _current = _current, reporter
    try:
        yield reporter
    finally:
        with _lock:
            _current = previous


# ------------------------------------------------------------------------ what stages call
def info(text: str) -> None:
    """A line a user may want to read (what was chosen, what is happening)."""
    _current.emit(Message(INFO, text))


def warn(text: str) -> None:
    """Something the user should act on or know about; shown even with ``--quiet``."""
    _current.emit(Message(WARNING, text))


def stage_done(stage: str, cached: bool, summary: dict[str, Any], dir: Optional[str] = None) -> None:
    _current.emit(StageDone(stage, cached, dict(summary), dir))


class Task:
    """Handle of a running task: ``advance`` by steps, with the latest figures."""

    def __init__(self, reporter: Reporter, task_id: str, completed: float = 0.0) -> None:
        self._reporter = reporter
        self.id = task_id
        self.completed = float(completed)
        self.values: dict[str, Any] = {}

    def advance(self, n: float = 1, **figures: Any) -> None:
        self.update(completed=self.completed + n, **figures)

    def update(self, *, completed: Optional[float] = None, **figures: Any) -> None:
        """Set absolute progress (e.g. after resuming) and/or figures."""
        if completed is not None:
            self.completed = float(completed)
        self.values.update(figures)
        self._reporter.emit(TaskProgress(self.id, self.completed, dict(self.values)))


@contextlib.contextmanager
def progress(title: str, total: float, fields: Sequence[str] = (), unit: str = "", completed: float = 0.0) -> Iterator[Task]:
    """A task of ``total`` units whose ``fields`` figures the user watches; ends with the block."""
    reporter = _current
    task_id = f"{os.getpid()}:{next(_ids)}"
    reporter.emit(TaskStarted(task_id, title, float(total), tuple(fields), unit, float(completed)))
    try:
        yield Task(reporter, task_id, completed)
    finally:
        reporter.emit(TaskEnded(task_id))
