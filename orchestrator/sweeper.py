"""Find interactions whose deadline passed with no result (a lost message, a killed
worker, a crashed executor) and report them as worker_lost through the normal result
path, so the retry rule, the events and the run ending are the same as for any other
failure. A result that still arrives later is for an old attempt: ignored."""

from __future__ import annotations

from collections import Counter

from common.messages import Failure, FailureClass, TaskResult, utcnow
from common.retries import RetryPolicy
from orchestrator import locks
from orchestrator.catalog import WorkflowCache
from orchestrator.db.rows import Expired
from orchestrator.db.store import Store
from orchestrator.results import apply_results


def sweep(store: Store, cache: WorkflowCache, *, limit: int = 500, policy: RetryPolicy | None = None) -> Counter:
    # One transaction, under a transaction-scoped advisory lock: a second serve process
    # skips its sweep instead of reporting the same attempts lost a second time.
    with store.transaction():
        if not store.try_lock(locks.SWEEP):
            return Counter()
        expired = store.expired(limit)
        if not expired:
            return Counter()
        return apply_results(store, [_lost(row) for row in expired], cache, policy)


def _lost(row: Expired) -> TaskResult:
    waited = (row.deadline - row.dispatched_at).total_seconds()
    return TaskResult(
        interaction_id=row.id,
        attempt=row.attempt,
        failure=Failure(
            failure_class=FailureClass.WORKER_LOST,
            message=(f"no result by the deadline ({waited:g}s after dispatch for a {row.timeout_s:g}s step "
                     "timeout): worker lost or message dropped"),
        ),
        finished_at=utcnow(),
    )
