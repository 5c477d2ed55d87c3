"""The reporter: stages emit events, renderers show them (plain lines in a log, rich on a terminal),
and a worker process can forward them."""

from __future__ import annotations

import io
import multiprocessing
import re

from ds4d_cli import report
from ds4d_cli.terminal import LogRenderer, RichRenderer, make_renderer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _fit_like_task(clock: FakeClock, steps: int = 1000, seconds_per_step: float = 0.25) -> None:
    """What the fit stage reports: a message, a task with figures, a warning, its result."""
    report.info("fit: 8 frames x 3 views")
    with report.progress("Fitting", total=steps, fields=("loss", "psnr", "gaussians"), unit="step") as bar:
        for s in range(1, steps + 1):
            clock.now += seconds_per_step
            bar.advance(1, loss=0.5 / s, psnr=20 + s / 100, gaussians=2000 + s)
    report.warn("the fit learnt (almost) nothing")
    report.stage_done("fit", False, {"steps": steps, "psnr": {"input": 30.0}, "warnings": ["look at me"]}, "/ws/fit")


def test_log_lines_are_whole_and_every_few_seconds() -> None:
    clock, out = FakeClock(), io.StringIO()
    with report.using(LogRenderer(out, interval=5.0, clock=clock)):
        _fit_like_task(clock)
    lines = out.getvalue().splitlines()
    progress = [line for line in lines if line.startswith("Fitting:")]
    # 1000 steps at 4 it/s = 250 s: one line per 5 s, plus the final one
    assert 49 <= len(progress) <= 51, len(progress)
    assert re.fullmatch(r"Fitting: step 20/1000 loss 0\.025 psnr 20\.2 gaussians 2020 4\.0 it/s ETA 4:05", progress[0])
    assert progress[-1].startswith("Fitting: step 1000/1000 loss 0.0005 psnr 30 gaussians 3000 4.0 it/s took 4:10")
    assert lines[0] == "fit: 8 frames x 3 views"
    assert "warning: the fit learnt (almost) nothing" in lines
    assert lines[-2].startswith("fit: done  steps=1000") and lines[-2].endswith("/ws/fit")
    assert lines[-1] == "warning: look at me"  # warnings recorded in a summary are shown with it
    assert all("\x1b" not in line and "━" not in line for line in lines)


def test_quiet_keeps_warnings_and_results_only() -> None:
    clock, out = FakeClock(), io.StringIO()
    with report.using(LogRenderer(out, quiet=True, clock=clock)):
        _fit_like_task(clock, steps=10)
    assert out.getvalue().splitlines() == [
        "warning: the fit learnt (almost) nothing", "fit: done  steps=10  /ws/fit", "warning: look at me"]


def test_nothing_is_printed_without_a_reporter(capsys) -> None:
    _fit_like_task(FakeClock(), steps=3)
    assert capsys.readouterr() == ("", "")


def test_recorder_sees_every_event() -> None:
    rec = report.Recorder()
    with report.using(rec):
        _fit_like_task(FakeClock(), steps=3)
    kinds = [type(e).__name__ for e in rec.events]
    assert kinds == ["Message", "TaskStarted"] + ["TaskProgress"] * 3 + ["TaskEnded", "Message", "StageDone"]
    assert rec.warnings() == ["the fit learnt (almost) nothing"]
    assert rec.events[4].completed == 3 and rec.events[4].figures["gaussians"] == 2003
    assert report.current().__class__ is report.Reporter  # restored after the block


def _worker(queue) -> None:
    clock = FakeClock()
    with report.using(report.Forwarder(queue.put)):
        _fit_like_task(clock, steps=40)
    queue.put(None)


def test_a_worker_process_forwards_events_to_its_parent() -> None:
    """What `ds4d batch` will do: events cross a process boundary and render as if local."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(queue,))
    proc.start()
    events = []
    while (event := queue.get(timeout=60)) is not None:
        events.append(event)
    proc.join(30)
    local = report.Recorder()
    with report.using(local):
        _fit_like_task(FakeClock(), steps=40)
    assert [type(e) for e in events] == [type(e) for e in local.events]
    assert events[-1] == local.events[-1] and events[-2] == local.events[-2]  # result and warning
    assert events[1].task != local.events[1].task  # task ids stay distinct across processes
    out = io.StringIO()
    renderer = LogRenderer(out, clock=FakeClock())
    for event in events:
        renderer.emit(event)
    assert "fit: done  steps=40" in out.getvalue() and "Fitting: step 40/40" in out.getvalue()


def test_rich_renderer_draws_bars_with_figures() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=160, record=True)
    with report.using(RichRenderer(console)):
        _fit_like_task(FakeClock(), steps=5, seconds_per_step=0.0)
    text = console.export_text()
    assert "Fitting" in text and "5/5" in text and "gaussians 2005" in text
    assert "warning: the fit learnt (almost) nothing" in text and "fit: done" in text


def test_make_renderer_picks_by_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(make_renderer(stream=io.StringIO()), LogRenderer)
    assert isinstance(make_renderer(stream=Tty()), RichRenderer)
