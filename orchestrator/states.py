"""The interaction state machine: the one place an interaction's status changes.

Allowed transitions, and who makes them:

    pending    -> dispatched   dispatcher (or local executor) hands it to a worker;
                               its deadline is set here (claim_pending, claim_for_dispatch)
    dispatched -> completed    the worker's result for the current attempt arrived
    dispatched -> failed       the worker reported a failure, or the deadline passed
                               with no result (the sweeper reports it as worker_lost)
    failed     -> pending      a retryable failure with attempts left: attempt+1
    pending    -> cancelled    the user cancelled the batch
    dispatched -> cancelled    the user cancelled the batch

Creation is not a transition: an interaction is born `pending`, or `failed` when its
template cannot be rendered for this run.

Every change is one UPDATE guarded by the expected status AND attempt, so a stale or
duplicate result (an old attempt, a message the broker delivered twice) matches no
row and changes nothing; one statement moves a whole batch of interactions at once.
The events table gets a row for every change from a trigger.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from common.errors import TransitionRefused
from orchestrator.db import Q


class Status(StrEnum):
    PENDING = "pending"
    DISPATCHED = "dispatched"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


OPEN = (Status.PENDING, Status.DISPATCHED)

# (from, to) -> the named query that performs it.
TRANSITIONS: dict[tuple[Status, Status], str] = {
    (Status.PENDING, Status.DISPATCHED): "mark_dispatched",
    (Status.DISPATCHED, Status.COMPLETED): "mark_completed",
    (Status.DISPATCHED, Status.FAILED): "mark_failed",
    (Status.FAILED, Status.PENDING): "requeue",
    (Status.PENDING, Status.CANCELLED): "mark_cancelled",
    (Status.DISPATCHED, Status.CANCELLED): "mark_cancelled",
}


# The fields each transition's query writes besides the status.
FIELDS: dict[str, tuple[str, ...]] = {
    "mark_dispatched": (),
    "mark_completed": ("output", "output_chars", "metrics", "worker"),
    "mark_failed": ("failure_class", "failure_message", "failure_detail", "metrics", "worker"),
    "requeue": (),
    "mark_cancelled": (),
}
_JSON_FIELDS = frozenset({"output", "metrics", "failure_detail"})


def transition_many(cur: psycopg.Cursor, rows: Sequence[Mapping[str, Any]], *, from_: Status,
                    to: Status) -> list[dict]:
    """Move each interaction of `rows` (`id`, `attempt`, and the fields the transition
    writes) from `from_` to `to` if it is still at that attempt: one statement for all.

    Returns the rows that moved; one whose guard did not match (the change was
    already made, or the row moved on) is absent: callers treat it as "stale, ignore".
    Raises TransitionRefused for a pair the table does not allow.
    """
    query = TRANSITIONS.get((Status(from_), Status(to)))
    if query is None:
        ids = ", ".join(str(r["id"]) for r in rows) or "-"
        raise TransitionRefused(f"interaction {ids}: {from_} -> {to} is not an allowed transition")
    if not rows:
        return []
    fields = FIELDS[query]
    for row in rows:
        unknown = set(row) - {"id", "attempt", *fields}
        if unknown:
            raise TypeError(f"unknown field for {from_} -> {to}: {', '.join(sorted(unknown))}")
    params: dict[str, Any] = {
        "from_status": str(from_),
        "id": [r["id"] for r in rows],
        "attempt": [r["attempt"] for r in rows],
    }
    for name in fields:
        values = [r.get(name) for r in rows]
        params[name] = [Jsonb(v) if v is not None else None for v in values] if name in _JSON_FIELDS else values
    cur.execute(Q[query], params)
    return cur.fetchall()


def transition(cur: psycopg.Cursor, interaction_id: int, *, from_: Status, to: Status, attempt: int,
               **fields: Any) -> dict | None:
    """transition_many for one interaction: the updated row, or None when the guard did not match."""
    moved = transition_many(cur, [{"id": interaction_id, "attempt": attempt, **fields}], from_=from_, to=to)
    return moved[0] if moved else None


def claim_pending(cur: psycopg.Cursor, *, limit: int, batch_id: int | None = None) -> list[dict]:
    """pending -> dispatched for up to `limit` of the oldest pending interactions.

    SKIP LOCKED lets two dispatchers claim side by side without taking the same row.
    """
    cur.execute(Q["claim_pending"], {"limit": limit, "batch_id": batch_id})
    return cur.fetchall()


def claim_for_dispatch(cur: psycopg.Cursor, *, kind: str, actor: str, batch_id: int, limit: int) -> list[dict]:
    """pending -> dispatched for one queue's actor in one batch, earliest runs first (SKIP LOCKED)."""
    cur.execute(Q["claim_for_dispatch"], {"kind": kind, "actor": actor, "batch_id": batch_id, "limit": limit})
    return cur.fetchall()


def cancel_batch(cur: psycopg.Cursor, batch_id: int) -> tuple[int, int]:
    """pending | dispatched -> cancelled for every open interaction of a batch, and its
    running runs end cancelled. Returns (interactions, runs) cancelled."""
    cur.execute(Q["cancel_batch_interactions"], {"batch_id": batch_id})
    interactions = cur.rowcount
    cur.execute(Q["cancel_batch_runs"], {"batch_id": batch_id, "reason": "cancelled by the user"})
    return interactions, cur.rowcount
