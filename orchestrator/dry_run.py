"""`orchestrator submit ... --dry-run`: what a submission would create, computed without
writing anything.

It reads the file as submit reads it (batches.file_rows), asks the database which row
keys this workflow version has run already and which an earlier version ran (a row's
identity is (workflow version, row key)), and renders every new row's first step with
the engine's own code (engine.build_interaction), so that a template that would not
render for some rows is found before they become failed runs. The first good row's
first step is shown whole: its rendered prompt or script input.

Nothing is stored, not even a workflow file given by path: one that differs from the
latest stored version is described as the version it would become. Run and batch ids
that do not exist yet are 0 in what is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from orchestrator import catalog, engine
from orchestrator.batches import CHUNK_ROWS, file_rows
from orchestrator.csv_rows import BadRow, CsvSummary, GoodRow, file_digest
from orchestrator.db.rows import NewInteraction
from orchestrator.db.store import Store
from orchestrator.states import Status
from orchestrator.workflow import Workflow

PLACEHOLDER_ID = 0  # the run and batch ids a template sees where none exists yet


@dataclass(frozen=True)
class FirstStep:
    """A step that starts a run, rendered for one row: what its interaction would hold."""

    step: str
    kind: str
    actor: str
    status: str           # pending, or failed when it cannot be rendered for the row
    input: dict[str, Any]  # {"prompt", "system", ...} for an AI step, {"input": {...}} for a script
    failure: str | None = None


@dataclass
class DryRun:
    workflow: str
    workflow_version: int
    workflow_stored: bool        # False: the file given differs from what is stored; submit would store it
    batch_id: int | None         # the batch this file already is for this version, if any
    rows_good: int = 0
    runs_new: int = 0
    runs_existing: int = 0       # rows this version has run already: submit skips them
    runs_again: int = 0          # of the new, rows an earlier version ran: they run again
    rows_empty: int = 0
    rejected: list[BadRow] = field(default_factory=list)
    born_failed: int = 0         # new runs whose first step would not render: they would fail at once
    born_failed_first: dict[str, Any] | None = None
    first_row: dict[str, Any] | None = None  # line, input and first steps of the file's first good row


def _resolve(db: Store, workflow: str | Workflow) -> tuple[Workflow, int | None, int, bool]:
    """(workflow, its stored id or None, version, stored?) for a name or a loaded file."""
    if isinstance(workflow, str):
        stored = catalog.latest(db, workflow)
        return stored.workflow, stored.id, stored.version, True
    latest = db.latest_workflow(workflow.name)
    if latest is not None and latest.digest == catalog.digest(workflow):
        return workflow, latest.id, latest.version, True
    return workflow, None, (latest.version + 1 if latest else 1), False


def _first_step(workflow: Workflow, row: GoodRow, batch_id: int) -> tuple[FirstStep, NewInteraction]:
    start = workflow.start_step
    built = engine.build_interaction(workflow, start, run_id=PLACEHOLDER_ID, batch_id=batch_id, run_input=row.values,
                                     visit=1, parents=[], outputs={})
    shown = FirstStep(start.name, start.kind, start.actor, built.status, built.input or {},
                      built.failure_message if built.status == Status.FAILED else None)
    return shown, built


def plan(db: Store, path: Path, workflow: str | Workflow, *, key_column: str | None = None) -> DryRun:
    """What `submit` would do with this file and workflow now. Reads only."""
    wf, workflow_id, version, stored = _resolve(db, workflow)
    summary = CsvSummary(header=[])
    rows = file_rows(path, wf, key_column, summary)
    batch = db.find_batch(workflow_id, file_digest(path)) if workflow_id is not None else None
    batch_id = batch.id if batch is not None else PLACEHOLDER_ID
    result = DryRun(wf.name, version, stored, batch.id if batch is not None else None)

    while chunk := list(islice(rows, CHUNK_ROWS)):
        result.rejected.extend(r for r in chunk if isinstance(r, BadRow))
        good = [r for r in chunk if isinstance(r, GoodRow)]
        if not good:
            continue
        keys = [r.key for r in good]
        existing = (set(db.column("dry_run_existing_keys", {"workflow_id": workflow_id, "keys": keys}))
                    if workflow_id is not None else set())
        before = set(db.column("dry_run_keys_run_before", {"workflow_name": wf.name, "workflow_id": workflow_id,
                                                           "keys": keys}))
        for row in good:
            if result.first_row is None:
                shown, _ = _first_step(wf, row, batch_id)
                result.first_row = {"line": row.line, "input": row.values, "exists": row.key in existing,
                                    "steps": [shown]}
            if row.key in existing:
                result.runs_existing += 1
                continue
            result.runs_new += 1
            result.runs_again += row.key in before
            # Every new row's first step, rendered as submit would: one that cannot be is a run born failed.
            _, built = _first_step(wf, row, batch_id)
            if built.status == Status.FAILED:
                result.born_failed += 1
                if result.born_failed_first is None:
                    result.born_failed_first = {"line": row.line, "step": built.step,
                                                "message": built.failure_message}
    result.rows_good, result.rows_empty = summary.good, summary.empty
    return result
