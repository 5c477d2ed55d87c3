"""Running a stage's missing upstream stages first, as ``make`` would.

Before a stage runs, every stage it needs (directly or through others, :data:`STAGES`) must be
done. A missing one whose defaults serve is run first with those defaults and announced in one
line; any other missing one is a one-line error naming the command to run. Which stages qualify:

- ``generate``: yes, with ``--prior auto`` (Zero123++ when its weights are here, else no views);
- ``preprocess``: no, it needs the user's clip;
- ``fit``: no. It is the long, tuned step (minutes to hours, ``--steps``, ``--resolution``,
  ablations); an ``export`` or ``eval`` that silently started one would surprise more than it
  helps, so they stop and say ``run `ds4d fit` first`` (which then runs a missing generate itself).

A stage that exists but is stale is not rerun here: each stage's cache key already includes its
upstream manifests, so it reruns itself when they change.
"""

from __future__ import annotations

from typing import Callable

from ds4d_cli.errors import WorkspaceError
from ds4d_cli.report import info
from ds4d_cli.workspace import STAGE_COMMANDS, STAGES, Workspace


def _run_generate(ws: Workspace) -> None:
    from ds4d_cli.stages import generate

    generate.run(ws, generate.GenerateOptions())


#: Stages that can run with their defaults when a later stage needs them, and the command shown.
AUTO_RUN: dict[str, tuple[str, Callable[[Workspace], None]]] = {
    "generate": ("ds4d generate --prior auto", _run_generate),
}


def missing_upstream(ws: Workspace, stage: str) -> list[str]:
    """The stages ``stage`` needs that have not run, in pipeline order."""
    needed: list[str] = []

    def visit(name: str) -> None:
        for up in STAGES.get(name, ()):
            visit(up)
            if up not in needed:
                needed.append(up)

    visit(stage)
    return [s for s in needed if ws.read_manifest(s) is None]


def ensure_upstream(ws: Workspace, stage: str) -> list[str]:
    """Run the missing upstream stages of ``stage`` that have defaults; the ones run, in order.

    Raises a :class:`WorkspaceError` (before running anything) when a missing one cannot run by
    itself.
    """
    missing = missing_upstream(ws, stage)
    for name in missing:
        if name not in AUTO_RUN:
            also = [m for m in missing if m != name and m in AUTO_RUN]
            then = f" (it runs a missing {', '.join(also)} itself)" if also and name == "fit" else ""
            raise WorkspaceError(
                f"stage '{name}' has not run in {ws.root}",
                hint=f"run `{STAGE_COMMANDS.get(name, 'ds4d ' + name)}` first{then}",
            )
    for name in missing:
        command, run = AUTO_RUN[name]
        info(f"{stage}: '{name}' has not run; running `{command}` first")
        run(ws)
    return missing
