"""Read-only views of the farm for `status`, `show`, `export` and the metrics: the
queries that change nothing, each with the row class it returns."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from orchestrator.db.store import Store


@dataclass(frozen=True, slots=True)
class BatchListing:
    id: int
    workflow_name: str
    workflow_version: int
    source_name: str
    created_at: datetime
    rows_good: int
    rows_rejected: int
    runs: int
    running: int
    completed: int
    failed: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class StatusCount:
    status: str
    n: int


@dataclass(frozen=True, slots=True)
class OutcomeCount:
    outcome: str
    n: int


@dataclass(frozen=True, slots=True)
class StepCount:
    step: str
    kind: str
    actor: str
    status: str
    n: int


@dataclass(frozen=True, slots=True)
class Reject:
    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class FailureCount:
    step: str
    failure_class: str
    n: int
    example: str | None


@dataclass(frozen=True, slots=True)
class FailedRunReason:
    end_reason: str | None
    n: int


@dataclass(frozen=True, slots=True)
class RunRow:
    id: int
    batch_id: int
    workflow_id: int
    workflow_name: str
    workflow_version: int
    row_key: str
    line: int
    input: dict[str, str]
    status: str
    outcome: str | None
    end_reason: str | None
    created_at: datetime
    ended_at: datetime | None
    source_name: str


@dataclass(frozen=True, slots=True)
class RunInteraction:
    id: int
    step: str
    kind: str
    actor: str
    visit: int
    status: str
    attempt: int
    max_attempts: int
    parent_ids: list[int]
    input_chars: int
    output_chars: int | None
    failure_class: str | None
    failure_message: str | None
    failure_detail: dict[str, Any] | None
    created_at: datetime
    dispatched_at: datetime | None
    ended_at: datetime | None
    not_before: datetime | None
    superseded: bool
    duration_s: float | None
    worker: str | None
    server: str | None
    cached_from: int | None          # a cache hit: the interaction whose answer it reused
    cached_from_run: int | None      # ... its run and batch, while they are still there
    cached_from_batch: int | None
    cost: Decimal | None             # its attempts' cost (None: a script, or unpriced)


@dataclass(frozen=True, slots=True)
class AttemptRow:
    interaction_id: int
    attempt: int
    outcome: str
    dispatched_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    recorded_at: datetime
    worker: str | None
    server: str | None
    failure_class: str | None
    failure_message: str | None
    prompt_tokens: int | None
    output_tokens: int | None
    load_s: float | None
    prompt_eval_s: float | None
    eval_s: float | None
    call_s: float | None
    metrics: dict[str, Any] | None
    model: str | None
    cost: Decimal | None


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    at: datetime
    interaction_id: int | None
    kind: str
    attempt: int | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ExportRow:
    run_id: int
    line: int
    row: dict[str, str]
    status: str
    outcome: str | None
    end_reason: str | None
    outputs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OpenByActor:
    kind: str
    actor: str
    pending: int
    dispatched: int


@dataclass(frozen=True, slots=True)
class OpenByStep:
    status: str
    step: str
    kind: str
    actor: str
    n: int


def list_batches(store: Store) -> list[BatchListing]:
    return store.all("list_batches", None, BatchListing)


def run_counts(store: Store, batch_id: int) -> list[StatusCount]:
    return store.all("batch_run_counts", {"batch_id": batch_id}, StatusCount)


def outcome_counts(store: Store, batch_id: int) -> list[OutcomeCount]:
    return store.all("batch_outcome_counts", {"batch_id": batch_id}, OutcomeCount)


def step_counts(store: Store, batch_id: int) -> list[StepCount]:
    return store.all("batch_interaction_counts", {"batch_id": batch_id}, StepCount)


def rejects(store: Store, batch_id: int, limit: int) -> list[Reject]:
    return store.all("batch_rejects", {"batch_id": batch_id, "limit": limit}, Reject)


def failure_counts(store: Store, batch_id: int) -> list[FailureCount]:
    return store.all("batch_failure_counts", {"batch_id": batch_id}, FailureCount)


def failed_run_reasons(store: Store, batch_id: int, limit: int) -> list[FailedRunReason]:
    return store.all("batch_failed_run_reasons", {"batch_id": batch_id, "limit": limit}, FailedRunReason)


def run(store: Store, run_id: int) -> RunRow | None:
    return store.one("run_by_id", {"id": run_id}, RunRow)


def run_interactions(store: Store, run_id: int) -> list[RunInteraction]:
    return store.all("run_interactions", {"run_id": run_id}, RunInteraction)


def run_attempts(store: Store, run_id: int) -> list[AttemptRow]:
    return store.all("run_attempts", {"run_id": run_id}, AttemptRow)


def run_events(store: Store, run_id: int) -> list[EventRow]:
    return store.all("run_events", {"run_id": run_id}, EventRow)


@contextmanager
def export_rows(store: Store, batch_id: int) -> Iterator[Iterator[ExportRow]]:
    """One row per run with the latest output of every step, streamed."""
    with store.stream("export_batch", {"batch_id": batch_id}, ExportRow) as rows:
        yield rows


def open_by_actor(store: Store) -> list[OpenByActor]:
    return store.all("open_by_actor", None, OpenByActor)


def open_by_step(store: Store) -> list[OpenByStep]:
    return store.all("open_interaction_counts", None, OpenByStep)


# -- progress: rate and ETA (orchestrator/pace.py) -------------------------------------------
@dataclass(frozen=True, slots=True)
class BatchPace:
    runs: int
    ended: int
    completed: int
    failed: int
    cancelled: int
    ended_recently: int   # runs that ended within the window
    window_s: float       # the last minute, or the batch's age when younger


@dataclass(frozen=True, slots=True)
class BatchGauge:
    """A batch as Prometheus sees it: its pace and what its state is made of."""

    batch_id: int
    workflow_name: str
    paused: bool
    escalations: int
    runs: int
    ended: int
    completed: int
    failed: int
    cancelled: int
    ended_recently: int
    window_s: float


def batch_pace(store: Store, batch_id: int) -> BatchPace | None:
    return store.one("batch_pace", {"batch_id": batch_id}, BatchPace)


def batch_gauges(store: Store, shown: list[int]) -> list[BatchGauge]:
    return store.all("metrics_batches", {"shown": shown}, BatchGauge)


# -- cost (orchestrator/cost.py) -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CostRow:
    """What the attempts of one (step, model) of a batch used and cost; model None: a script."""

    step: str
    kind: str
    model: str | None
    attempts: int
    prompt_tokens: int
    output_tokens: int
    model_s: float
    cost: Decimal
    unpriced: int          # AI attempts recorded when their model had no price (counted as 0)
    cache_hits: int
    saved_prompt_tokens: int
    saved_output_tokens: int
    saved_cost: Decimal


def batch_cost(store: Store, batch_id: int) -> list[CostRow]:
    return store.all("batch_cost", {"batch_id": batch_id}, CostRow)



@dataclass(frozen=True, slots=True)
class ExportCostRow(ExportRow):
    cost: Decimal
    prompt_tokens: int
    output_tokens: int


@contextmanager
def export_cost_rows(store: Store, batch_id: int) -> Iterator[Iterator[ExportCostRow]]:
    """export_rows with each run's cost and tokens (export --cost), streamed."""
    with store.stream("export_batch_cost", {"batch_id": batch_id}, ExportCostRow) as rows:
        yield rows
