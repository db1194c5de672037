"""Turn a claimed interaction into the message a worker executes.

One function for the local executor and the Celery dispatcher alike, so what a
worker receives is the same whichever way it travels.
"""

from __future__ import annotations

from common.messages import AiTask, ScriptTask, Task
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
