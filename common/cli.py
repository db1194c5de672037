"""What every wavefarm command does at its outer edge: a WavefarmError is a message
for a person (exit 2), never a traceback."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.text import Text

from common.errors import WavefarmError


def run_app(app: typer.Typer, err: Console | None = None) -> None:
    err = err or Console(stderr=True)
    try:
        app()
    except WavefarmError as exc:
        # soft_wrap: one line stays one line in a log or a journal, whatever the width.
        # The message is text, never markup: it may quote a file, a value or a server.
        err.print(Text.assemble(("error:", "red"), " ", str(exc)), highlight=False, soft_wrap=True)
        sys.exit(2)
