"""Where the demo writes: `err` for what it does and how far it got, `out` for results."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.text import Text

from common.errors import WavefarmError

# Off a terminal (a pipe, a test) rich would assume 80 columns and cut lines short.
# Nothing printed is read as markup: a model's answer or a posting may hold "[/INST]";
# what the demo styles, it styles with Text.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False, highlight=False)
out = Console(width=None if sys.stdout.isatty() else 200, markup=False, highlight=False)


class DemoError(WavefarmError):
    """Something the demo needs is missing or broke; the message says what to do."""


def say(text: str) -> None:
    """A detail of what the demo does, dimmed."""
    err.print(Text(text, style="dim"))
