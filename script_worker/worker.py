"""The script worker: a Celery worker that runs script actors on a CPU host.

One task, `wavefarm.script`: run SCRIPTS_DIR/<script> by the contract (runner.py),
publish the result on the reports queue, return; the message is acknowledged only
then. A script's failure is a result like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from celery import Celery
from prometheus_client import Counter, Histogram

from common.messages import ScriptTask
from common.queues import SCRIPT_QUEUE, SCRIPT_TASK
from common.holds import hand_back_if_held
from common.intake import admit
from common.reporting import publish_result
from common.worker_runtime import WorkerRuntime
from script_worker.runner import run_script

log = logging.getLogger(__name__)

TASKS = Counter("wavefarm_script_tasks_total", "Script runs by script and outcome", ["script", "outcome"])
FAILURES = Counter("wavefarm_script_failures_total", "Failed script runs by class", ["script", "failure_class"])
RUN_SECONDS = Histogram("wavefarm_script_seconds", "Script run time", ["script"],
                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))


class ScriptWorker:
    def __init__(self, app: Celery, scripts_dir: Path, *, concurrency: int, name: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.scripts_dir = scripts_dir
        self.env = dict(env or {})
        self.name = name
        self.runtime = WorkerRuntime(name=name, kind="script", concurrency=concurrency,
                                     desired=lambda: {SCRIPT_QUEUE}, describe=dict)
        app.task(name=SCRIPT_TASK)(self._task)

    def _task(self, payload: dict) -> None:
        task, skipped = admit(self.app, ScriptTask, payload, worker=self.name)
        if task is None:
            TASKS.labels(payload.get("script", "?") if isinstance(payload, dict) else "?", skipped).inc()
            return
        if hand_back_if_held(self.app, self.runtime.holds, task, worker=self.name):
            TASKS.labels(task.script, "held").inc()
            return
        result = run_script(task, self.scripts_dir, env=self.env, worker=self.name)
        if result.failure is None:
            TASKS.labels(task.script, "completed").inc()
        else:
            TASKS.labels(task.script, "failed").inc()
            FAILURES.labels(task.script, result.failure.failure_class.value).inc()
        if result.started_at and result.finished_at:
            RUN_SECONDS.labels(task.script).observe((result.finished_at - result.started_at).total_seconds())
        log.info("interaction %s %s", task.interaction_id, "completed" if result.ok else result.failure.message,
                 extra={"interaction_id": task.interaction_id, "run_id": task.run_id, "batch_id": task.batch_id,
                        "step": task.step, "attempt": task.attempt})
        publish_result(self.app, result)
