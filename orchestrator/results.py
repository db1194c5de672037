"""Apply workers' results: the spine of wavefarm.

    result -> guarded transition -> engine (branches, children, events) -> run ending

all in one transaction per batch of results, one savepoint per result, so a result
is recorded exactly once, a stale or duplicate one changes nothing, and one bad
result never blocks the others.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import psycopg
from psycopg.types.json import Jsonb

from common.messages import RETRYABLE, TaskResult
from orchestrator import engine
from orchestrator.catalog import WorkflowCache
from orchestrator.db import Q
from orchestrator.states import Status, transition

log = logging.getLogger(__name__)


def apply_results(conn: psycopg.Connection, results: Sequence[TaskResult], cache: WorkflowCache) -> Counter:
    """Apply several results in one transaction; returns outcome counts.

    Outcomes: completed, failed, retried, ignored (stale/duplicate/unknown), error.

    The batch first goes through without a savepoint per result (two round trips
    each saved). Should one result raise, that attempt is rolled back whole and the
    batch is applied again with a savepoint around each result, so that one bad
    result costs only itself.
    """
    if not results:
        return Counter()
    try:
        applied = _apply_batch(conn, results, cache, isolate=False)
    except (psycopg.OperationalError, psycopg.InterfaceError):
        raise  # the database went away: nothing of this batch is applied, the caller retries it
    except Exception:
        applied = _apply_batch(conn, results, cache, isolate=True)
    outcomes: Counter = Counter()
    for result, outcome, ids in applied:
        outcomes[outcome] += 1
        if outcome != "error":
            # One line per applied result, with the ids a person greps for (JSON keys
            # with WAVEFARM_LOG_JSON=1), written once the transaction committed. The
            # engine's decisions are in the events table.
            log.info("interaction %s attempt %s: %s", result.interaction_id, result.attempt, outcome,
                     extra={"interaction_id": result.interaction_id, "attempt": result.attempt, **ids})
    return outcomes


def _apply_batch(conn: psycopg.Connection, results: Sequence[TaskResult], cache: WorkflowCache,
                 *, isolate: bool) -> list[tuple[TaskResult, str, dict]]:
    applied = []
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(Q["interaction_runs"], {"ids": [r.interaction_id for r in results]})
        run_of = {row["id"]: row["run_id"] for row in cur.fetchall()}
        # One lock order for every transaction that applies results: runs by id, and an
        # interaction only while its run is held. Two serve processes applying
        # overlapping batches then wait for each other instead of deadlocking.
        for result in sorted(results, key=lambda r: (run_of.get(r.interaction_id, 0), r.interaction_id)):
            run_id = run_of.get(result.interaction_id)
            if not isolate:
                applied.append((result, *_apply_one(cur, result, run_id, cache)))
                continue
            try:
                with conn.transaction():
                    applied.append((result, *_apply_one(cur, result, run_id, cache)))
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except Exception:
                # The savepoint rolled back this result alone; it stays dispatched and the
                # sweeper will send it again, so nothing is lost.
                log.exception("could not apply the result of interaction %s", result.interaction_id)
                applied.append((result, "error", {}))
    return applied


def _apply_one(cur: psycopg.Cursor, result: TaskResult, run_id: int | None,
               cache: WorkflowCache) -> tuple[str, dict]:
    """Apply one result; return its outcome and the run's ids for the log line."""
    if run_id is None:
        log.warning("result for unknown interaction %s ignored", result.interaction_id)
        return "ignored", {}
    cur.execute(Q["lock_run"], {"id": run_id})
    run = cur.fetchone()
    cur.execute(Q["lock_interaction"], {"id": result.interaction_id})
    ctx = engine.RunContext(run["id"], run["batch_id"], run["input"], cache.get(cur, run["workflow_id"]))
    return _decide(cur, ctx, result), {"run_id": ctx.run_id, "batch_id": ctx.batch_id}


def _decide(cur: psycopg.Cursor, ctx: engine.RunContext, result: TaskResult) -> str:
    if result.ok:
        to = Status.COMPLETED
        fields = {"output": result.output, "output_chars": len(engine.output_text(result.output))}
    else:
        failure = result.failure
        to = Status.FAILED
        fields = {
            "failure_class": failure.failure_class.value,
            "failure_message": failure.message,
            "failure_detail": {"exit_code": failure.exit_code, "stderr_tail": failure.stderr_tail},
        }
    updated = transition(cur, result.interaction_id, from_=Status.DISPATCHED, to=to, attempt=result.attempt,
                         metrics=result.metrics, worker=result.worker, **fields)
    if updated is None:
        return _ignored(cur, ctx, result)

    if result.ok:
        # Always followed by finish_if_done: a child can be born failed (its template
        # did not render), and then the run may have ended right here.
        engine.on_completed(cur, ctx, updated)
        outcome = "completed"
    elif result.failure.failure_class in RETRYABLE and updated["attempt"] < updated["max_attempts"]:
        transition(cur, result.interaction_id, from_=Status.FAILED, to=Status.PENDING, attempt=updated["attempt"])
        return "retried"
    else:
        outcome = "failed"
    engine.finish_if_done(cur, ctx)
    return outcome


def _ignored(cur: psycopg.Cursor, ctx: engine.RunContext, result: TaskResult) -> str:
    cur.execute(Q["interaction_state"], {"id": result.interaction_id})
    now = cur.fetchone()
    log.info(
        "late or duplicate result ignored: interaction %s attempt %s (it is %s at attempt %s)",
        result.interaction_id, result.attempt, now["status"], now["attempt"],
    )
    cur.execute(
        Q["insert_event"],
        {
            "batch_id": ctx.batch_id,
            "run_id": ctx.run_id,
            "interaction_id": result.interaction_id,
            "kind": "result_ignored",
            "attempt": result.attempt,
            "detail": Jsonb({"status": now["status"], "current_attempt": now["attempt"]}),
        },
    )
    return "ignored"
