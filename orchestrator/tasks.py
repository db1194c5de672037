"""Turn a claimed interaction row into the message a worker executes.

One function for the local executor and the Celery dispatcher alike, so what a
worker receives is the same whichever way it travels.
"""

from __future__ import annotations

from common.messages import AiTask, ScriptTask, Task


def task_from_row(row: dict) -> Task:
    common = {
        "interaction_id": row["id"],
        "attempt": row["attempt"],
        "run_id": row["run_id"],
        "batch_id": row["batch_id"],
        "step": row["step"],
        "timeout_s": row["timeout_s"],
        "deadline": row.get("deadline"),
    }
    data = row["input"]
    if row["kind"] == "ai":
        return AiTask(
            **common,
            model=row["actor"],
            prompt=data["prompt"],
            system=data.get("system"),
            options=data.get("options") or {},
            format=data.get("format"),
        )
    return ScriptTask(**common, script=row["actor"], input=data["input"])
