"""Kept for callers of ``progress_bar``: it is :func:`ds4d_cli.report.progress` (new code uses that)."""

from ds4d_cli.report import progress as progress_bar

__all__ = ["progress_bar"]
