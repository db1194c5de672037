"""Shared by the model backend tests: a task and a port nobody listens on."""

from __future__ import annotations

from common.messages import AiTask
from tests.net import free_port

MODEL = "gemma3:1b"


def task(prompt: str = "Summarise: a nurse in Leeds, night shifts", **kw) -> AiTask:
    fields = dict(interaction_id=7, attempt=2, run_id=3, batch_id=1, step="extract", timeout_s=5.0,
                  model=MODEL, prompt=prompt)
    return AiTask(**{**fields, **kw})


def closed_port() -> int:
    return free_port()
