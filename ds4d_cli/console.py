"""The CLI's rich console (stderr, so stdout stays for data like ``--json``).

Only the CLI layer prints through it (tables, the rich renderer of :mod:`ds4d_cli.terminal`).
Stages and library code report through :mod:`ds4d_cli.report`; ``info`` and ``warn`` are
re-exported here so that code still calling ``console.info``/``console.warn`` keeps working (it
goes through the current reporter like everything else).
"""

from __future__ import annotations

import sys

from rich.console import Console

from ds4d_cli.report import info, warn

#: In a log (stderr not a terminal) tables get 160 columns instead of rich's 80, so rows stay whole.
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

__all__ = ["console", "info", "warn"]
