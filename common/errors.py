"""The small exception hierarchy every wavefarm package raises.

Driver and library errors are wrapped at the boundary (database, HTTP, subprocess)
so callers only ever catch these. Messages are written for people: they say what
went wrong and where, and never carry a secret.
"""

from __future__ import annotations


class WavefarmError(Exception):
    """Base of every error wavefarm raises on purpose."""


class ConfigError(WavefarmError):
    """A setting is missing or unusable."""


class DatabaseUnavailable(WavefarmError):
    """The database cannot be reached (its URL is never part of the message)."""


class NotFound(WavefarmError):
    """A batch, run, workflow or interaction named by the user does not exist."""


class WorkflowInvalid(WavefarmError):
    """A workflow file has problems; `problems` lists every one with its place."""

    def __init__(self, source: str, problems: list) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p.located(source)}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class RenderError(WavefarmError):
    """A template could not be rendered for one interaction."""


class CsvFileError(WavefarmError):
    """The CSV file as a whole is unusable (no header, unreadable, missing columns).

    Problems with single rows are never raised: they are reported and skipped.
    """


class TransitionRefused(WavefarmError):
    """An interaction status change that the transition table does not allow."""
