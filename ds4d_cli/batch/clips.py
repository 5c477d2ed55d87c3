"""Which clips a batch holds, and which workspace under ``--out`` each one gets.

Clips are given as paths (videos or image folders), shell-style globs, or ``.txt`` files listing
one path per line (``#`` comments and blank lines ignored; relative paths are relative to the
list). A workspace is named after its clip's file name; two clips with the same name get a short
digest of their absolute path appended, and a clip whose workspace already exists under another
name (its ``workspace.json`` records the clip) keeps that one. The same clips therefore always
map to the same workspaces, so a rerun finds and resumes them.
"""

from __future__ import annotations

import glob
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ds4d_cli.errors import Ds4dError
from ds4d_cli.fsutil import read_json
from ds4d_cli.workspace import WORKSPACE_FILE

#: An argument with this suffix is a list of clips, not a clip.
LIST_SUFFIX = ".txt"
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Clip:
    """One clip of the batch and the workspace folder it is processed in."""

    name: str  # workspace folder name under --out, also the clip's name in tables and batch.json
    source: Path  # absolute
    workspace: Path  # absolute


def expand_clips(args: Iterable[str]) -> list[Path]:
    """Absolute clip paths in the order given, globs sorted, duplicates dropped.

    A glob that matches nothing or an unreadable list is a one-line error (a typo should not
    start a batch); a listed path that does not exist is kept, so it is reported as a failed clip.
    """
    found: list[Path] = []
    for arg in args:
        if _GLOB_CHARS.search(arg):
            matches = sorted(glob.glob(str(Path(arg).expanduser())))
            if not matches:
                raise Ds4dError(f"no clip matches {arg!r}", hint="check the pattern (quote it so the shell passes it as is)")
            found += [Path(m) for m in matches]
        elif arg.lower().endswith(LIST_SUFFIX):
            found += _read_list(Path(arg).expanduser())
        else:
            found.append(Path(arg).expanduser())
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(path.absolute(), None)
    if not unique:
        raise Ds4dError("no clips given", hint="pass videos, image folders, globs like 'clips/*.mp4' or a .txt list")
    return list(unique)


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise Ds4dError(f"cannot read the clip list {path}", hint=f"a .txt argument is a list of clip paths ({exc})") from exc
    entries = [line.split("#", 1)[0].strip() for line in lines]
    return [(path.parent / e).expanduser() if not Path(e).expanduser().is_absolute() else Path(e).expanduser()
            for e in entries if e]


def workspace_name(source: Path) -> str:
    """The clip's file name without its suffix, made safe for a folder name."""
    stem = source.name if source.is_dir() else source.stem
    return _UNSAFE.sub("_", stem).strip("._") or "clip"


def path_tag(source: Path) -> str:
    """Eight hex digits of the absolute path: what tells apart two clips with the same name."""
    return hashlib.sha1(str(source.absolute()).encode()).hexdigest()[:8]


def _recorded_source(workspace: Path) -> Optional[str]:
    try:
        return read_json(workspace / WORKSPACE_FILE).get("source")
    except (OSError, ValueError, AttributeError):
        return None


def assign_workspaces(sources: list[Path], out: Path) -> list[Clip]:
    """One workspace folder under ``out`` per clip, the same on every run (see the module doc)."""
    out = out.absolute()
    existing: dict[str, Path] = {}  # source path recorded in a workspace -> that workspace
    if out.is_dir():
        for ws_file in sorted(out.glob(f"*/{WORKSPACE_FILE}")):
            recorded = _recorded_source(ws_file.parent)
            if recorded:
                existing.setdefault(recorded, ws_file.parent)
    names = [workspace_name(s) for s in sources]
    shared = {n for n in names if names.count(n) > 1}
    taken = {p.name for p in existing.values()}
    clips: list[Clip] = []
    for source, name in zip(sources, names):
        if str(source) in existing:
            ws = existing[str(source)]
            clips.append(Clip(ws.name, source, ws))
            continue
        if name in shared or name in taken:  # another clip of this batch or of an earlier one has it
            name = f"{name}-{path_tag(source)}"
        taken.add(name)
        clips.append(Clip(name, source, out / name))
    return clips
