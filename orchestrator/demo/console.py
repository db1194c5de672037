"""Where the demo writes: `err` for what it does and how far it got, `out` for results."""

from __future__ import annotations

import sys

from rich.console import Console

from common.errors import WavefarmError

# Off a terminal (a pipe, a test) rich would assume 80 columns and cut lines short.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
out = Console(width=None if sys.stdout.isatty() else 200)


class DemoError(WavefarmError):
    """Something the demo needs is missing or broke; the message says what to do."""


def say(text: str) -> None:
    """A detail of what the demo does, dimmed."""
    err.print(f"[dim]{text}[/dim]", highlight=False)
