"""The GPU worker: a Celery worker that runs AI tasks against the model server next to it.

One task, `wavefarm.ai`: validate the message, call the model, publish the result on
the reports queue, return (and only then is the message acknowledged). Failures the
model caused are results like any other; a server that cannot be reached is not the
task's failure: the message goes back to the broker and the breaker stops this worker
from taking more until the server answers again.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from celery.exceptions import Reject
from prometheus_client import Counter, Gauge, Histogram

from common.messages import AiTask, FailureClass, TaskResult
from common.queues import AI_TASK
from common.holds import hand_back, hand_back_if_held
from common.intake import admit
from common.reporting import publish_result
from common.retries import handed_back
from common.worker_runtime import WorkerRuntime
from gpu_worker.backends.base import ModelBackend
from gpu_worker.breaker import CircuitBreaker
from gpu_worker.discovery import ServerWatch
from gpu_worker.residency import Residency

log = logging.getLogger(__name__)

TASKS = Counter("wavefarm_worker_tasks_total", "AI tasks by model and outcome", ["model", "outcome"])
FAILURES = Counter("wavefarm_worker_failures_total", "Failed model calls by class", ["model", "failure_class"])
CALL_SECONDS = Histogram("wavefarm_model_call_seconds", "Model call latency", ["model"],
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
TOKENS = Counter("wavefarm_tokens_total", "Tokens by model and kind (prompt, completion)", ["model", "kind"])
IN_PROGRESS = Gauge("wavefarm_worker_in_progress", "Model calls in progress", ["model"])



class GpuWorker:
    def __init__(self, app: Celery, backend: ModelBackend, *, server: str, wanted: list[str] | None,
                 concurrency: int, name: str, probe_interval_s: float = 5.0,
                 residency: Residency | None = None) -> None:
        self.app = app
        self.backend = backend
        # Off unless given: a test double of a backend, or an OpenAI-compatible server,
        # has nothing to place.
        self.residency = residency or Residency(enabled=False, max_loaded=1, machine="", server=server)
        app.wavefarm_placement = self.residency.board
        # The pool has twice as many threads as the server has slots, and this gate lets
        # `concurrency` of them call the model: each slot has its next task already
        # here, so a slot never idles while a finished call publishes its result and
        # the broker sends the next message.
        self.pool_size = 2 * concurrency
        self._slots = threading.BoundedSemaphore(concurrency)
        self.breaker = CircuitBreaker(server)
        self.watch = ServerWatch(backend, self.breaker, wanted=wanted, interval_s=probe_interval_s,
                                 residency=self.residency)
        self.residency.board.on_change.append(self.watch.poke)  # what was placed elsewhere is unloaded at once
        self.runtime = WorkerRuntime(
            name=name, kind="ai", concurrency=concurrency, desired=self.watch.desired_queues,
            # The models this worker serves (with --models, those of the list the server
            # has): what placement may put on its host.
            describe=lambda: {"server": server, "models": self.watch.models(), "digests": self.watch.digests(),
                              "circuit": self.breaker.state, **self.residency.describe()},
        )
        app.task(name=AI_TASK)(self._task)

    def _task(self, payload: dict) -> None:
        task, skipped = admit(self.app, AiTask, payload, worker=self.runtime.name)
        if task is None:
            TASKS.labels(payload.get("model", "?") if isinstance(payload, dict) else "?", skipped).inc()
            return
        if not self.breaker.allow():
            TASKS.labels(task.model, "handed_back").inc()
            raise Reject("model server unavailable", requeue=True)
        result = self.execute(task)
        if result is None:
            return
        if result.failure is not None and handed_back(result.failure.failure_class):
            # "This host cannot serve the call", not "this call failed": the message goes
            # back to the queue for another host, the interaction keeps its attempts.
            self._host_problem(task, result)
        publish_result(self.app, result)

    def execute(self, task: AiTask) -> TaskResult | None:
        """The call, in a slot; None when the task is held (handed back unstarted)."""
        with self._slots:
            # Checked in the slot, right before the call: a task can wait at the gate
            # while its batch is paused.
            if hand_back_if_held(self.app, self.runtime.holds, task, worker=self.runtime.name):
                TASKS.labels(task.model, "held").inc()
                return None
            elsewhere = self.residency.elsewhere(task)
            if elsewhere is not None:
                # Prefetched before the model moved: the host it is on now runs it, at once.
                hand_back(self.app, task, worker=self.runtime.name, reason=elsewhere)
                TASKS.labels(task.model, "placed_elsewhere").inc()
                return None
            sent = self.residency.prepare(task)
            IN_PROGRESS.labels(task.model).inc()
            self.residency.started(task.model)
            t0 = time.perf_counter()
            try:
                result = self.backend.complete(sent)
            finally:
                IN_PROGRESS.labels(task.model).dec()
                if self.residency.ended(task.model):
                    self.watch.poke()  # its last call here ended: unload it now
        CALL_SECONDS.labels(task.model).observe(time.perf_counter() - t0)
        if sent.options != task.options:
            # The cache key keeps what the step asked; the attempt says what ran.
            result = result.model_copy(update={"metrics": {**result.metrics, "options": sent.options}})
        if result.failure is None:
            result = result.model_copy(update={"model_digest": self.watch.digest_of(task.model)})
            self.breaker.record_success()
            TASKS.labels(task.model, "completed").inc()
            TOKENS.labels(task.model, "prompt").inc(result.metrics.get("prompt_eval_count") or 0)
            TOKENS.labels(task.model, "completion").inc(result.metrics.get("eval_count") or 0)
        else:
            FAILURES.labels(task.model, result.failure.failure_class.value).inc()
            TASKS.labels(task.model, "failed").inc()
        log.info("interaction %s %s", task.interaction_id, "completed" if result.ok else result.failure.message,
                 extra={"interaction_id": task.interaction_id, "run_id": task.run_id, "batch_id": task.batch_id,
                        "step": task.step, "attempt": task.attempt, "model": task.model})
        return result

    def _host_problem(self, task: AiTask, result: TaskResult) -> None:
        if result.failure.failure_class is FailureClass.CONNECTION_ERROR:
            if self.breaker.record_failure():
                log.warning("model server unreachable %d times in a row: not taking work until it answers",
                            self.breaker.threshold)
        self.watch.poke()  # re-probe now: the model may be gone, the server may be down
        raise Reject(result.failure.message, requeue=True)
