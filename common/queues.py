"""Queue and task names: the only place they are spelled.

One queue per model, so a GPU host consumes exactly the models its server has; one
queue for scripts; one reports queue that only the orchestrator reads (results and
worker heartbeats: workers never touch Postgres).
"""

from __future__ import annotations

import re

REPORTS_QUEUE = "wavefarm.reports"
SCRIPT_QUEUE = "script"
AI_TASK = "wavefarm.ai"
SCRIPT_TASK = "wavefarm.script"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def model_queue(model: str) -> str:
    """`qwen2.5:7b` -> `ai.qwen2.5-7b`: readable in Flower and safe as an AMQP or Redis key."""
    return "ai." + _UNSAFE.sub("-", model)


def spellings(model: str) -> tuple[str, ...]:
    """The names a server may list `model` under: Ollama reads a name whose last part has
    no tag (`gemma3`, `hf.co/org/repo`) as `NAME:latest`."""
    return (model,) if ":" in model.rsplit("/", 1)[-1] else (model, f"{model}:latest")


def queue_names(model: str) -> set[str]:
    """The queues of a model as a server lists it: Ollama treats `gemma3` and
    `gemma3:latest` as one model, so a host serves both spellings."""
    names = {model_queue(model)}
    if model.endswith(":latest"):
        names.add(model_queue(model.removesuffix(":latest")))
    return names


def queue_for(kind: str, actor: str) -> str:
    return model_queue(actor) if kind == "ai" else SCRIPT_QUEUE


def task_name(kind: str) -> str:
    return AI_TASK if kind == "ai" else SCRIPT_TASK
