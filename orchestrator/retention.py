"""`orchestrator purge`: delete a finished batch whole, for retention.

Runs, interactions (and with them their answers in the cache), their attempts and events, the rejected rows, the escalations and
the batch itself go in one transaction, children before parents (attempts reference
interactions, interactions runs, runs the batch). The event log is append-only in the
database; this is the one transaction that says it is purging (SET LOCAL
wavefarm.purging = 'on'), the only thing the events trigger lets a DELETE through for.

A batch with a run still running is refused: its work may be in flight, and deleting it
under serve would make results arrive for nothing. The workflow versions stay: other
batches may pin them.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import NotFound
from orchestrator.controls import ControlRefused
from orchestrator.db.store import Store


@dataclass(frozen=True, slots=True)
class Counts:
    """What a purge deletes (or deleted), table by table."""

    runs: int
    running: int
    interactions: int
    attempts: int
    events: int
    rejects: int
    escalations: int

    def said(self) -> str:
        return (f"{self.runs} run(s), {self.interactions} interaction(s), {self.attempts} attempt record(s), "
                f"{self.events} event(s), {self.rejects} rejected row(s), {self.escalations} escalation(s)")


def _refuse_running(batch_id: int, running: int) -> None:
    if running:
        raise ControlRefused(f"batch {batch_id} has {running} run(s) still running: stop them first with "
                             f"orchestrator cancel --batch {batch_id} (or let them finish), then purge")


def preview(store: Store, batch_id: int) -> Counts:
    """What a purge of the batch would delete now; refused as the purge would be."""
    if store.batch(batch_id) is None:
        raise NotFound(f"no batch {batch_id} (orchestrator status lists the batches)")
    counts = store.one("purge_counts", {"batch_id": batch_id}, Counts)
    _refuse_running(batch_id, counts.running)
    return counts


def purge(store: Store, batch_id: int) -> Counts:
    """Delete the batch and everything of it; what was deleted."""
    params = {"batch_id": batch_id}
    with store.transaction():
        # The lock order of every writer: runs, then their interactions, then the batch.
        # With the batch locked, a submission of the same file cannot add runs to it; the
        # runs are counted again under that lock, so one it added just before is seen.
        store.scalar("purge_lock_runs", params)
        if store.scalar("purge_lock_batch", params) is None:
            raise NotFound(f"no batch {batch_id} (orchestrator status lists the batches)")
        _refuse_running(batch_id, store.scalar("purge_lock_runs", params))
        store.scalar("purge_allow_events")
        events = store.run("purge_events", params) + store.run("purge_batch_events", params)
        attempts = store.run("purge_attempts", params)
        interactions = store.run("purge_interactions", params)
        runs = store.run("purge_runs", params)
        rejects = store.run("purge_rejects", params)
        escalations = store.run("purge_escalations", params)
        store.run("purge_batch", params)
    return Counts(runs=runs, running=0, interactions=interactions, attempts=attempts, events=events,
                  rejects=rejects, escalations=escalations)
