"""Errors a user can act on.

Every failure caused by the user's input or environment is a :class:`Ds4dError` carrying a
one-line message and a hint. The CLI prints both in one red line (no traceback unless
``--debug``) and exits with :attr:`Ds4dError.exit_code` (2). Anything else is an internal
error and exits with 1.
"""

from __future__ import annotations


class Ds4dError(Exception):
    """A problem the user can fix: bad input, missing weights, a busy workspace."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class MissingWeightsError(Ds4dError):
    """Model weights that cannot be downloaded here are absent."""


class WorkspaceError(Ds4dError):
    """The workspace is missing, locked, holds another clip or a stage it needs is not done."""
