"""`orchestrator export`: a batch's results as JSON lines or CSV, written whole or not at all.

One record per run: the run's own fields (`run_id`, `line`, `status`, `end_reason`), the
CSV row it came from, and the latest output of every step; with --cost, the run's cost
and tokens (`cost`, `prompt_tokens`, `output_tokens`: plain numbers, never formulas). In CSV the row's columns
are `input.COLUMN` and the outputs `output.STEP`, so no column of the input can stand
in for the run's own fields (an input column called `status` once made a failed run
read as completed).

CSV cells that a spreadsheet would run as a formula (starting with =, +, -, @, a tab or
a carriage return: OWASP's CSV injection) get a leading apostrophe, which spreadsheets
show as text; `allow_formulas` writes them as they are (for a reader that is not a
spreadsheet). A model's answer and a row from outside are never trusted to be data.

A file is written to a temporary name beside it and renamed into place at the end: an
export that fails (no such batch, a full disk, Ctrl-C) leaves an earlier file whole.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

from common.errors import WavefarmError

Format = Literal["jsonl", "csv"]
RUN_FIELDS = ("run_id", "line", "status", "outcome", "end_reason")
COST_FIELDS = ("cost", "prompt_tokens", "output_tokens")  # export --cost: the run's, every attempt counted
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def defuse(cell: str) -> str:
    """A cell a spreadsheet would evaluate, made text."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def write(records: Iterable[dict[str, Any]], steps: list[str], fmt: Format, stream: IO[str], *,
          allow_formulas: bool = False) -> int:
    """Write every record; returns how many."""
    if fmt == "jsonl":
        n = 0
        for record in records:
            stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            n += 1
        return n
    return _write_csv(records, steps, stream, allow_formulas)


def _write_csv(records: Iterable[dict[str, Any]], steps: list[str], stream: IO[str], allow_formulas: bool) -> int:
    writer = None
    n = 0
    for record in records:
        flat: dict[str, Any] = {name: record[name] for name in RUN_FIELDS}
        flat.update((name, record[name]) for name in COST_FIELDS if name in record)
        flat.update((f"input.{column}", value) for column, value in record["row"].items())
        for step in steps:
            value = record["outputs"].get(step)
            flat[f"output.{step}"] = value if value is None or isinstance(value, str) else json.dumps(
                value, ensure_ascii=False)
        if not allow_formulas:
            flat = {k: defuse(v) if isinstance(v, str) else v for k, v in flat.items()}
        if writer is None:
            # Every row of a batch has its file's header: the first record's columns are all
            # of them. (A header cell never starts a formula: each has a plain-word prefix.)
            writer = csv.DictWriter(stream, fieldnames=list(flat), restval="", extrasaction="ignore")
            writer.writeheader()
        writer.writerow(flat)
        n += 1
    return n


@contextmanager
def destination(path: Path | None) -> Iterator[IO[str]]:
    """Standard output, or `path` written in full or not at all."""
    if path is None:
        yield sys.stdout
        return
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise WavefarmError(f"-o {path}: that is a folder; give a file name")
    if not folder.is_dir():
        raise WavefarmError(f"-o {path}: the folder {folder} does not exist")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise WavefarmError(f"-o {path}: cannot write in {folder}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            yield stream
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
