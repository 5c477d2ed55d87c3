"""The one rich console every stage prints through (stderr, so stdout stays for data like --json)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False)
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence info lines and progress bars (warnings and errors still print)."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def info(message: str) -> None:
    if not _quiet:
        console.print(message)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")
