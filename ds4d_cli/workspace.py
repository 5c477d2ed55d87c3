"""The workspace: one folder per clip, one sub-folder per stage, a manifest that makes caching safe.

A stage is done exactly when its ``manifest.json`` exists and matches: the manifest records the
stage's options, the digests of its inputs (the source clip or upstream manifests) and the code's
stage version, and it is written *last*, after every artifact has been renamed into place. A stage
that crashed half-way therefore has no manifest and is never mistaken for done.

A process-wide advisory lock (``flock`` on ``.lock``) keeps two ds4d processes from writing one
workspace; the kernel drops it when a process dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ds4d_cli import __version__
from ds4d_cli import report
from ds4d_cli.errors import WorkspaceError
from ds4d_cli.fsutil import read_json, write_json_atomic

DEFAULT_WORKSPACE = "ds4d_workspace"
WORKSPACE_ENV = "DS4D_WORKSPACE"
WORKSPACE_FILE = "workspace.json"
MANIFEST = "manifest.json"

#: Stages in pipeline order with the stages whose manifests they consume.
STAGES: dict[str, tuple[str, ...]] = {
    "preprocess": (),
    "generate": ("preprocess",),
    "fit": ("preprocess", "generate"),
    "export/ply": ("fit",),
    "export/mp4": ("fit",),
    "export/grid": ("preprocess", "fit"),
    "export/html": ("preprocess", "generate", "fit"),
    "export/glb": ("preprocess", "generate", "fit"),
    "export/obj": ("preprocess", "generate", "fit"),
}

#: The command a user types to produce each stage (used in hints).
STAGE_COMMANDS: dict[str, str] = {
    "preprocess": "ds4d preprocess CLIP",
    "generate": "ds4d generate",
    "fit": "ds4d fit",
    "export/ply": "ds4d export --format ply",
    "export/mp4": "ds4d export --format mp4",
    "export/grid": "ds4d export --format grid",
    "export/html": "ds4d export --format html",
    "export/glb": "ds4d export --format glb",
    "export/obj": "ds4d export --format obj",
}


def resolve_workspace_path(path: str | os.PathLike[str] | None) -> Path:
    """``-w`` wins, then ``$DS4D_WORKSPACE``, then ``./ds4d_workspace``."""
    if path is None or str(path) == "":
        path = os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE
    return Path(path).expanduser().absolute()


def sha256_of_path(path: Path) -> str:
    """Digest of a file, or of a folder's files (names and bytes, sorted) for image folders."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def canonical_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class StageStatus:
    """What ``ds4d status`` shows for one stage."""

    stage: str
    state: str  # "done" | "stale" | "missing"
    reason: str = ""
    manifest: dict[str, Any] | None = None


@dataclass
class StageResult:
    """What a stage function returns to the CLI."""

    name: str
    cached: bool
    summary: dict[str, Any] = field(default_factory=dict)
    dir: Path | None = None


class Workspace:
    """A folder holding one clip's stages. Create with :meth:`create`, reopen with :meth:`open`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock_fh: Any = None
        self._lock_depth = 0

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> "Workspace":
        """Open an existing workspace; a missing one is a user error with the command to fix it."""
        root = resolve_workspace_path(path)
        if not (root / WORKSPACE_FILE).is_file():
            raise WorkspaceError(
                f"no ds4d workspace at {root}",
                hint="run `ds4d preprocess CLIP` first, or point -w/--workspace (or DS4D_WORKSPACE) at one",
            )
        return cls(root)

    @classmethod
    def create(cls, path: str | os.PathLike[str] | None, source: Path, force: bool = False) -> "Workspace":
        """Create (or reuse) a workspace for ``source``; refuse a different clip unless ``force``."""
        root = resolve_workspace_path(path)
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"workspace path {root} is a file", hint="choose another folder with -w")
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise WorkspaceError(
                f"cannot write the workspace {root}: {exc.strerror or exc}",
                hint="choose a writable folder with -w/--workspace",
            ) from exc
        ws = cls(root)
        source = Path(source).absolute()
        digest = sha256_of_path(source)
        record = ws.source_record()
        with ws.locked():
            replaced = record is not None and record.get("source_sha256") != digest
            if replaced and record.get("source") != str(source):
                if not force:
                    raise WorkspaceError(
                        f"workspace {root} already holds another clip ({record.get('source')})",
                        hint="use another -w/--workspace, or --force to replace its contents",
                    )
                ws.clear_stages()
            fresh = {"source": str(source), "source_sha256": digest, "ds4d_version": __version__}
            if record != fresh:  # a cached rerun rewrites nothing
                write_json_atomic(root / WORKSPACE_FILE, fresh)
        return ws

    def source_record(self) -> dict[str, Any] | None:
        path = self.root / WORKSPACE_FILE
        return read_json(path) if path.is_file() else None

    def clear_stages(self) -> None:
        """Remove every stage folder (used when a new clip replaces the old one)."""
        for top in {s.split("/")[0] for s in STAGES}:
            shutil.rmtree(self.root / top, ignore_errors=True)

    # -- locking ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the workspace's write lock; re-entrant within one process."""
        if self._lock_depth == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            fh = open(self.root / ".lock", "a+")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                fh.close()
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise WorkspaceError(
                        f"workspace {self.root} is in use by another ds4d process (pid {holder})",
                        hint="wait for it to finish, or use another -w/--workspace",
                    ) from exc
                raise
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            self._lock_fh = fh
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fh is not None:
                fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
                self._lock_fh.close()
                self._lock_fh = None

    # -- stages -----------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def manifest_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / MANIFEST

    def read_manifest(self, stage: str) -> dict[str, Any] | None:
        path = self.manifest_path(stage)
        if not path.is_file():
            return None
        try:
            return read_json(path)
        except (OSError, json.JSONDecodeError):
            return None

    def manifest_digest(self, stage: str) -> str | None:
        manifest = self.read_manifest(stage)
        if manifest is None:
            return None
        return canonical_digest({k: v for k, v in manifest.items() if k != "created"})

    def upstream_digest(self, stage: str) -> str:
        """Digest of a finished upstream stage; a user error if it has not run."""
        digest = self.manifest_digest(stage)
        if digest is None:
            raise WorkspaceError(
                f"stage '{stage}' has not run in {self.root}",
                hint=f"run `{STAGE_COMMANDS.get(stage, 'ds4d ' + stage)}` first",
            )
        return digest

    def current_inputs(self, stage: str) -> dict[str, str | None]:
        """The input digests a stage would be run with now (None for a missing upstream)."""
        if stage == "preprocess":
            record = self.source_record() or {}
            source = Path(record.get("source", ""))
            live = sha256_of_path(source) if record.get("source") and source.exists() else None
            return {"source": live or record.get("source_sha256")}
        return {up: self.manifest_digest(up) for up in STAGES.get(stage, ())}

    def status(self, stage: str, options: dict[str, Any] | None = None, version: int | None = None) -> StageStatus:
        """Done, stale (with the reason) or missing; options/version are checked when given."""
        manifest = self.read_manifest(stage)
        if manifest is None:
            partial = self.stage_dir(stage).exists() and any(self.stage_dir(stage).iterdir())
            return StageStatus(stage, "missing", "interrupted: no manifest" if partial else "not run")
        if version is not None and manifest.get("version") != version:
            return StageStatus(stage, "stale", "ds4d's code for this stage changed", manifest)
        recorded = manifest.get("inputs", {})
        for name, digest in self.current_inputs(stage).items():
            if recorded.get(name) != digest:
                what = "the source clip" if name == "source" else f"'{name}'"
                return StageStatus(stage, "stale", f"{what} changed since this stage ran", manifest)
        if options is not None and manifest.get("options") != _jsonable(options):
            changed = _changed_keys(manifest.get("options", {}), _jsonable(options))
            return StageStatus(stage, "stale", "options changed: " + ", ".join(changed), manifest)
        return StageStatus(stage, "done", "", manifest)

    def write_manifest(
        self, stage: str, options: dict[str, Any], inputs: dict[str, Any], version: int, summary: dict[str, Any]
    ) -> None:
        write_json_atomic(
            self.manifest_path(stage),
            {
                "stage": stage,
                "version": version,
                "options": _jsonable(options),
                "inputs": inputs,
                "ds4d_version": __version__,
                "summary": _jsonable(summary),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            },
        )

    def invalidate(self, stage: str) -> None:
        """Remove a stage's manifest so it no longer looks done (first thing a rerun does)."""
        with contextlib.suppress(FileNotFoundError):
            self.manifest_path(stage).unlink()


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so tuples/paths compare equal to what a manifest holds."""
    return json.loads(json.dumps(obj, default=str))


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def run_stage(
    ws: Workspace,
    name: str,
    *,
    options: dict[str, Any],
    inputs: dict[str, Any],
    version: int,
    body: Callable[[Path], dict[str, Any]],
    force: bool = False,
    clear: bool = True,
) -> StageResult:
    """Run ``body`` unless the stage's manifest already matches; write the manifest last.

    The result (cached or fresh) is also reported (:func:`ds4d_cli.report.stage_done`).

    ``clear=False`` keeps the stage folder's contents between runs (``fit`` resumes from its
    checkpoints); the body is then responsible for ignoring what it cannot reuse.
    """
    out_dir = ws.stage_dir(name)
    with ws.locked():
        manifest = ws.read_manifest(name)
        if manifest is not None and not force:
            if (
                manifest.get("version") == version
                and manifest.get("options") == _jsonable(options)
                and manifest.get("inputs") == _jsonable(inputs)
            ):
                return _done(StageResult(name, True, manifest.get("summary", {}), out_dir))
            reason = ws.status(name, options, version).reason or "inputs changed"
            report.info(f"{name}: cache is stale ({reason}); running again")
        ws.invalidate(name)
        if clear and out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            summary = body(out_dir)
        except BaseException:
            if clear:  # a failed stage leaves nothing behind that could be mistaken for output
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
        summary = _jsonable(summary)  # as a cached rerun will read it back (tuples as lists, ...)
        ws.write_manifest(name, options, inputs, version, summary)
        return _done(StageResult(name, False, summary, out_dir))


def _done(result: StageResult) -> StageResult:
    """Report a stage's result (cached or fresh) to whoever listens, and return it."""
    report.stage_done(result.name, result.cached, result.summary, str(result.dir) if result.dir else None)
    return result
