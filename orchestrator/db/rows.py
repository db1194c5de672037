"""What the database hands the rest of the orchestrator, and what it takes: one
dataclass per row shape of queries.sql.

The store (store.py) builds these straight from the cursor (psycopg's class_row), so a
query's column list and its row class must agree: a column added to one and not the
other fails at once, in the tests, instead of passing a dict with a missing key along.
Fields marked `jsonb` travel as JSON when they are sent back to the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


def jsonb(default: Any = None) -> Any:
    """A field stored as jsonb: wrapped for psycopg when sent."""
    return field(default=default, metadata={"jsonb": True})


# -- workflows ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WorkflowVersion:
    id: int
    name: str
    version: int
    digest: str
    definition: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WorkflowListing:
    name: str
    version: int
    id: int
    created_at: datetime
    steps: int


@dataclass(frozen=True, slots=True)
class StoredVersion:
    id: int
    version: int


# -- batches and runs ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Batch:
    id: int
    workflow_id: int
    workflow_name: str
    workflow_version: int
    source_name: str
    source_digest: str
    key_column: str | None
    priority: int
    rows_good: int
    rows_rejected: int
    rows_empty: int
    created_at: datetime
    paused_at: datetime | None
    pause_reason: str | None
    cancelled_at: datetime | None
    credit_limit: Decimal | None = None
    spent: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class IncomingRun:
    """A good CSV row, as it goes into the staging table."""

    key: str
    line: int
    values: dict[str, str]


@dataclass(frozen=True, slots=True)
class NewRun:
    id: int
    line: int
    input: dict[str, str]


@dataclass(frozen=True, slots=True)
class RecentAttempt:
    """One of a step's latest finished attempts in a batch (escalation's evidence)."""

    failure_class: str | None
    run_id: int
    interaction_id: int
    attempt: int
    failure_message: str | None
    at: datetime
    n: int


@dataclass(frozen=True, slots=True)
class Escalation:
    """A step of a batch held because it keeps failing the same way (until resumed)."""

    id: int
    batch_id: int
    step: str
    failure_class: str
    reason: str
    examples: list[dict[str, Any]]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Held:
    """One thing no worker may start: a batch, a run, or a step of a batch."""

    what: str  # batch | run | step, or clock (the reading's time, in `at`)
    batch_id: int
    run_id: int | None
    step: str | None
    at: datetime | None


@dataclass(frozen=True, slots=True)
class LockedRun:
    id: int
    batch_id: int
    workflow_id: int
    status: str


@dataclass(frozen=True, slots=True)
class RunEnding:
    """running -> completed | failed | cancelled, and why (orchestrator/states.py)."""

    id: int
    status: str
    reason: str
    outcome: str | None = None  # a completed run that ended on purpose (`to: $end`)


# -- interactions -------------------------------------------------------------------------
@dataclass(slots=True)
class NewInteraction:
    """An interaction about to be created: every run's first step at submit, a child
    decided by the engine. Born `pending`, or `failed` when its template did not render."""

    run_id: int
    batch_id: int
    step: str
    kind: str
    actor: str
    visit: int
    status: str
    max_attempts: int
    timeout_s: float
    parent_ids: list[int]
    input: dict[str, Any] = jsonb()
    failure_class: str | None = None
    failure_message: str | None = None
    cache_key: str | None = None  # an AI step's: what it asks, digested (orchestrator/cache.py)
    use_cache: bool = False       # its step has `cache: true`: look for an answer before sending it


@dataclass(frozen=True, slots=True)
class Claimed:
    """pending -> dispatched: what a worker's task is built from."""

    id: int
    run_id: int
    batch_id: int
    step: str
    kind: str
    actor: str
    attempt: int
    timeout_s: float
    deadline: datetime | None
    input: dict[str, Any]
    cache_key: str | None = None  # set when it may be answered from the cache


@dataclass(frozen=True, slots=True)
class Moved:
    """An interaction a guarded transition moved, as it is now."""

    id: int
    run_id: int
    batch_id: int
    step: str
    visit: int
    status: str
    attempt: int
    max_attempts: int
    busy_retries: int
    dispatched_at: datetime | None
    output: Any


@dataclass(frozen=True, slots=True)
class InteractionState:
    id: int
    status: str
    attempt: int


@dataclass(frozen=True, slots=True)
class OpenInteraction:
    """A pending or dispatched interaction, locked (cancel)."""

    id: int
    run_id: int
    batch_id: int
    status: str
    attempt: int
    dispatched_at: datetime | None


@dataclass(frozen=True, slots=True)
class Expired:
    """A dispatched attempt whose deadline passed with no result."""

    id: int
    attempt: int
    timeout_s: float
    dispatched_at: datetime
    deadline: datetime


# -- what a transition writes besides the status (states.TRANSITIONS names the class) ---
@dataclass(frozen=True, slots=True, kw_only=True)
class Guard:
    """The guard of every transition: the interaction and the attempt it must be at."""

    id: int
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion(Guard):
    output: Any = jsonb()
    output_chars: int
    cached_from: int | None = None  # a cache hit: the interaction whose answer this is
    cache_digest: str | None = None  # a model's answer: the digest of the model that gave it


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureRecord(Guard):
    failure_class: str
    failure_message: str
    failure_detail: dict[str, Any] | None = jsonb()


@dataclass(frozen=True, slots=True, kw_only=True)
class Requeue(Guard):
    """failed -> pending: the next attempt, not before `delay_s` from now; `busy` for a
    retry granted to a busy server, which does not use one of the step's retries."""

    delay_s: float
    busy: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Rerun(Guard):
    """failed -> pending by `retry`: the next attempt now, allowed `max_attempts`, with its
    input rendered again from the run's workflow version (which names kind and actor)."""

    max_attempts: int
    kind: str
    actor: str
    timeout_s: float
    input: dict[str, Any] = jsonb()


# -- the record of one attempt (table attempts) ------------------------------------------
@dataclass(frozen=True, slots=True)
class AttemptRecord:
    interaction_id: int
    batch_id: int
    attempt: int
    outcome: str  # completed, failed, cancelled, ignored
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    worker: str | None = None
    server: str | None = None
    failure_class: str | None = None
    failure_message: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    load_s: float | None = None
    prompt_eval_s: float | None = None
    eval_s: float | None = None
    call_s: float | None = None
    metrics: dict[str, Any] | None = jsonb()


@dataclass(frozen=True, slots=True)
class Event:
    batch_id: int | None
    run_id: int | None
    interaction_id: int | None
    kind: str
    attempt: int | None
    detail: dict[str, Any] = jsonb()


# -- applying results ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    """The locked interaction a result is for, with its run."""

    id: int
    run_id: int
    batch_id: int
    workflow_id: int
    input: dict[str, str]


@dataclass(frozen=True, slots=True)
class StepState:
    """Per run and step: how often it ran, its last interaction, its latest output."""

    run_id: int
    step: str
    visits: int              # visits that count (not superseded by a rerun)
    last_visit: int          # the highest visit number, superseded or not
    last_id: int | None      # None when every visit was superseded
    last_completed_id: int | None
    output_visit: int | None
    output: Any


@dataclass(frozen=True, slots=True)
class FailedInteraction:
    run_id: int
    step: str
    attempt: int
    failure_class: str
    failure_message: str


@dataclass(frozen=True, slots=True)
class RunToRetry:
    id: int
    workflow_id: int
    status: str
    row_key: str
    input: dict[str, str]


@dataclass(frozen=True, slots=True)
class RunInteractionState:
    """An interaction of a run a retry holds, not superseded, locked."""

    id: int
    run_id: int
    step: str
    visit: int
    status: str
    attempt: int
    max_attempts: int
    parent_ids: list[int]
    dispatched_at: datetime | None


@dataclass(frozen=True, slots=True)
class EndingEvent:
    run_id: int
    interaction_id: int


@dataclass(frozen=True, slots=True)
class KeyedRun:
    id: int
    row_key: str


@dataclass(frozen=True, slots=True)
class ProblemEvent:
    run_id: int
    kind: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OpenCount:
    """A row of store_decisions: a run and what it has open, or (run_id None) a batch whose
    spend reached its credit limit."""

    run_id: int | None
    open: int | None
    over_budget: int | None


@dataclass(frozen=True, slots=True)
class Stored:
    """What store_decisions says back: what each run has open, the batches over budget."""

    open: dict[int, int]
    over_budget: list[int]


# -- dispatch and workers -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DispatchRow:
    """`pending`: an (kind, actor, batch) with pending work and the batch's priority;
    `in_flight`: how many are dispatched per (kind, actor)."""

    what: str
    kind: str
    actor: str
    batch_id: int | None
    priority: int | None
    n: int | None
    limited: bool | None  # the batch has a credit limit


@dataclass(frozen=True, slots=True)
class QueueCapacity:
    queue: str
    slots: int
    workers: int


@dataclass(frozen=True, slots=True)
class WorkerRow:
    name: str
    kind: str
    queues: list[str]
    concurrency: int
    server: str | None
    models: list[str]
    circuit: str
    stopping: bool
    first_seen: datetime
    last_seen: datetime
    live: bool
    machine: str | None = None
    max_loaded: int | None = None
    resident: list[dict] = field(default_factory=list)  # common.messages.Resident, as JSON
    placed: list[str] | None = None
