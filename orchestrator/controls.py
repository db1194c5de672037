"""What an operator does to a batch once it runs: pause it, resume it, cancel it or some
of its runs, change its priority. Each control changes state through the state machines
(orchestrator/states.py), in one transaction, taking its locks in the order every
other writer takes them (runs, then their interactions), so it can run beside serve
without deadlocking; each says so in the event log; and each tells serve (NOTIFY) that
what is held changed, so that the workers hear of it at once (orchestrator/holds.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from common.errors import NotFound, WavefarmError
from orchestrator import engine
from orchestrator.db.rows import AttemptRecord, Batch, Event, Guard, Moved, OpenInteraction, RunInteractionState
from orchestrator.db.store import Store
from orchestrator.states import Status, end_runs, transition_many

USER = "user"  # why a batch was paused: a person asked
BUDGET_EXCEEDED = "budget_exceeded"  # why a batch was paused: its spend reached its credit limit


class ControlRefused(WavefarmError):
    """A control that does not apply to the batch or run as it is (the message says why)."""


@dataclass(frozen=True)
class Cancelled:
    runs: int
    interactions: int


def pause(store: Store, batch_id: int, *, reason: str = USER, detail: dict | None = None) -> bool:
    """No call of the batch starts until it is resumed; calls already running finish and
    are recorded, their children wait. Whether it was paused now (False: it was already)."""
    with store.transaction():
        _require(store, batch_id)
        paused = store.pause_batch(batch_id, reason)
        if paused:
            store.insert_events([Event(batch_id, None, None, "paused", None, {"reason": reason, **(detail or {})})])
            store.notify_controls()
    return paused


def resume(store: Store, batch_id: int, *, credit_limit: Decimal | None = None) -> tuple[bool, list[str]]:
    """Lift the batch's pause and its escalations: (was it paused, the steps released).

    A batch paused at its credit limit goes on only with a new limit above what it spent:
    a plain resume is refused (it would pause again at the next result)."""
    with store.transaction():
        batch = _require(store, batch_id)
        detail: dict = {}
        if credit_limit is not None:
            if credit_limit <= batch.spent:
                raise ControlRefused(f"batch {batch_id} has spent {batch.spent} already: a credit limit of "
                                     f"{credit_limit} would stop it again at once; give more than {batch.spent}")
            store.set_credit_limit(batch_id, credit_limit)
            detail["credit_limit"] = str(credit_limit)
        elif batch.pause_reason == BUDGET_EXCEEDED and batch.paused_at is not None:
            raise ControlRefused(
                f"batch {batch_id} stopped at its credit limit (spent {batch.spent} of {batch.credit_limit}): "
                f"raise the limit to go on: orchestrator resume --batch {batch_id} --credit-limit AMOUNT")
        resumed = store.resume_batch(batch_id)
        steps = store.lift_escalations(batch_id)
        if resumed or steps or detail:
            store.insert_events([Event(batch_id, None, None, "resumed", None,
                                       {"was_paused": resumed, "escalations_lifted": steps, **detail})])
            store.notify_controls()
    return resumed, steps


def set_priority(store: Store, batch_id: int, priority: int) -> None:
    with store.transaction():
        _require(store, batch_id)
        store.set_batch_priority(batch_id, priority)
        store.insert_events([Event(batch_id, None, None, "priority_set", None, {"priority": priority})])


def cancel_batch(store: Store, batch_id: int) -> Cancelled:
    """Every running run of the batch ends cancelled, with its waiting and in-flight
    work: a result still on its way is then recorded as ignored."""
    with store.transaction():
        _require(store, batch_id)
        cancelled = _cancel(store, store.lock_running_runs(batch_id))
        store.set_batch_cancelled(batch_id)
        store.insert_events([Event(batch_id, None, None, "cancelled", None,
                                   {"runs": cancelled.runs, "interactions": cancelled.interactions})])
        store.notify_controls()
    return cancelled


def cancel_runs(store: Store, run_ids: Sequence[int]) -> Cancelled:
    """The same for some runs; a run that has ended already is left as it is."""
    with store.transaction():
        known = store.lock_runs(run_ids)
        missing = sorted(set(run_ids) - {r.id for r in known})
        if missing:
            raise NotFound(f"no run {', '.join(map(str, missing))}")
        running = [r for r in known if r.status == "running"]
        cancelled = _cancel(store, [r.id for r in running])
        store.insert_events([Event(batch_id, None, None, "cancelled", None, {"run_ids": sorted(
            r.id for r in running if r.batch_id == batch_id)}) for batch_id in sorted({r.batch_id for r in running})])
        store.notify_controls()
    return cancelled


def _cancel(store: Store, run_ids: list[int]) -> Cancelled:
    if not run_ids:
        return Cancelled(0, 0)
    moved = cancel_open(store, store.lock_open_interactions(run_ids))
    ended = end_runs(store, [engine.cancelled(run_id) for run_id in run_ids])
    return Cancelled(len(ended), len(moved))


def cancel_open(store: Store, open_: Sequence[OpenInteraction | RunInteractionState]) -> list[Moved]:
    """Pending and dispatched interactions (locked by the caller) -> cancelled; a result
    still on its way is then recorded as ignored. The others of `open_` are left alone."""
    moved = []
    for status in (Status.PENDING, Status.DISPATCHED):
        moved += transition_many(store, [Guard(id=i.id, attempt=i.attempt) for i in open_ if i.status == status],
                                 from_=status, to=Status.CANCELLED)
    # An attempt in flight ends here, for the state machine; its record says so.
    sent = {i.id: i for i in open_ if i.status == Status.DISPATCHED}
    store.store_decisions(
        attempts=[AttemptRecord(m.id, m.batch_id, m.attempt, "cancelled", dispatched_at=sent[m.id].dispatched_at)
                  for m in moved if m.id in sent],
        events=[], children=[], runs=[])
    return moved


def _require(store: Store, batch_id: int) -> Batch:
    batch = store.batch(batch_id)
    if batch is None:
        raise NotFound(f"no batch {batch_id} (orchestrator status lists the batches)")
    return batch
