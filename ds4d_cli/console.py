"""The CLI's rich console (stderr, so stdout stays for data like ``--json``).

Only the CLI layer prints through it (tables, the rich renderer of :mod:`ds4d_cli.terminal`).
Stages and library code report through :mod:`ds4d_cli.report`; ``info`` and ``warn`` are
re-exported here so that code still calling ``console.info``/``console.warn`` keeps working (it
goes through the current reporter like everything else).
"""

from __future__ import annotations

from rich.console import Console

from ds4d_cli.report import info, warn

console = Console(stderr=True, highlight=False)

__all__ = ["console", "info", "warn"]
