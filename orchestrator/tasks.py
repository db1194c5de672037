"""Turn a claimed interaction into the message a worker executes.

One function for the local executor and the Celery dispatcher alike, so what a
worker receives is the same whichever way it travels.
"""

from __future__ import annotations

from common import storable
from common.messages import AiTask, Failure, FailureClass, ScriptTask, Task, TaskResult, utcnow
from orchestrator.db.rows import Claimed


def task_from_claim(claim: Claimed) -> Task:
    common = {
        "interaction_id": claim.id,
        "attempt": claim.attempt,
        "run_id": claim.run_id,
        "batch_id": claim.batch_id,
        "step": claim.step,
        "timeout_s": claim.timeout_s,
        "deadline": claim.deadline,
    }
    data = claim.input
    if claim.kind == "ai":
        return AiTask(
            **common,
            model=claim.actor,
            prompt=data["prompt"],
            system=data.get("system"),
            options=data.get("options") or {},
            format=data.get("format"),
        )
    return ScriptTask(**common, script=claim.actor, input=data["input"])


def task_or_failure(claim: Claimed) -> Task | TaskResult:
    """The task of a claim, or, when none can be made of it (a row stored before a rule
    that would have refused it), its attempt's failure saying why: the interaction fails
    alone, the rest of the turn goes on."""
    try:
        return task_from_claim(claim)
    except Exception as exc:  # a KeyError of a row's input, a value the message refuses, ...
        reason = storable.clean(f"{type(exc).__name__}: {exc}"[:300])
        return TaskResult(interaction_id=claim.id, attempt=claim.attempt, worker="orchestrator",
                          finished_at=utcnow(),
                          failure=Failure(failure_class=FailureClass.UNDELIVERABLE,
                                          message=f"no task message can be made of it: {reason}"))
