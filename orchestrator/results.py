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

from common import storable
from common.messages import Failure, FailureClass, TaskResult, Usage
from common.retries import STEP_FAULTS, Retry, RetryPolicy
from orchestrator import engine, locks
from orchestrator.escalation import escalate_failing
from orchestrator.catalog import WorkflowCache
from orchestrator.budget import over_budget
from orchestrator.db.rows import AttemptRecord, Completion, FailureRecord, Moved, Requeue, StepState, Target
from orchestrator.db.store import Store
from orchestrator.states import Status, end_runs, transition_many

log = logging.getLogger(__name__)

DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
T = TypeVar("T")


@dataclass
class Applied:
    """What became of one result: its outcome and the ids a log line carries."""

    result: TaskResult
    outcome: str  # completed, failed, retried, ignored, error
    ids: dict = field(default_factory=dict)


def apply_results(store: Store, results: Sequence[TaskResult], cache: WorkflowCache,
                  policy: RetryPolicy | None = None) -> Counter:
    """Apply results in a transaction of their own; returns outcome counts."""

    def transaction(isolate: bool) -> list[Applied]:
        with store.transaction():
            return apply_in(store, results, cache, isolate=isolate, policy=policy)

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


def apply_in(store: Store, results: Sequence[TaskResult], cache: WorkflowCache, *, isolate: bool = False,
             policy: RetryPolicy | None = None) -> list[Applied]:
    """Apply results inside the caller's transaction.

    The batch goes through whole, with no savepoint (two round trips saved a turn).
    Should it raise, ApplyFailed tells the caller to roll its transaction back and call
    again with `isolate`: then each result is applied alone in a savepoint of its own,
    so one result that cannot be stored costs only itself (it stays dispatched and
    the sweeper sends it again).
    """
    if not results:
        return []
    policy = policy or RetryPolicy.from_settings()
    if not isolate:
        try:
            return _apply_set(store, results, cache, policy)
        except DB_ERRORS:
            raise
        except Exception as exc:
            raise ApplyFailed(f"applying {len(results)} result(s) failed: {exc!r}") from exc
    applied: list[Applied] = []
    for result in results:
        try:
            with store.transaction():
                applied += _apply_set(store, [result], cache, policy)
            continue
        except DB_ERRORS:
            raise
        except Exception as exc:
            log.exception("could not apply the result of interaction %s", result.interaction_id)
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        # What cannot be stored as it came is recorded as what it is: this attempt's
        # failure, with the reason, now; not a result left to wait for its deadline.
        unstorable = _unstorable(result, reason)
        try:
            with store.transaction():
                applied += _apply_set(store, [unstorable], cache, policy)
        except DB_ERRORS:
            raise
        except Exception:
            log.exception("could not record interaction %s as failed either", result.interaction_id)
            applied.append(Applied(result, "error"))
    return applied


def _unstorable(result: TaskResult, reason: str) -> TaskResult:
    failure = Failure(failure_class=FailureClass.INVALID_OUTPUT,
                      message=storable.clean(f"the result could not be stored: {reason}"))
    return TaskResult(interaction_id=result.interaction_id, attempt=result.attempt, failure=failure,
                      worker=result.worker, server=result.server, started_at=result.started_at,
                      finished_at=result.finished_at)


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


def _apply_set(store: Store, results: Sequence[TaskResult], cache: WorkflowCache,
               policy: RetryPolicy) -> list[Applied]:
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
    targets = _lock_targets(store, [r.interaction_id for r in unique.values()])
    known = sorted((r for r in unique.values() if r.interaction_id in targets),
                   key=lambda r: (targets[r.interaction_id].run_id, r.interaction_id))
    # The runs' state as it was before these results: the engine replays them in order.
    run_ids = sorted({t.run_id for t in targets.values()})
    views = _views(store, store.run_steps(run_ids), targets, cache)
    decisions = engine.Decisions()
    # Keyed by (interaction, attempt): a batch can hold a late result of an old attempt
    # beside the current one's, and only the current one moved.
    completed = _keyed(transition_many(store, [_completion(r) for r in known if r.ok],
                                       from_=Status.DISPATCHED, to=Status.COMPLETED))
    failed = _keyed(transition_many(store, [_failure(r) for r in known if not r.ok],
                                    from_=Status.DISPATCHED, to=Status.FAILED))
    for key, moved in (*completed.items(), *failed.items()):
        decisions.attempts.append(_record(unique[key], moved.batch_id, moved.status, moved))
    requeue = [_retry_or_give_up(moved, unique[key], views[moved.run_id], policy, decisions)
               for key, moved in failed.items()]
    requeued = {(m.id, m.attempt - 1) for m in transition_many(store, [q for q in requeue if q is not None],
                                                               from_=Status.FAILED, to=Status.PENDING)}

    applied: list[Applied] = []
    ignored = [c for c in copies if c.interaction_id in targets]
    may_end: set[int] = set()
    for r in known:
        run_id = targets[r.interaction_id].run_id
        view = views[run_id]
        ids = {"run_id": run_id, "batch_id": view.ctx.batch_id}
        key = (r.interaction_id, r.attempt)
        if key in completed:
            moved = completed[key]
            view.completed(moved)
            engine.on_completed(view, moved, decisions)
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

    applied += _ignore(store, ignored, targets, views, decisions)
    stored = store.store_decisions(attempts=decisions.attempts, events=decisions.events,
                                   children=decisions.children, runs=sorted(may_end))
    open_now = stored.open
    if stored.over_budget:
        over_budget(store, stored.over_budget)
    faulty = [(m.batch_id, m.step) for key, m in failed.items() if unique[key].failure.failure_class in STEP_FAULTS]
    faulty += [(c.batch_id, c.step) for c in decisions.children if c.failure_class == FailureClass.RENDER_ERROR]
    if faulty:
        escalate_failing(store, faulty, policy.escalation)
    end_finished_runs(store, [views[run_id] for run_id in sorted(may_end) if open_now[run_id] == 0])
    return applied


def _keyed(moved: list[Moved]) -> dict[tuple[int, int], Moved]:
    return {(m.id, m.attempt): m for m in moved}


def _lock_targets(store: Store, ids: list[int]) -> dict[int, Target]:
    """Lock the interactions and their runs; id -> its target. An id not found may
    belong to a transaction that has not committed yet (another serve process created
    the child and published it in the same transaction): wait for dispatches in
    progress to end, then look once more. What is still missing is unknown."""
    targets = store.lock_result_targets(ids)
    missing = [i for i in ids if i not in targets]
    if missing:
        store.wait_for_lock_shared(locks.DISPATCH)
        targets.update(store.lock_result_targets(missing))
    return targets


def _views(store: Store, state: list[StepState], targets: dict[int, Target],
           cache: WorkflowCache) -> dict[int, engine.RunView]:
    """Every run a result is for, from its `run_steps` rows."""
    rows: dict[int, list[StepState]] = defaultdict(list)
    for row in state:
        rows[row.run_id].append(row)
    views = {}
    for t in targets.values():
        if t.run_id not in views:
            ctx = engine.RunContext(t.run_id, t.batch_id, t.input, cache.get(store, t.workflow_id))
            views[t.run_id] = engine.RunView.from_rows(ctx, rows[t.run_id])
    return views


def _completion(r: TaskResult) -> Completion:
    # Every answer a model gave may answer the same question again (orchestrator/cache.py):
    # it is kept with the digest of the model that gave it. A hit is not an answer of its own.
    return Completion(id=r.interaction_id, attempt=r.attempt, output=r.output,
                      output_chars=len(engine.output_text(r.output)), cached_from=r.cached_from,
                      cache_digest=r.model_digest if r.cached_from is None else None)


def _failure(r: TaskResult) -> FailureRecord:
    f = r.failure
    return FailureRecord(id=r.interaction_id, attempt=r.attempt, failure_class=f.failure_class.value,
                         failure_message=f.message,
                         failure_detail={"exit_code": f.exit_code, "stderr_tail": f.stderr_tail})


def _record(r: TaskResult, batch_id: int, outcome: str, moved: Moved | None = None) -> AttemptRecord:
    """The attempt's own record: who ran it, where, how long, what it used."""
    u = r.usage or Usage()
    return AttemptRecord(
        interaction_id=r.interaction_id, batch_id=batch_id, attempt=r.attempt, outcome=outcome,
        dispatched_at=moved.dispatched_at if moved else None, started_at=r.started_at, ended_at=r.finished_at,
        worker=r.worker or None, server=r.server,
        failure_class=r.failure.failure_class.value if r.failure else None,
        failure_message=r.failure.message if r.failure else None,
        prompt_tokens=u.prompt_tokens, output_tokens=u.output_tokens, load_s=u.load_s,
        prompt_eval_s=u.prompt_eval_s, eval_s=u.eval_s, call_s=u.call_s,
        metrics={**r.metrics, "cached_from": r.cached_from} if r.cached_from is not None else r.metrics or None)


def _retry_or_give_up(moved: Moved, r: TaskResult, view: engine.RunView, policy: RetryPolicy,
                      decisions: engine.Decisions) -> Requeue | None:
    """The retry rule's answer for a failed attempt: the requeue to make, or None, with
    the reason in the event log."""
    decision = policy.decide(r.failure.failure_class, attempt=moved.attempt, max_attempts=moved.max_attempts,
                             busy_retries=moved.busy_retries, retry_after_s=r.failure.retry_after_s)
    if isinstance(decision, Retry):
        return Requeue(id=moved.id, attempt=moved.attempt, delay_s=decision.delay_s, busy=decision.busy)
    decisions.event(view.ctx, "not_retried", {"step": moved.step, "failure_class": r.failure.failure_class.value,
                                              "reason": decision.reason}, moved.id, moved.attempt)
    return None


def _ignore(store: Store, ignored: list[TaskResult], targets: dict[int, Target],
            views: dict[int, engine.RunView], decisions: engine.Decisions) -> list[Applied]:
    """Late or duplicate results: each an event saying what the interaction is now, and
    an attempt record (the state machine ignores it, but the work was done)."""
    if not ignored:
        return []
    now = store.interaction_states(sorted({r.interaction_id for r in ignored}))
    applied = []
    for r in ignored:
        state = now[r.interaction_id]
        ctx = views[targets[r.interaction_id].run_id].ctx
        log.info("late or duplicate result ignored: interaction %s attempt %s (it is %s at attempt %s)",
                 r.interaction_id, r.attempt, state.status, state.attempt)
        decisions.event(ctx, "result_ignored", {"status": state.status, "current_attempt": state.attempt},
                        r.interaction_id, r.attempt)
        decisions.attempts.append(_record(r, ctx.batch_id, "ignored"))
        applied.append(Applied(r, "ignored", {"run_id": ctx.run_id, "batch_id": ctx.batch_id}))
    return applied


def end_finished_runs(store: Store, ending: list[engine.RunView]) -> None:
    """End every run of `ending` (nothing pending or in flight any more), saying why."""
    if not ending:
        return
    run_ids = [v.ctx.run_id for v in ending]
    failed = defaultdict(list)
    problems = defaultdict(list)
    for row in store.failed_interactions(run_ids):
        failed[row.run_id].append(row)
    for row in store.problem_events(run_ids, engine.ENDING_EVENTS):
        problems[row.run_id].append(row)
    end_runs(store, [engine.run_ending(v, failed[v.ctx.run_id], problems[v.ctx.run_id]) for v in ending])
