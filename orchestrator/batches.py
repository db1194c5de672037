"""Batches in: a CSV file becomes one run per good row, each with its first
interaction already rendered. Streams the file in chunks (COPY into a staging
table), so memory stays flat and 100,000 rows take seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from decimal import Decimal
from pathlib import Path

from common.errors import CsvFileError
from orchestrator import catalog, engine
from orchestrator.csv_rows import BadRow, CsvSummary, GoodRow, file_digest, read_rows
from orchestrator.db.rows import Batch, FailedInteraction, IncomingRun
from orchestrator.db.store import Store
from orchestrator.states import Status, end_runs
from orchestrator.workflow import Workflow

CHUNK_ROWS = 5_000


@dataclass
class Submission:
    """What a submit did: the batch, and what became of the file's rows."""

    batch_id: int
    workflow: str
    workflow_version: int
    new_batch: bool
    runs_created: int = 0
    runs_existing: int = 0
    runs_again: int = 0  # created for rows an earlier version of the workflow ran
    rejected: list[BadRow] = field(default_factory=list)
    summary: CsvSummary | None = None


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def submit(
    db: Store,
    path: Path,
    workflow_name: str,
    *,
    key_column: str | None = None,
    priority: int | None = None,
    credit_limit: Decimal | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> Submission:
    """Create (or extend) the batch for this file and this workflow.

    The same file submitted again for the same workflow version is the same batch and
    creates no run twice: a run's identity is (workflow, version, row key); after a new
    version is loaded, the file makes a new batch on it and its rows run again. Bad rows
    are recorded with their line and reason and skipped; the rest of the file goes on.
    """
    stored = catalog.latest(db, workflow_name)
    workflow = stored.workflow
    summary = CsvSummary(header=[])
    rows = file_rows(path, workflow, key_column, summary)

    digest = file_digest(path)
    with db.transaction():
        batch_id = db.insert_batch(workflow_id=stored.id, workflow_name=workflow.name, source_name=path.name,
                                   digest=digest, key_column=key_column, priority=priority)
        new_batch = batch_id is not None
        batch = db.find_batch(stored.id, digest)
        if not new_batch and priority is not None and priority != batch.priority:
            # Re-submitting with --priority re-prioritises: the dispatcher sees it at its next turn.
            db.set_batch_priority(batch.id, priority)
        if credit_limit is not None and credit_limit != batch.credit_limit:
            # Set before any run exists (a resubmission changes it): dispatch reads it.
            db.set_credit_limit(batch.id, credit_limit)
    # A batch keeps the workflow version it was first submitted with.
    batch_workflow = workflow if batch.workflow_id == stored.id else catalog.by_id(db, batch.workflow_id)
    submission = Submission(batch.id, workflow.name, stored.version, new_batch, summary=summary)

    done = 0
    for chunk in _chunks(rows, CHUNK_ROWS):
        good = [r for r in chunk if isinstance(r, GoodRow)]
        bad = [r for r in chunk if isinstance(r, BadRow)]
        with db.transaction():
            for r in bad:
                db.insert_reject(batch.id, r.line, r.reason, r.raw)
            created, again = _insert_runs(db, batch, batch_workflow, good)
            if created:
                # serve dispatches at once instead of at its next idle tick (delivered on commit).
                db.notify_work(batch.id)
        submission.rejected.extend(bad)
        submission.runs_created += created
        submission.runs_again += again
        submission.runs_existing += len(good) - created
        done += len(chunk)
        if on_rows:
            on_rows(done)

    with db.transaction():
        db.set_batch_rows(batch.id, good=summary.good, rejected=summary.bad, empty=summary.empty)
    return submission


def file_rows(path: Path, workflow: Workflow, key_column: str | None, summary: CsvSummary,
              ) -> Iterator[GoodRow | BadRow]:
    """The file's rows for this workflow. Whole-file problems (no header, missing
    columns, no rows at all) raise here, before a batch exists."""
    rows = read_rows(path, required_columns=sorted(workflow.input_columns()), key_column=key_column, summary=summary)
    first = next(rows, None)
    if first is None:
        raise CsvFileError(f"{path.name} has no rows after its header"
                           + (f" ({summary.empty} empty)" if summary.empty else "") + ": nothing to submit")
    return chain([first], rows)


def _insert_runs(db: Store, batch: Batch, workflow: Workflow, good: list[GoodRow]) -> tuple[int, int]:
    """The runs of new rows, each with its first interaction rendered; a run whose first
    step cannot even be rendered ends at once, failed, saying why. Returns (runs created,
    of them, rows an earlier version ran)."""
    if not good:
        return 0, 0
    runs, again = db.insert_runs(batch, (IncomingRun(r.key, r.line, r.values) for r in good))
    start = workflow.start_step
    first = [engine.build_interaction(workflow, start, run_id=run.id, batch_id=batch.id, run_input=run.input,
                                      visit=1, parents=[], outputs={})
             for run in runs]
    db.copy_interactions(first)
    born_failed = [i for i in first if i.status == Status.FAILED]
    if born_failed:
        end_runs(db, [engine.run_ending(
            engine.RunView(engine.RunContext(i.run_id, batch.id, {}, workflow),
                           visits={i.step: engine.StepVisits(visits=1, last_visit=1)}),
            [FailedInteraction(i.run_id, i.step, 1, i.failure_class, i.failure_message)], []) for i in born_failed])
    return len(runs), again
