"""Batches in: a CSV file becomes one run per good row, each with its first
interaction already rendered. Streams the file in chunks (COPY into a staging
table), so memory stays flat and 100,000 rows take seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from orchestrator import catalog
from orchestrator.csv_rows import BadRow, CsvSummary, GoodRow, file_digest, read_rows
from orchestrator.db import Q
from orchestrator.engine import build_interaction

CHUNK_ROWS = 5_000
_INTERACTION_COLUMNS = (
    "run_id", "batch_id", "step", "kind", "actor", "visit", "status", "max_attempts", "timeout_s",
    "parent_ids", "input", "failure_class", "failure_message",
)


@dataclass
class SubmitReport:
    batch_id: int
    workflow: str
    workflow_version: int
    new_batch: bool
    runs_created: int = 0
    runs_existing: int = 0
    rejected: list[BadRow] = field(default_factory=list)
    summary: CsvSummary | None = None


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def submit(
    conn: psycopg.Connection,
    path: Path,
    workflow_name: str,
    *,
    key_column: str | None = None,
    priority: int | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> SubmitReport:
    """Create (or extend) the batch for this file and this workflow.

    The same file submitted again is the same batch and creates no run twice: a
    run's identity is (workflow, row key). Bad rows are recorded with their line
    and reason and skipped; the rest of the file goes on.
    """
    stored = catalog.latest(conn, workflow_name)
    workflow = stored.workflow
    summary = CsvSummary(header=[])
    rows = read_rows(path, required_columns=sorted(workflow.input_columns()), key_column=key_column, summary=summary)
    # Whole-file problems (no header, missing columns) raise here, before a batch exists.
    first = next(rows, None)
    rows = chain([first], rows) if first is not None else iter(())

    digest = file_digest(path)
    with conn.transaction():
        params = {
            "workflow_id": stored.id,
            "workflow_name": workflow.name,
            "source_name": path.name,
            "digest": digest,
            "key_column": key_column,
            "priority": priority,
        }
        batch = conn.execute(Q["insert_batch"], params).fetchone()
        new_batch = batch is not None
        if batch is None:
            batch = conn.execute(Q["find_batch"], params).fetchone()
            if priority is not None and priority != batch["priority"]:
                # Re-submitting with --priority re-prioritises: the dispatcher sees it at its next turn.
                conn.execute(Q["set_batch_priority"], {"id": batch["id"], "priority": priority})
    # A batch keeps the workflow version it was first submitted with.
    if batch["workflow_id"] == stored.id:
        batch_workflow = workflow
    else:
        batch_workflow = catalog.by_id(conn.cursor(), batch["workflow_id"])
    report = SubmitReport(batch["id"], workflow.name, stored.version, new_batch, summary=summary)

    done = 0
    for chunk in _chunks(rows, CHUNK_ROWS):
        good = [r for r in chunk if isinstance(r, GoodRow)]
        bad = [r for r in chunk if isinstance(r, BadRow)]
        with conn.transaction(), conn.cursor() as cur:
            for r in bad:
                cur.execute(Q["insert_reject"], {"batch_id": batch["id"], "line": r.line, "reason": r.reason, "raw": r.raw})
            created = _insert_runs(cur, batch, batch_workflow, good)
            if created:
                # serve dispatches at once instead of at its next idle tick (delivered on commit).
                cur.execute(Q["notify_work"], {"batch_id": batch["id"]})
        report.rejected.extend(bad)
        report.runs_created += created
        report.runs_existing += len(good) - created
        done += len(chunk)
        if on_rows:
            on_rows(done)

    with conn.transaction():
        conn.execute(
            Q["update_batch_rows"],
            {"id": batch["id"], "good": summary.good, "rejected": summary.bad, "empty": summary.empty},
        )
        conn.execute(Q["finish_runs_born_failed"], {"batch_id": batch["id"]})
    return report


def _insert_runs(cur: psycopg.Cursor, batch: dict, workflow, good: list[GoodRow]) -> int:
    if not good:
        return 0
    cur.execute(Q["create_incoming_runs"])
    with cur.copy(Q["copy_incoming_runs"]) as copy:
        for row in good:
            copy.write_row((row.key, row.line, Jsonb(row.values)))
    cur.execute(
        Q["insert_incoming_runs"],
        {"batch_id": batch["id"], "workflow_id": batch["workflow_id"], "workflow_name": batch["workflow_name"]},
    )
    runs = cur.fetchall()
    start = workflow.start_step
    with cur.copy(Q["copy_interactions"]) as copy:
        for run in runs:
            row = build_interaction(
                workflow,
                start,
                run_id=run["id"],
                batch_id=batch["id"],
                run_input=run["input"],
                visit=1,
                parents=[],
                outputs={},
            )
            row["input"] = Jsonb(row["input"])
            copy.write_row(tuple(row[c] for c in _INTERACTION_COLUMNS))
    return len(runs)
