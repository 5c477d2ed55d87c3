"""Resumable training state on disk: the latest checkpoint and the good one before it.

Every save writes ``latest.pt`` atomically and first moves the old latest to ``previous.pt``.
Atomic renames already keep a crash from truncating a file, but a full disk, a copy cut short or
a bad sector can still leave ``latest.pt`` unreadable; :meth:`Checkpoints.load` then warns and
falls back to ``previous.pt``, so at most one checkpoint interval of work is lost.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Optional

import torch

from ds4d_cli.fsutil import atomic_path
from ds4d_cli.report import warn


class Checkpoints:
    """``folder/latest.pt`` and ``folder/previous.pt``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.latest = self.folder / "latest.pt"
        self.previous = self.folder / "previous.pt"

    def save(self, state: dict[str, Any]) -> None:
        with atomic_path(self.latest) as tmp:
            torch.save(state, tmp)
            if self.latest.exists():  # only once the new one is whole on disk
                os.replace(self.latest, self.previous)

    def load(self, map_location: Any = "cpu") -> Optional[dict[str, Any]]:
        """The newest readable checkpoint, or None; an unreadable one is reported and removed."""
        for path in (self.latest, self.previous):
            if not path.exists():
                continue
            try:
                state = torch.load(path, map_location=map_location, weights_only=False)
                if not isinstance(state, dict):
                    raise ValueError("not a checkpoint")
                return state
            except Exception as exc:  # noqa: BLE001 - any unreadable file means: try the older one
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                fallback = "falling back to previous.pt" if path == self.latest and self.previous.exists() else "starting over"
                warn(f"checkpoint {path} is unreadable ({reason}); {fallback}")
                path.unlink()
        return None

    def clear(self) -> None:
        for path in (self.latest, self.previous):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
