"""What an operator does to a batch once it runs: cancel it (more to come: pause,
resume, retry). Each control changes state through the state machines
(orchestrator/states.py), in one transaction, taking its locks in the order every
other writer takes them (runs, then their interactions), so it can run beside serve
without deadlocking."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator import engine
from orchestrator.db.rows import AttemptRecord, Guard
from orchestrator.db.store import Store
from orchestrator.states import Status, end_runs, transition_many


@dataclass(frozen=True)
class Cancelled:
    runs: int
    interactions: int


def cancel_batch(store: Store, batch_id: int) -> Cancelled:
    """Every running run of the batch ends cancelled, with its waiting and in-flight
    work: a result still on its way is then recorded as ignored."""
    with store.transaction():
        run_ids = store.lock_running_runs(batch_id)
        open_ = store.lock_open_interactions(run_ids)
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
        ended = end_runs(store, [engine.cancelled(run_id) for run_id in run_ids])
    return Cancelled(len(ended), len(moved))
