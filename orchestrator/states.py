"""The state machines of interactions and runs: the one place a status changes.

Interactions: the allowed transitions, the statements production runs for each
(queries.sql), and who makes them:

    pending    -> dispatched   claim_for_dispatch (serve's dispatcher) or claim_pending
                               (the local executor): oldest ready work, SKIP LOCKED;
                               the deadline is set here (wavefarm_dispatch_deadline);
                               claim_cache_answered: what the cache answers of a model
                               no host consumes now (it needs none)
    dispatched -> completed    mark_completed: the worker's result for the current attempt
    dispatched -> failed       mark_failed: the worker reported a failure, or the deadline
                               passed with no result (the sweeper reports worker_lost)
    failed     -> pending      requeue: the retry rule (common/retries.py) said retry:
                               attempt + 1, not before its backoff
                               rerun: a person said retry (orchestrator/rerun.py):
                               attempt + 1 now, with fresh retries and its input rendered
                               again from the run's workflow version
    dispatched -> pending      hand_back: a worker received the attempt and did not start
                               it, because it is held (common/holds.py): the same attempt
                               goes out again once the hold lifts
    pending    -> cancelled    mark_cancelled: the user cancelled (orchestrator/controls.py)
    dispatched -> cancelled    mark_cancelled: the same, for work already sent

Creation is not a transition: an interaction is born `pending`, or `failed` when its
template cannot be rendered for this run. Nor is superseding: `retry --from-step` flags
ended work as history (interactions.superseded) and creates new visits beside it.

Every change but a claim is one UPDATE guarded by the expected status AND attempt, so a
stale or duplicate result (an old attempt, a message the broker delivered twice)
matches no row and changes nothing; one statement moves a whole batch of interactions.
A claim is guarded by the status and by its row lock (SKIP LOCKED). The events table
gets a row for every change from a trigger.

Runs:

    running -> completed | failed | cancelled    finish_runs, with the reason: the run
                               has nothing open any more (results.py, with the engine's
                               run_ending), or the user cancelled it
    completed | failed | cancelled -> running    reopen_runs: `retry` gave the run new
                               work (orchestrator/rerun.py)

Every transaction that changes runs and their interactions locks the runs first, in id
order, then their interactions in (run, id) order, so two of them wait for each other
instead of deadlocking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from common.errors import TransitionRefused
from orchestrator.db.rows import Claimed, Completion, FailureRecord, Guard, Moved, Requeue, Rerun, RunEnding
from orchestrator.db.store import Store


class Status(StrEnum):
    PENDING = "pending"
    DISPATCHED = "dispatched"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


OPEN = (Status.PENDING, Status.DISPATCHED)


@dataclass(frozen=True)
class Change:
    """How a transition is made: a named statement of queries.sql, and the row class of
    what it writes besides the status (None for a claim, which picks its own rows)."""

    query: str
    writes: type[Guard] | None = None


CLAIM_FOR_DISPATCH = Change("claim_for_dispatch")
CLAIM_PENDING = Change("claim_pending")
CLAIM_CACHE_ANSWERED = Change("claim_cache_answered")

TRANSITIONS: dict[tuple[Status, Status], tuple[Change, ...]] = {
    (Status.PENDING, Status.DISPATCHED): (CLAIM_FOR_DISPATCH, CLAIM_PENDING, CLAIM_CACHE_ANSWERED),
    (Status.DISPATCHED, Status.COMPLETED): (Change("mark_completed", Completion),),
    (Status.DISPATCHED, Status.FAILED): (Change("mark_failed", FailureRecord),),
    (Status.FAILED, Status.PENDING): (Change("requeue", Requeue), Change("rerun_failed", Rerun)),
    (Status.DISPATCHED, Status.PENDING): (Change("hand_back", Guard),),
    (Status.PENDING, Status.CANCELLED): (Change("mark_cancelled", Guard),),
    (Status.DISPATCHED, Status.CANCELLED): (Change("mark_cancelled", Guard),),
}

RUN_TRANSITIONS: dict[tuple[RunStatus, RunStatus], Change] = {
    (RunStatus.RUNNING, RunStatus.COMPLETED): Change("finish_runs", RunEnding),
    (RunStatus.RUNNING, RunStatus.FAILED): Change("finish_runs", RunEnding),
    (RunStatus.RUNNING, RunStatus.CANCELLED): Change("finish_runs", RunEnding),
    (RunStatus.COMPLETED, RunStatus.RUNNING): Change("reopen_runs"),
    (RunStatus.FAILED, RunStatus.RUNNING): Change("reopen_runs"),
    (RunStatus.CANCELLED, RunStatus.RUNNING): Change("reopen_runs"),
}


def _guarded(from_: Status, to: Status, writes: type | None) -> Change:
    """The change of from_ -> to that writes rows of class `writes` (the first, for none)."""
    changes = [c for c in TRANSITIONS.get((Status(from_), Status(to)), ()) if c.writes is not None]
    if not changes:
        raise TransitionRefused(f"{from_} -> {to} is not an allowed transition for a given interaction")
    return next((c for c in changes if c.writes is writes), changes[0])


def transition_many(store: Store, items: Sequence[Guard], *, from_: Status, to: Status) -> list[Moved]:
    """Move each interaction of `items` (its id, the attempt it must be at, and what the
    transition writes: the class TRANSITIONS names) from `from_` to `to`: one statement
    for all. Returns the interactions that moved; one whose guard did not match (the
    change was made already, or the row moved on) is absent: callers treat it as
    "stale, ignore". Raises TransitionRefused for a pair the table does not allow.
    """
    change = _guarded(from_, to, type(items[0]) if items else None)
    for item in items:
        if type(item) is not change.writes:
            raise TypeError(f"{from_} -> {to} writes a {change.writes.__name__}, not a {type(item).__name__}")
    return store.transition(change.query, Status(from_).value, items, change.writes)


def transition(store: Store, item: Guard, *, from_: Status, to: Status) -> Moved | None:
    """transition_many for one interaction: it as it is now, or None when the guard did not match."""
    moved = transition_many(store, [item], from_=from_, to=to)
    return moved[0] if moved else None


def claim_for_dispatch(store: Store, *, kind: str, actor: str, batch_id: int, limit: int) -> list[Claimed]:
    """pending -> dispatched for one queue's actor in one batch, earliest runs first."""
    return store.claim_for_dispatch(kind=kind, actor=actor, batch_id=batch_id, limit=limit)


def claim_cache_answered(store: Store, *, actor: str, batch_id: int, digests: Sequence[str],
                         limit: int) -> list[Claimed]:
    """pending -> dispatched for an AI actor's work in one batch that the cache answers."""
    return store.claim_cache_answered(actor=actor, batch_id=batch_id, digests=digests, limit=limit)


def claim_pending(store: Store, *, limit: int, batch_id: int | None = None) -> list[Claimed]:
    """pending -> dispatched for the oldest ready work (of one batch, or of all)."""
    return store.claim_pending(limit=limit, batch_id=batch_id)


def end_runs(store: Store, endings: Sequence[RunEnding]) -> list[int]:
    """running -> each ending's status, with its reason: the only way a run ends. Returns
    the runs that ended (one no longer running is left alone)."""
    for ending in endings:
        if (RunStatus.RUNNING, RunStatus(ending.status)) not in RUN_TRANSITIONS:
            raise TransitionRefused(f"run {ending.id}: running -> {ending.status} is not an allowed transition")
    return store.finish_runs(endings, RunStatus.RUNNING.value)


def reopen_runs(store: Store, run_ids: Sequence[int], from_: RunStatus) -> list[int]:
    """An ended run -> running: `retry` gave it new work. Returns the runs reopened."""
    if (RunStatus(from_), RunStatus.RUNNING) not in RUN_TRANSITIONS:
        raise TransitionRefused(f"{from_} -> running is not an allowed transition for a run")
    return store.reopen_runs(run_ids, RunStatus(from_).value)
