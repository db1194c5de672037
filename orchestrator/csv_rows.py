"""A streaming, validating CSV reader: the one way a batch file becomes rows.

Whole-file problems (unreadable, no header, missing columns) raise CsvFileError;
problems with one record become a BadRow with its line and reason, and reading goes
on, so one bad record never costs the other 99,999. Memory stays flat in file size:
the csv module reads one physical line at a time, and duplicate detection keeps only
a 16-byte digest and a line number per good record.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import CsvFileError

if TYPE_CHECKING:
    from _csv import _reader

RAW_LIMIT = 2_000  # BadRow.raw keeps this many characters: enough to find and fix the record
# The csv module builds each field in memory before we can look at it. Its own limit is
# set this many times above max_field_bytes: oversized fields up to there still reach our
# check (which names the column and size), while a runaway quote cannot pull the rest of
# a large file into one field.
_CSV_LIMIT_FACTOR = 16
# errors="surrogateescape" turns each byte that is not valid UTF-8 into U+DC80..U+DCFF.
_SURROGATE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class GoodRow:
    line: int  # 1-based physical line where the record starts
    values: dict[str, str]
    key: str


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str  # without the "line N: " prefix; callers print the line themselves
    raw: str  # the record's text, truncated, with bad bytes as \xNN and NUL as \x00


@dataclass
class CsvSummary:
    header: list[str]
    good: int = 0
    bad: int = 0  # every BadRow, duplicates included
    empty: int = 0  # blank lines and records whose fields are all empty
    duplicates: int = 0


def file_digest(path: Path) -> str:
    """sha256 hex of the file's bytes, read in chunks: identifies a resubmitted file."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise CsvFileError(f"{path}: cannot read: {e.strerror or e}") from None


def row_key(values: dict[str, str], key_column: str | None) -> str:
    """A record's identity, stable across runs and processes and blind to column order."""
    if key_column is not None:
        return "col:" + values[key_column]
    canonical = json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    # surrogatepass: never raise here, even for values a caller did not validate.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class _Lines:
    """Feeds the csv reader physical lines and keeps the current record's text, bounded,
    because the csv module cannot hand back the raw text of what it just parsed."""

    __slots__ = ("_lines", "parts", "size")

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.parts: list[str] = []
        self.size = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        if self.size < RAW_LIMIT:
            self.parts.append(line[: RAW_LIMIT - self.size])
        self.size += len(line)
        return line

    def take(self) -> str:
        """The text since the last take(), made safe to store (Postgres text holds
        neither NUL nor lone surrogates), marked when truncated."""
        text = "".join(self.parts)
        truncated = self.size > len(text)
        self.parts.clear()
        self.size = 0
        if not truncated:
            text = text.removesuffix("\n").removesuffix("\r")
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        text = text.replace("\x00", "\\x00")
        return text + " …(truncated)" if truncated else text

    def drop(self) -> None:
        self.parts.clear()
        self.size = 0


def _bad_byte(text: str) -> tuple[int, int] | None:
    """(offending byte, 1-based character position) of the first undecodable byte."""
    if text.isascii():  # O(1) in CPython: the common case costs nothing
        return None
    m = _SURROGATE.search(text)
    return (ord(m.group()) - 0xDC00, m.start() + 1) if m else None


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _read_header(reader: _reader, lines: _Lines, path: Path, summary: CsvSummary | None) -> list[str]:
    fields: list[str] = []
    try:
        for fields in reader:
            if any(fields):
                break
            if summary is not None:  # blank lines before the header
                summary.empty += 1
        else:
            if reader.line_num == 0:
                raise CsvFileError(f"{path}: the file is empty")
            raise CsvFileError(f"{path}: no header: the file has only blank lines")
    except csv.Error as e:
        raise CsvFileError(f"{path}: line {reader.line_num}: the header is not valid CSV: {e}") from None
    line = reader.line_num
    lines.drop()
    header = [f.strip() for f in fields]
    header[0] = header[0].removeprefix("\ufeff").strip()  # a BOM the decoder did not eat
    problems = []
    for i, name in enumerate(header, 1):
        if (bad := _bad_byte(name)) is not None:
            problems.append(f"column {i}: byte {bad[0]:#04x} is not valid UTF-8")
        elif "\x00" in name:
            problems.append(f"column {i}: contains a NUL byte")
    empty = [str(i) for i, name in enumerate(header, 1) if not name]
    if empty:
        problems.append(f"column(s) {', '.join(empty)} have no name")
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(header, 1):
        if name:
            seen.setdefault(name, []).append(i)
    dups = [f"{name!r} (columns {', '.join(map(str, at))})" for name, at in seen.items() if len(at) > 1]
    if dups:
        problems.append(f"duplicate column name(s): {', '.join(dups)}")
    if problems:
        raise CsvFileError(f"{path}: line {line}: bad header: {'; '.join(problems)}")
    return header


def read_rows(
    path: Path,
    *,
    required_columns: Iterable[str] = (),
    key_column: str | None = None,
    max_field_bytes: int = 1_048_576,
    summary: CsvSummary | None = None,
) -> Iterator[GoodRow | BadRow]:
    """Yield every non-empty record of `path` as a GoodRow or a BadRow, in file order.

    A generator: whole-file problems raise CsvFileError on the first next(). `summary`,
    when given, gets the header and running counts as rows stream.
    """
    required = list(required_columns)
    # Process-wide, and read by the csv module as it parses: set per call so a file's
    # outcome never depends on what was read before it.
    csv.field_size_limit(max_field_bytes * _CSV_LIMIT_FACTOR + 1)
    try:
        # utf-8-sig drops a leading BOM; newline="" lets csv see quoted \r\n intact.
        f = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as e:
        raise CsvFileError(f"{path}: cannot open: {e.strerror or e}") from None
    with f:
        lines = _Lines(iter(f))
        # strict: malformed quoting ("a"b, a quote left open at EOF) is an error to
        # report, not something to guess at.
        reader = csv.reader(lines, strict=True)
        try:
            header = _read_header(reader, lines, path, summary)
        except OSError as e:
            raise CsvFileError(f"{path}: cannot read: {e.strerror or e}") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise CsvFileError(
                f"{path}: missing required column(s): {_names(missing)}; the header has: {_names(header)}"
            )
        if key_column is not None and key_column not in header:
            raise CsvFileError(
                f"{path}: key column {key_column!r} is not in the header; the header has: {_names(header)}"
            )
        if summary is not None:
            summary.header = header
        width = len(header)
        key_at = header.index(key_column) if key_column is not None else None
        seen: dict[bytes, int] = {}  # key digest -> line of the first record with that key

        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                reason = _csv_error_reason(e, start, reader.line_num, max_field_bytes)
                fields = None
            except OSError as e:
                raise CsvFileError(f"{path}: line {start}: cannot read: {e.strerror or e}") from None
            else:
                if not any(fields):  # [] for a blank line, or every field empty
                    lines.drop()
                    if summary is not None:
                        summary.empty += 1
                    continue
                reason = _check(fields, header, width, key_at, max_field_bytes)

            if reason is None:
                assert fields is not None
                values = dict(zip(header, fields))
                key = row_key(values, key_column)
                digest = hashlib.sha256(key.encode()).digest()[:16] if key_at is not None else bytes.fromhex(key[:32])
                first = seen.setdefault(digest, start)
                if first == start:
                    lines.drop()
                    if summary is not None:
                        summary.good += 1
                    yield GoodRow(start, values, key)
                    continue
                reason = f"duplicate of line {first}"
                if key_column is not None:
                    shown = values[key_column]
                    shown = shown if len(shown) <= 80 else shown[:80] + "…"
                    reason += f" (same {key_column} {shown!r})"
                if summary is not None:
                    summary.duplicates += 1
            if summary is not None:
                summary.bad += 1
            yield BadRow(start, reason, lines.take())


def _csv_error_reason(e: csv.Error, start: int, end: int, max_field_bytes: int) -> str:
    text = str(e)
    if text.startswith("unexpected end of data"):
        return f"a quoted field opened here is never closed (read to the end of the file, line {end})"
    if text.startswith("field larger than field limit"):
        # Past our own check's reach: the csv module stopped building the field.
        return (
            f"a field grew past {max_field_bytes * _CSV_LIMIT_FACTOR:,} characters, far over the "
            f"{max_field_bytes:,}-byte limit (often a quote that is never closed); skipped to the end of line {end}"
        )
    where = f" (lines {start}-{end})" if end > start else ""
    return f"malformed CSV{where}: {text}"


def _check(fields: list[str], header: list[str], width: int, key_at: int | None, max_field_bytes: int) -> str | None:
    """Why this record cannot be used, or None. Every field problem is listed, not just the first."""
    if len(fields) != width:
        return f"{len(fields)} field{'s' if len(fields) != 1 else ''}, header has {width}"
    problems = []
    for name, value in zip(header, fields):
        if (bad := _bad_byte(value)) is not None:
            problems.append(f"column {name!r}: byte {bad[0]:#04x} is not valid UTF-8 (character {bad[1]})")
        if "\x00" in value:
            problems.append(f"column {name!r}: contains a NUL byte (character {value.index(chr(0)) + 1})")
        # Characters are 1-4 bytes (a surrogate-escaped byte is 1): only encode when it could matter.
        if len(value) * 4 > max_field_bytes:
            size = len(value.encode("utf-8", "surrogateescape"))
            if size > max_field_bytes:
                problems.append(f"column {name!r}: {size:,} bytes, over the {max_field_bytes:,}-byte limit")
    if key_at is not None and not fields[key_at]:
        problems.append(f"key column {header[key_at]!r} is empty")
    return "; ".join(problems) or None
