"""Apply workers' results: the spine of wavefarm.

    results -> guarded transitions -> engine (branches, children, events) -> run endings

A batch of results is applied in a fixed number of statements, whatever its size:

    1. lock the results' runs and interactions (one lock order for every applier)
    2. read those runs' state (each step's visits and latest output)
    3. the guarded transitions: dispatched -> completed, dispatched -> failed, and
       failed -> pending for the retries
    4. the engine decides, in Python, one result after another in run and interaction
       order, on that state kept up to date in memory: exactly what applying them one
       at a time would decide
    5. its events, then its children (their `created` events by trigger), in one
       statement that also counts what each run has left open
    6. the runs left with nothing open end, saying why

A result is recorded exactly once; a stale or duplicate one matches no guarded row
and is recorded as a `result_ignored` event. `apply_in` runs inside the caller's
transaction (serve applies and dispatches in one); `apply_results` is that in a
transaction of its own.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg
from psycopg.types.json import Jsonb

from common.messages import RETRYABLE, TaskResult
from orchestrator import engine, locks
from orchestrator.catalog import WorkflowCache
from orchestrator.db import Q
from orchestrator.states import Status, transition_many

log = logging.getLogger(__name__)

DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
T = TypeVar("T")


@dataclass
class Applied:
    """What became of one result: its outcome and the ids a log line carries."""

    result: TaskResult
    outcome: str  # completed, failed, retried, ignored, error
    ids: dict = field(default_factory=dict)


def apply_results(conn: psycopg.Connection, results: Sequence[TaskResult], cache: WorkflowCache) -> Counter:
    """Apply results in a transaction of their own; returns outcome counts."""

    def transaction(isolate: bool) -> list[Applied]:
        with conn.transaction():
            return apply_in(conn, results, cache, isolate=isolate)

    applied = whole_or_isolated(transaction, len(results))
    log_applied(applied)
    return outcome_counts(applied)


class ApplyFailed(Exception):
    """Applying a batch of results raised: roll its transaction back and apply them
    again with `isolate=True`. The database having gone away is not this: it raises
    psycopg's own error, and nothing of the batch is applied."""


def whole_or_isolated(transaction: Callable[[bool], T], results: int) -> T:
    """Run `transaction(isolate)`, a transaction that applies a batch of results with
    apply_in: first whole; if the batch could not be applied whole (its transaction
    rolled back), once more with each result isolated."""
    try:
        return transaction(False)
    except ApplyFailed:
        log.warning("a batch of %d result(s) could not be applied whole; applying them one by one", results)
        return transaction(True)


def apply_in(conn: psycopg.Connection, results: Sequence[TaskResult], cache: WorkflowCache, *,
             isolate: bool = False) -> list[Applied]:
    """Apply results inside the caller's transaction.

    The batch goes through whole, with no savepoint (two round trips saved a turn).
    Should it raise, ApplyFailed tells the caller to roll its transaction back and call
    again with `isolate`: then each result is applied alone in a savepoint of its own,
    so one result that cannot be stored costs only itself (it stays dispatched and
    the sweeper sends it again).
    """
    if not results:
        return []
    if not isolate:
        try:
            with conn.cursor() as cur:
                return _apply_set(cur, results, cache)
        except DB_ERRORS:
            raise
        except Exception as exc:
            raise ApplyFailed(f"applying {len(results)} result(s) failed: {exc!r}") from exc
    applied: list[Applied] = []
    for result in results:
        try:
            with conn.transaction(), conn.cursor() as cur:
                applied += _apply_set(cur, [result], cache)
        except DB_ERRORS:
            raise
        except Exception:
            log.exception("could not apply the result of interaction %s", result.interaction_id)
            applied.append(Applied(result, "error"))
    return applied


def outcome_counts(applied: Sequence[Applied]) -> Counter:
    return Counter(a.outcome for a in applied)


def log_applied(applied: Sequence[Applied]) -> None:
    """One line per applied result, with the ids a person greps for (JSON keys with
    WAVEFARM_LOG_JSON=1); call it once the transaction committed. The engine's
    decisions are in the events table."""
    for a in applied:
        if a.outcome != "error":
            log.info("interaction %s attempt %s: %s", a.result.interaction_id, a.result.attempt, a.outcome,
                     extra={"interaction_id": a.result.interaction_id, "attempt": a.result.attempt, **a.ids})


def _apply_set(cur: psycopg.Cursor, results: Sequence[TaskResult], cache: WorkflowCache) -> list[Applied]:
    # A message delivered twice can be in one batch twice: the first copy is applied
    # (or ignored), every further copy is ignored.
    unique: dict[tuple[int, int], TaskResult] = {}
    copies: list[TaskResult] = []
    for r in results:
        key = (r.interaction_id, r.attempt)
        if key in unique:
            copies.append(r)
        else:
            unique[key] = r
    targets = _lock_targets(cur, [r.interaction_id for r in unique.values()])
    known = sorted((r for r in unique.values() if r.interaction_id in targets),
                   key=lambda r: (targets[r.interaction_id]["run_id"], r.interaction_id))
    # The runs' state as it was before these results: the engine replays them in order.
    run_ids = sorted({t["run_id"] for t in targets.values()})
    cur.execute(Q["run_steps"], {"run_ids": run_ids})
    views = _views(cur, cur.fetchall(), targets, cache)
    # Keyed by (interaction, attempt): a batch can hold a late result of an old attempt
    # beside the current one's, and only the current one moved.
    completed = {(row["id"], row["attempt"]): row for row in transition_many(
        cur, [_completion(r) for r in known if r.ok], from_=Status.DISPATCHED, to=Status.COMPLETED)}
    failed = {(row["id"], row["attempt"]): row for row in transition_many(
        cur, [_failure(r) for r in known if not r.ok], from_=Status.DISPATCHED, to=Status.FAILED)}
    retry = [row for key, row in failed.items() if _retryable(row, unique[key])]
    requeued = {(row["id"], row["attempt"] - 1) for row in transition_many(
        cur, [{"id": row["id"], "attempt": row["attempt"]} for row in retry], from_=Status.FAILED, to=Status.PENDING)}

    applied: list[Applied] = []
    ignored = [c for c in copies if c.interaction_id in targets]
    decisions = engine.Decisions()
    may_end: set[int] = set()
    for r in known:
        run_id = targets[r.interaction_id]["run_id"]
        view = views[run_id]
        ids = {"run_id": run_id, "batch_id": view.ctx.batch_id}
        key = (r.interaction_id, r.attempt)
        if key in completed:
            row = completed[key]
            view.completed(row)
            engine.on_completed(view, row, decisions)
            outcome = "completed"
        elif key in requeued:
            outcome = "retried"
        elif key in failed:
            outcome = "failed"
        else:
            ignored.append(r)
            continue
        if outcome != "retried":
            # Always checked after a completion too: a child can be born failed (its
            # template did not render), and then the run may have ended right here.
            may_end.add(run_id)
        applied.append(Applied(r, outcome, ids))
    for r in results:
        if r.interaction_id not in targets:
            log.warning("result for unknown interaction %s ignored", r.interaction_id)
            applied.append(Applied(r, "ignored"))

    applied += _ignore(cur, ignored, targets, views, decisions)
    open_now = _store(cur, decisions, sorted(may_end))
    _end_runs(cur, [views[run_id] for run_id in sorted(may_end) if open_now[run_id] == 0])
    return applied


def _lock_targets(cur: psycopg.Cursor, ids: list[int]) -> dict[int, dict]:
    """Lock the interactions and their runs; id -> its run's row. An id not found may
    belong to a transaction that has not committed yet (another serve process created
    the child and published it in the same transaction): wait for dispatches in
    progress to end, then look once more. What is still missing is unknown."""
    cur.execute(Q["lock_result_targets"], {"ids": ids})
    targets = {row["id"]: row for row in cur.fetchall()}
    missing = [i for i in ids if i not in targets]
    if missing:
        cur.execute(Q["wait_for_dispatches"], {"key": locks.DISPATCH})
        cur.execute(Q["lock_result_targets"], {"ids": missing})
        targets.update((row["id"], row) for row in cur.fetchall())
    return targets


def _views(cur: psycopg.Cursor, state: list[dict], targets: dict[int, dict],
           cache: WorkflowCache) -> dict[int, engine.RunView]:
    """Every run a result is for, from its `run_steps` rows."""
    rows: dict[int, list[dict]] = defaultdict(list)
    for row in state:
        rows[row["run_id"]].append(row)
    views = {}
    for t in targets.values():
        run_id = t["run_id"]
        if run_id not in views:
            ctx = engine.RunContext(run_id, t["batch_id"], t["input"], cache.get(cur, t["workflow_id"]))
            views[run_id] = engine.RunView.from_rows(ctx, rows[run_id])
    return views


def _completion(r: TaskResult) -> dict:
    return {"id": r.interaction_id, "attempt": r.attempt, "output": r.output,
            "output_chars": len(engine.output_text(r.output)), "metrics": r.metrics, "worker": r.worker}


def _failure(r: TaskResult) -> dict:
    f = r.failure
    return {"id": r.interaction_id, "attempt": r.attempt, "failure_class": f.failure_class.value,
            "failure_message": f.message, "failure_detail": {"exit_code": f.exit_code, "stderr_tail": f.stderr_tail},
            "metrics": r.metrics, "worker": r.worker}


def _retryable(row: dict, result: TaskResult) -> bool:
    return result.failure.failure_class in RETRYABLE and row["attempt"] < row["max_attempts"]


def _store(cur: psycopg.Cursor, decisions: engine.Decisions, runs: list[int]) -> dict[int, int]:
    """The engine's events, then its children, in one statement; returns how much each
    run of `runs` has open (pending or dispatched) afterwards."""
    events, children = decisions.events, decisions.children
    params: dict = {f"e_{c}": [e[c] for e in events]
                    for c in ("batch_id", "run_id", "interaction_id", "kind", "attempt")}
    params["e_detail"] = [Jsonb(e["detail"]) for e in events]
    for c in ("run_id", "batch_id", "step", "kind", "actor", "visit", "status", "max_attempts", "timeout_s",
              "failure_class", "failure_message"):
        params[c] = [row[c] for row in children]
    params["parent_ids"] = ["{" + ",".join(map(str, row["parent_ids"])) + "}" for row in children]
    params["input"] = [Jsonb(row["input"]) for row in children]
    params["runs"] = runs
    cur.execute(Q["store_decisions"], params)
    return {row["run_id"]: row["open"] for row in cur.fetchall()}


def _ignore(cur: psycopg.Cursor, ignored: list[TaskResult], targets: dict[int, dict],
            views: dict[int, engine.RunView], decisions: engine.Decisions) -> list[Applied]:
    """Late or duplicate results: each an event saying what the interaction is now."""
    if not ignored:
        return []
    cur.execute(Q["interaction_states"], {"ids": sorted({r.interaction_id for r in ignored})})
    now = {row["id"]: row for row in cur.fetchall()}
    applied = []
    for r in ignored:
        state = now[r.interaction_id]
        ctx = views[targets[r.interaction_id]["run_id"]].ctx
        log.info("late or duplicate result ignored: interaction %s attempt %s (it is %s at attempt %s)",
                 r.interaction_id, r.attempt, state["status"], state["attempt"])
        decisions.events.append({"batch_id": ctx.batch_id, "run_id": ctx.run_id, "interaction_id": r.interaction_id,
                                 "kind": "result_ignored", "attempt": r.attempt,
                                 "detail": {"status": state["status"], "current_attempt": state["attempt"]}})
        applied.append(Applied(r, "ignored", {"run_id": ctx.run_id, "batch_id": ctx.batch_id}))
    return applied


def _end_runs(cur: psycopg.Cursor, ending: list[engine.RunView]) -> None:
    """End every run of `ending` (nothing pending or in flight any more), saying why."""
    if not ending:
        return
    run_ids = [v.ctx.run_id for v in ending]
    failed: dict[int, list[dict]] = defaultdict(list)
    problems: dict[int, list[dict]] = defaultdict(list)
    cur.execute(Q["failed_interactions"], {"run_ids": run_ids})
    for row in cur.fetchall():
        failed[row["run_id"]].append(row)
    cur.execute(Q["problem_events"], {"run_ids": run_ids, "kinds": list(engine.PROBLEM_EVENTS)})
    for row in cur.fetchall():
        problems[row["run_id"]].append(row)
    ends = [engine.run_ending(v, failed[v.ctx.run_id], problems[v.ctx.run_id]) for v in ending]
    cur.execute(Q["finish_runs"], {"id": run_ids, "status": [s for s, _ in ends], "reason": [r for _, r in ends]})
