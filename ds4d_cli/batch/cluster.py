"""Running a batch's clips on a Ray cluster: one Ray task per clip.

Ray (https://docs.ray.io) schedules the tasks on the nodes with the resources each asks for
(``num_gpus=1`` on GPU nodes, else :data:`CPUS_PER_CPU_CLIP` CPUs), and re-runs a task whose
worker or node died (``max_retries``). Workspaces live under the batch's ``--out`` folder, which
must be storage every node sees (NFS, a shared volume): a retried task opens the same workspace
and resumes — finished stages are cached, the fit continues from its last checkpoint. The task
is :func:`ds4d_cli.batch.worker.run_clip`, the same as a local worker's; ds4d must be installed
on every node. What the stages report comes back through a small Ray actor (an inbox) to the live table.

Ray is an optional extra (``pip install ds4d[cluster]``); it is imported only here.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional

from ds4d_cli.batch.clips import Clip
from ds4d_cli.batch.local import CORES_PER_CPU_FIT
from ds4d_cli.batch.worker import ClipFinished, ClipResult, StagePlan, run_clip
from ds4d_cli.errors import Ds4dError

#: Times Ray reruns a clip whose worker process or node died before giving up on it.
MAX_RETRIES = 3
#: CPUs a clip asks for when fitting on the CPU (as a local worker's share, see local.py).
CPUS_PER_CPU_CLIP = CORES_PER_CPU_FIT
#: CPUs a clip asks for beside its GPU (decoding, segmentation, writing files).
CPUS_PER_GPU_CLIP = 1


#: What ``--ray`` given alone stands for: a Ray instance started on this machine for the batch.
LOCAL = "local"
_ADDRESS = re.compile(r"^(auto|ray://\S+|\S+:\d+)$")


def is_address(value: str) -> bool:
    """``HOST:PORT``, ``ray://HOST:PORT``, ``auto`` or ``local`` (and not a file that is there)."""
    return value == LOCAL or (bool(_ADDRESS.match(value)) and not Path(value).exists())


def with_bare_ray_as_local(args: list[str]) -> list[str]:
    """Command-line arguments with a bare ``--ray`` (no address after it) made ``--ray local``.

    ``--ray`` takes an optional address, which typer cannot declare: this is applied to the
    arguments before parsing, so ``--ray --out D`` and ``--ray a.mp4 b.mp4`` keep their clips.
    """
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--":
            return out + args[i + 1:]
        if arg == "--ray" and (i + 1 == len(args) or not is_address(args[i + 1])):
            out.append(LOCAL)
    return out


def ray_address(value: str) -> Optional[str]:
    """The address to hand ``ray.init``: None (start a local instance) for ``local``."""
    return None if value == LOCAL else value


def import_ray() -> Any:
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise Ds4dError("--ray needs Ray, which is not installed",
                        hint="pip install 'ds4d[cluster]' (on every node of the cluster)") from exc
    return ray


def connect(address: Optional[str]) -> Any:
    """``ray.init`` on ``address`` (a running cluster), or a local Ray instance when None."""
    ray = import_ray()
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Ds4dError(f"cannot connect to the Ray cluster at {address}: {str(exc).splitlines()[0] if str(exc) else exc}",
                        hint="start it with `ray start --head` and pass its address (HEAD:6379)") from exc
    return ray


def task_resources(device: str, cluster: dict[str, float]) -> dict[str, float]:
    """What one clip asks Ray for: a GPU when the fit may use one and the cluster has them."""
    if device != "cpu" and cluster.get("GPU", 0) > 0:
        return {"num_gpus": 1, "num_cpus": CPUS_PER_GPU_CLIP}
    return {"num_gpus": 0, "num_cpus": min(CPUS_PER_CPU_CLIP, max(1, int(cluster.get("CPU", 1))))}


class _Inbox:
    """A Ray actor holding the tasks' messages until the driver takes them.

    Tasks send without waiting (``put.remote``, no ``ray.get``): a task blocked in ``ray.get``
    lends its CPUs back to Ray, which would then start another clip on them. One sync actor
    keeps each task's messages in order.
    """

    def __init__(self) -> None:
        self._items: list[Any] = []

    def put(self, message: Any) -> None:
        self._items.append(message)

    def take(self) -> list[Any]:
        items, self._items = self._items, []
        return items

    def sync(self) -> None:
        """A call a task waits for: every message it sent before is in by then."""


def _clip_task(clip: Clip, plan: StagePlan, inbox: Any, render_threads: int) -> ClipResult:
    """The Ray task: one clip, its reports sent to the driver's inbox."""
    import ray

    os.environ["DS4D_RENDER_THREADS"] = str(render_threads)
    result = run_clip(clip, plan, inbox.put.remote)
    ray.get(inbox.sync.remote())  # the driver reads the result after the clip's last messages
    return result


def run_ray(clips: list[Clip], plan: StagePlan, address: Optional[str], on_message: Callable[[Any], None],
            max_in_flight: Optional[int] = None) -> tuple[list[ClipResult], dict[str, Any]]:
    """Run every clip as a Ray task; results in the clips' order and a description of the cluster.

    ``max_in_flight`` (``--workers``) caps the tasks submitted at once; by default every clip is
    submitted and Ray runs as many as the cluster's resources allow.
    """
    ray = connect(address)
    try:
        cluster = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        resources = task_resources(plan.fit.get("device", "auto"), cluster)
        inbox = ray.remote(_Inbox).options(num_cpus=0).remote()
        remote = ray.remote(_clip_task).options(max_retries=MAX_RETRIES, retry_exceptions=False, **resources)
        threads = max(1, int(resources["num_cpus"]))
        pending = list(clips)
        in_flight: dict[Any, Clip] = {}
        results: dict[str, ClipResult] = {}
        limit = max_in_flight or len(clips)

        def drain() -> None:
            for msg in ray.get(inbox.take.remote()):
                on_message(msg)

        while pending or in_flight:
            while pending and len(in_flight) < limit:
                clip = pending.pop(0)
                in_flight[remote.remote(clip, plan, inbox, threads)] = clip
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            drain()
            for ref in ready:
                clip = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # retries exhausted: node lost for good, OOM...
                    result = ClipResult(clip.name, str(clip.source), str(clip.workspace), error=(
                        f"ray: {type(exc).__name__}: {_first_line(exc)} — run the batch again to resume it"))
                results[clip.name] = result
                on_message(ClipFinished(result))
        drain()
        info = {"address": address or "local", "resources": cluster, "task_resources": resources,
                "max_retries": MAX_RETRIES}
        return [results[c.name] for c in clips], info
    finally:
        ray.shutdown()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""

