"""The local executor: runs pending interactions in this process.

It is not a second engine. It takes work exactly as the Celery dispatcher will
(claim: pending -> dispatched, then a task message), executes it with the workers'
own functions (the model backend, the script runner) in a thread pool instead of
on remote hosts, and hands each TaskResult to results.apply_results like the
results consumer will. Tests run the whole engine through it; `submit --local`
runs small batches on one machine with it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from common.holds import HoldBoard
from common.messages import AiTask, Failure, FailureClass, HandBack, Holds, Task, TaskResult, utcnow
from common.retries import RetryPolicy
from gpu_worker.backends.base import BackendError, ModelBackend, identity_of, model_identities
from orchestrator import cache
from orchestrator.catalog import WorkflowCache
from orchestrator.budget import Budget, over_budget
from orchestrator.db.rows import Claimed, DispatchRow
from orchestrator.db.store import Store
from orchestrator.holds import current, take_back
from orchestrator.reconnect import Reconnecting
from orchestrator.results import apply_results
from orchestrator.states import claim_for_dispatch, claim_pending
from orchestrator.sweeper import sweep
from orchestrator.tasks import task_or_failure
from script_worker.runner import run_script

log = logging.getLogger(__name__)


class LocalExecutor:
    def __init__(
        self,
        store: Store | Reconnecting,
        *,
        ai: ModelBackend | None,
        scripts_dir: Path | None,
        concurrency: int = 4,
        script_env: Mapping[str, str] | None = None,
        idle_poll_s: float = 0.5,
        policy: RetryPolicy | None = None,
    ) -> None:
        # A command gives a store that rides out a database restart; a caller that
        # manages its own connection gets the errors.
        self.db = store if isinstance(store, Reconnecting) else Reconnecting(store)
        self.policy = policy or RetryPolicy.from_settings()
        self.ai = ai
        self.scripts_dir = scripts_dir
        self.concurrency = concurrency
        self.script_env = dict(script_env or {})
        self.idle_poll_s = idle_poll_s
        self.cache = WorkflowCache()
        # What serve tells the workers, read here from the database: a task claimed and
        # queued for a thread when its batch was paused is handed back unstarted.
        self.holds = HoldBoard(first_word_s=0)
        self.holds.update(Holds())
        self._holds_read_at = float("-inf")
        # What the model server has, name -> digest, as a GPU worker's probe reports it:
        # the model identity of the cache (read once; a server that cannot say has none).
        self._identities: dict[str, str] | None = None

    def execute(self, task: Task) -> TaskResult | HandBack:
        """What a worker does with one task; never raises."""
        reason = self.holds.reason(task)
        if reason is not None:
            return HandBack(interaction_id=task.interaction_id, attempt=task.attempt, worker="local", reason=reason)
        try:
            if isinstance(task, AiTask):
                if self.ai is None:
                    return _failed(task, FailureClass.CONNECTION_ERROR, "no model server is configured for AI steps")
                result = self.ai.complete(task)
                digest = identity_of(self.identities(), task.model) if result.ok else None
                return result.model_copy(update={"model_digest": digest}) if digest else result
            if self.scripts_dir is None:
                return _failed(task, FailureClass.SCRIPT_NOT_FOUND, "no scripts directory is configured for script steps")
            return run_script(task, self.scripts_dir, env=self.script_env, worker="local")
        except Exception as exc:  # a bug in a backend must not stall the batch
            log.exception("executing interaction %s crashed", task.interaction_id)
            return _failed(task, FailureClass.SERVER_ERROR, f"the executor crashed: {exc!r}")

    def run(self, batch_id: int | None = None, on_tick: Callable[[Counter], None] | None = None) -> Counter:
        """Execute until nothing of `batch_id` (or of anything, if None) is pending or in flight."""
        outcomes: Counter = Counter()
        in_flight: set[Future] = set()
        # A little more in flight than threads keeps every thread busy between claims.
        window = self.concurrency * 2
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="wavefarm-local") as pool:
            while True:
                claimed = []
                self._read_holds()
                if len(in_flight) < window:
                    claimed = self.db.run(lambda db: self._claim(db, window - len(in_flight), batch_id))
                hits, claimed = self.db.run(lambda db: cache.answer(db, claimed, self._digests()))
                in_flight.update(_done(hit) for hit in hits)
                for row in claimed:
                    made = task_or_failure(row)
                    in_flight.add(pool.submit(self.execute, made) if not isinstance(made, TaskResult)
                                  else _done(made))
                if not in_flight:
                    outcomes.update(self.db.run(lambda db: sweep(db, self.cache, policy=self.policy)))
                    if self.db.run(lambda db: db.open_count(batch_id)) == 0:
                        break
                    # Work dispatched elsewhere (or by an executor that died), a retry
                    # waiting for its backoff, or a paused batch: wait for its result, its
                    # backoff, its deadline (the sweeper takes it back) or its resume.
                    # What an escalation holds does not count: it waits for a person.
                    time.sleep(self.idle_poll_s)
                    continue
                done, in_flight = wait(in_flight, timeout=1.0, return_when=FIRST_COMPLETED)
                if done:
                    results = [r for f in done if isinstance(r := f.result(), TaskResult)]
                    held = [r for f in done if isinstance(r := f.result(), HandBack)]
                    if held:
                        self.db.run(lambda db: self._take_back(db, held))
                        outcomes["handed_back"] += len(held)
                    applied = self.db.run(lambda db: apply_results(db, results, self.cache, self.policy))
                    outcomes.update(applied)
                    if applied["failed"] or applied["retried"]:
                        self._read_holds(every_s=0)  # a failure may have escalated its step: hold the rest now
                    if on_tick:
                        on_tick(outcomes)
        return outcomes

    def identities(self) -> dict[str, str]:
        if self._identities is None:
            try:
                self._identities = model_identities(self.ai) if self.ai is not None else {}
            except BackendError as exc:
                log.warning("cannot ask the model server what it has (%s): the cache is not used", exc)
                self._identities = {}
        return self._identities

    def _digests(self) -> dict[str, list[str]]:
        return {name: [digest] for name, digest in self.identities().items()}

    def _read_holds(self, every_s: float = 0.5) -> None:
        if time.monotonic() - self._holds_read_at >= every_s:
            self.holds.update(self.db.run(lambda db: self._current_holds(db)))
            self._holds_read_at = time.monotonic()

    @staticmethod
    def _current_holds(db: Store) -> Holds:
        with db.transaction():
            return current(db)

    @staticmethod
    def _take_back(db: Store, held: list[HandBack]) -> None:
        with db.transaction():
            take_back(db, held)

    @staticmethod
    def _claim(db: Store, limit: int, batch_id: int | None) -> list[Claimed]:
        with db.transaction():
            pending = [r for r in db.dispatch_view()
                       if r.what == "pending" and (batch_id is None or r.batch_id == batch_id)]
            if not any(r.limited for r in pending):
                return claim_pending(db, limit=limit, batch_id=batch_id)
            return _claim_within_budget(db, pending, limit)


def _claim_within_budget(db: Store, pending: list[DispatchRow], limit: int) -> list[Claimed]:
    """Up to `limit` of the pending work, actor by actor, no more of a batch with a credit
    limit than the credit left pays for (orchestrator/budget.py, as serve's dispatcher)."""
    budget = Budget.read(db, [(r.batch_id, r.kind, r.actor) for r in pending if r.limited])
    over_budget(db, budget.spent_all)
    claimed: list[Claimed] = []
    for r in pending:
        n = budget.allow(r.batch_id, r.kind, r.actor, limit - len(claimed))
        if n <= 0:
            continue
        got = claim_for_dispatch(db, kind=r.kind, actor=r.actor, batch_id=r.batch_id, limit=n)
        budget.spend(r.batch_id, r.kind, r.actor, len(got))
        claimed += got
        if len(claimed) >= limit:
            break
    return claimed


def _done(result: TaskResult) -> Future:
    """A result there is nothing to execute for, as the pool's futures hand results over."""
    future: Future = Future()
    future.set_result(result)
    return future


def _failed(task: Task, failure_class: FailureClass, message: str) -> TaskResult:
    return TaskResult(
        interaction_id=task.interaction_id,
        attempt=task.attempt,
        failure=Failure(failure_class=failure_class, message=message),
        worker="local",
        finished_at=utcnow(),
    )
