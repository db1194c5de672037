"""Find interactions whose deadline passed with no result (a lost message, a killed
worker, a crashed executor) and report them as worker_lost through the normal result
path, so the retry policy, the events and the run ending are the same as for any
other failure. A result that still arrives later is for an old attempt: ignored."""

from __future__ import annotations

from collections import Counter

import psycopg

from common.messages import Failure, FailureClass, TaskResult, utcnow
from orchestrator import locks
from orchestrator.catalog import WorkflowCache
from orchestrator.db import Q
from orchestrator.results import apply_results


def sweep(conn: psycopg.Connection, cache: WorkflowCache, *, limit: int = 500) -> Counter:
    # One transaction, under a transaction-scoped advisory lock: a second serve process
    # skips its sweep instead of reporting the same attempts lost a second time.
    with conn.transaction():
        if not conn.execute(Q["try_advisory_xact_lock"], {"key": locks.SWEEP}).fetchone()["locked"]:
            return Counter()
        expired = conn.execute(Q["expired_interactions"], {"limit": limit}).fetchall()
        if not expired:
            return Counter()
        return _report_lost(conn, expired, cache)


def _report_lost(conn: psycopg.Connection, expired: list[dict], cache: WorkflowCache) -> Counter:
    lost = [
        TaskResult(
            interaction_id=row["id"],
            attempt=row["attempt"],
            failure=Failure(
                failure_class=FailureClass.WORKER_LOST,
                message=(f"no result by the deadline ({2 * row['timeout_s'] + 10:g}s after dispatch for a "
                         f"{row['timeout_s']:g}s step timeout): worker lost or message dropped"),
            ),
            finished_at=utcnow(),
        )
        for row in expired
    ]
    return apply_results(conn, lost, cache)
