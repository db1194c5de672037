"""What both kinds of worker do with a task message before they run it: read it, and
drop it when the orchestrator has given its attempt up. One piece for both, not code
repeated in each task function.

A message that cannot be read (a newer orchestrator's, a corrupted one) is not dropped
in silence, which would leave its interaction to wait for its deadline: when it says
which interaction and attempt it is for, that attempt's failure is reported at once.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from celery import Celery
from pydantic import ValidationError

from common.messages import Failure, FailureClass, TaskBase, TaskResult, utcnow
from common.reporting import publish_result

log = logging.getLogger(__name__)

T = TypeVar("T", bound=TaskBase)


def admit(app: Celery, kind: type[T], payload: Any, *, worker: str) -> tuple[T | None, str]:
    """(the task to run, "") or (None, why it is not run: "unreadable" or "expired")."""
    try:
        task = kind.model_validate(payload)
    except ValidationError as exc:
        _report_unreadable(app, payload, exc, worker)
        return None, "unreadable"
    if task.expired():
        # The orchestrator gave this attempt up and sent it again: running it now would
        # only make a result it ignores.
        log.info("dropping interaction %s attempt %s: past its deadline", task.interaction_id, task.attempt,
                 extra={"interaction_id": task.interaction_id, "attempt": task.attempt})
        return None, "expired"
    return task, ""


def _report_unreadable(app: Celery, payload: Any, exc: ValidationError, worker: str) -> None:
    ids = (payload.get("interaction_id"), payload.get("attempt")) if isinstance(payload, dict) else (None, None)
    first = exc.errors()[0]
    problem = f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in ids):
        log.error("dropping a task message that says not even which interaction it is for (%s)", problem)
        return
    log.error("interaction %s attempt %s: the task message cannot be read (%s): reported as failed",
              ids[0], ids[1], problem, extra={"interaction_id": ids[0], "attempt": ids[1]})
    publish_result(app, TaskResult(
        interaction_id=ids[0], attempt=ids[1], worker=worker, finished_at=utcnow(),
        failure=Failure(failure_class=FailureClass.UNREADABLE,
                        message=f"worker {worker} could not read the task message ({problem}): is it older than "
                                "the orchestrator?")))
