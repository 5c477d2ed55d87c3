"""Running a batch's clips on this machine: one process per clip, at most ``workers`` at once.

Each clip runs in a fresh process (``spawn``): a crash, the OOM killer or a ``kill -9`` fails
that clip only (it is recorded, and the next run resumes it from its checkpoint), and a clip's
GPU memory and threads are gone when it ends. Starting a process costs a few seconds of imports,
nothing next to a fit. On a GPU machine each worker slot owns one GPU (``CUDA_VISIBLE_DEVICES``);
on the CPU each slot gets an equal share of the cores for the rasterizer
(``DS4D_RENDER_THREADS``), see :func:`default_workers`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing import connection
from typing import Any, Callable, Optional

from ds4d_cli.batch.clips import Clip
from ds4d_cli.batch.worker import ClipFinished, ClipResult, StagePlan, run_clip

#: CPU cores one CPU fit keeps busy: torch runs single-threaded (stages/fit.py) and calls the C++
#: rasterizer, which spreads each render over its threads; two cores per fit keeps both busy
#: without two fits fighting over one core.
CORES_PER_CPU_FIT = 2


@dataclass(frozen=True)
class Slot:
    """A worker's share of the machine: its GPU (None on CPU) and its rasterizer threads."""

    index: int
    gpu: Optional[int]
    render_threads: int

    def environment(self) -> dict[str, str]:
        env = {"DS4D_RENDER_THREADS": str(self.render_threads)}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpu)
        return env

    def describe(self) -> str:
        return f"GPU {self.gpu}" if self.gpu is not None else f"{self.render_threads} rasterizer threads"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_count(device: str) -> int:
    """GPUs the batch may use: none with ``--device cpu``."""
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_workers(gpus: int, cores: int) -> int:
    """One worker per GPU; on the CPU one per :data:`CORES_PER_CPU_FIT` cores (1 on 2 cores)."""
    return gpus if gpus > 0 else max(1, cores // CORES_PER_CPU_FIT)


def make_slots(workers: int, gpus: int, cores: int) -> list[Slot]:
    """``workers`` slots; GPUs dealt round-robin, the cores shared evenly between CPU workers."""
    threads = max(1, cores // workers)
    return [Slot(i, i % gpus if gpus else None, threads) for i in range(workers)]


def sizing_text(slots: list[Slot], gpus: int, cores: int, requested: Optional[int]) -> str:
    """One line saying how many workers run and why (printed when the batch starts)."""
    why = ("--workers" if requested else f"one per GPU ({gpus})" if gpus else
           f"{cores} CPU cores, {CORES_PER_CPU_FIT} per fit")
    return f"{len(slots)} worker(s) ({why}): " + ", ".join(s.describe() for s in slots)


def _worker_main(clip: Clip, plan: StagePlan, slot: Slot, conn: Any) -> None:
    """A worker process: its slot's environment first (before torch loads), then the clip."""
    os.environ.update(slot.environment())
    try:
        result = run_clip(clip, plan, conn.send)
    except KeyboardInterrupt:  # Ctrl-C reached the whole process group; the fit saved its checkpoint
        sys.exit(130)
    conn.send(ClipFinished(result))
    conn.close()


def _died(clip: Clip, exitcode: Optional[int], seconds: float) -> ClipResult:
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    return ClipResult(clip.name, str(clip.source), str(clip.workspace), error=(
        f"worker process {how} — run the batch again: finished stages are kept and the fit resumes from its checkpoint"
    ), seconds=round(seconds, 2))


def run_local(clips: list[Clip], plan: StagePlan, slots: list[Slot], on_message: Callable[[Any], None],
              on_start: Callable[[Clip, Slot], None] = lambda c, s: None) -> list[ClipResult]:
    """Run every clip in its own process, ``len(slots)`` at a time; results in the clips' order.

    ``on_message`` receives each worker's messages (stage started, report events, finished) in
    the parent, as they come. Each worker has its own pipe, so one killed mid-message cannot
    garble another's. Ctrl-C reaches the workers too (same process group): each fit saves a
    checkpoint, the parent waits for them, then re-raises.
    """
    ctx = mp.get_context("spawn")
    pending = list(clips)
    free = list(slots)
    running: dict[Any, _Running] = {}  # the pipe's reading end -> its worker
    results: dict[str, ClipResult] = {}

    def receive(job: _Running) -> bool:
        """Hand one message on; False when the pipe is closed (the worker is gone)."""
        try:
            msg = job.conn.recv()
        except (EOFError, OSError):
            return False
        if isinstance(msg, ClipFinished):
            results[msg.result.clip] = msg.result
        on_message(msg)
        return True

    try:
        while pending or running:
            while pending and free:
                clip, slot = pending.pop(0), free.pop(0)
                reader, writer = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker_main, args=(clip, plan, slot, writer), name=f"ds4d-batch-{clip.name}")
                proc.start()
                writer.close()  # the worker holds the only writing end: EOF when it ends
                running[reader] = _Running(proc, reader, clip, slot, time.monotonic())
                on_start(clip, slot)
            for reader in connection.wait(list(running), timeout=1.0):
                job = running[reader]
                if receive(job):
                    continue
                job.proc.join()
                name = job.clip.name
                if name not in results:
                    results[name] = _died(job.clip, job.proc.exitcode, time.monotonic() - job.t0)
                    on_message(ClipFinished(results[name]))
                reader.close()
                del running[reader]
                free.append(job.slot)
    except KeyboardInterrupt:
        for job in running.values():
            job.proc.join(timeout=60)  # the fits save their checkpoints on the same Ctrl-C
        raise
    return [results[c.name] for c in clips]


@dataclass
class _Running:
    proc: Any
    conn: Any
    clip: Clip
    slot: Slot
    t0: float
