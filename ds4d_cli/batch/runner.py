"""``ds4d batch``: many clips, one workspace each under ``--out``, on this machine or a Ray cluster.

:func:`run_batch` expands the clip arguments, gives each clip its workspace
(:mod:`ds4d_cli.batch.clips`), runs them with the local worker pool (:mod:`ds4d_cli.batch.local`)
or as Ray tasks (:mod:`ds4d_cli.batch.cluster`), hands their messages to a view (the CLI's is
the live table of :mod:`ds4d_cli.batch.view`; a library call shows nothing) and writes
``batch.json`` under ``--out``, rewritten atomically each time a clip finishes, so it is always
whole and, after a lost driver, still says which clips finished.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ds4d_cli import __version__, report
from ds4d_cli.batch.clips import Clip, assign_workspaces, expand_clips
from ds4d_cli.batch.worker import DONE, FAILED, ClipFinished, ClipResult, StagePlan
from ds4d_cli.errors import Ds4dError
from ds4d_cli.fsutil import write_json_atomic

BATCH_FILE = "batch.json"
PENDING = "pending"


class ClipsFailed(Ds4dError):
    """Some clips failed (each with its error in batch.json); the others are done."""

    exit_code = 3

    def __init__(self, failed: list[ClipResult], path: Path) -> None:
        names = ", ".join(r.clip for r in failed[:3]) + (", ..." if len(failed) > 3 else "")
        super().__init__(f"{len(failed)} clip(s) failed ({names}); their errors are in {path}",
                         hint="fix them and run the same command again: finished clips are cached, "
                              "interrupted ones resume")


class BatchView:
    """What shows a running batch; this one shows nothing (see :mod:`ds4d_cli.batch.view`)."""

    def __init__(self, clips: list[str] | None = None) -> None:
        self.clips = clips or []

    def start(self, clip: str, where: str) -> None:
        """A local worker took ``clip`` (``where``: its GPU or threads)."""

    def handle(self, message: Any) -> None:
        """A worker's message: StageStarted, ClipEvent or ClipFinished."""

    def close(self) -> None:
        """The batch ended (or was interrupted)."""


@dataclass
class BatchReport:
    """What a batch produced: one result per clip, in the order given, and where it was recorded."""

    out: Path
    results: list[ClipResult]
    runner: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[ClipResult]:
        return [r for r in self.results if r.status != DONE]

    @property
    def path(self) -> Path:
        return self.out / BATCH_FILE


def stage_names(plan: StagePlan) -> list[str]:
    return ["preprocess", "generate", "fit"] + [f"export/{e['format']}" for e in plan.exports]


def run_batch(clip_args: list[str], out: Path, plan: StagePlan, workers: Optional[int] = None,
              ray: bool = False, ray_address: Optional[str] = None,
              make_view: Optional[Callable[[list[str]], BatchView]] = None) -> BatchReport:
    """Run every clip (finished ones are all cache hits); never raises for a failing clip.

    ``make_view`` builds what shows the batch from the clips' names (default: nothing shown).
    """
    if workers is not None and workers < 1:
        raise Ds4dError(f"--workers must be at least 1 (got {workers})", hint="e.g. --workers 2, or leave it out")
    out = out.expanduser().absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Ds4dError(f"cannot create the batch folder {out}: {exc.strerror or exc}", hint="choose a writable --out") from exc
    clips = assign_workspaces(expand_clips(clip_args), out)
    with _batch_lock(out):
        return _run(clips, out, plan, workers, ray, ray_address, make_view or BatchView)


def _run(clips: list[Clip], out: Path, plan: StagePlan, workers: Optional[int], ray: bool,
         ray_address: Optional[str], make_view: Callable[[list[str]], BatchView]) -> BatchReport:
    started = _now()
    t0 = time.perf_counter()
    results: dict[str, ClipResult] = {}
    runnable = []
    for clip in clips:  # a clip that is not there fails now, without a worker or a workspace
        if clip.source.exists():
            runnable.append(clip)
        else:
            results[clip.name] = ClipResult(clip.name, str(clip.source), str(clip.workspace), error=(
                f"preprocess: no such file or folder: {clip.source} — check the path of the clip"))
    batch = BatchReport(out, [], {})

    def record() -> None:
        batch.results = [results.get(c.name) or ClipResult(c.name, str(c.source), str(c.workspace), status=PENDING)
                         for c in clips]
        _write(batch, plan, started, time.perf_counter() - t0)

    def on_message(msg: Any) -> None:
        view.handle(msg)
        if isinstance(msg, ClipFinished):
            results[msg.result.clip] = msg.result
            record()

    if ray:
        from ds4d_cli.batch.cluster import import_ray

        import_ray()  # a missing Ray is a one-line error before anything starts
    else:
        from ds4d_cli.batch.local import cpu_count, default_workers, gpu_count, make_slots, sizing_text

        gpus, cores = gpu_count(plan.fit.get("device", "auto")), cpu_count()
        slots = make_slots(workers or default_workers(gpus, cores), gpus, cores)
        batch.runner = {"kind": "local", "workers": len(slots), "gpus": gpus, "cores": cores,
                        "slots": [s.describe() for s in slots]}
        report.info(f"batch: {len(clips)} clip(s) in {out}; {sizing_text(slots, gpus, cores, workers)}")
    record()
    view = make_view([c.name for c in clips])  # after the lines above: a live table holds the screen
    for r in results.values():
        view.handle(ClipFinished(r))
    try:
        if ray:
            from ds4d_cli.batch.cluster import run_ray

            _, info = run_ray(runnable, plan, ray_address, on_message, max_in_flight=workers)
            batch.runner = {"kind": "ray", **info}
        else:
            from ds4d_cli.batch.local import run_local

            run_local(runnable, plan, slots, on_message, on_start=lambda clip, slot: view.start(clip.name, slot.describe()))
    finally:
        view.close()
        record()
    return batch


def _write(batch: BatchReport, plan: StagePlan, started: str, seconds: float) -> None:
    counts = {s: sum(r.status == s for r in batch.results) for s in (DONE, FAILED, PENDING)}
    write_json_atomic(batch.path, {
        "ds4d_version": __version__,
        "out": str(batch.out),
        "started": started,
        "updated": _now(),
        "seconds": round(seconds, 2),
        "counts": counts,
        "runner": batch.runner,
        "stages": stage_names(plan),
        "options": asdict(plan),
        "clips": [r.to_json() for r in batch.results],
    })


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _batch_lock(out: Path) -> Iterator[None]:
    """One batch at a time per --out (the workspaces have their own locks too)."""
    with open(out / ".batch.lock", "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise Ds4dError(f"another ds4d batch is running in {out}",
                                hint="wait for it to finish, or choose another --out") from exc
            raise
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
