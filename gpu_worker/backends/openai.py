"""The OpenAI-compatible backend (vLLM, llama.cpp's server, ...): one /v1/chat/completions
call per task over a pooled requests.Session.

It reports the metric keys the Ollama backend does (prompt_eval_count, eval_count,
total_duration in ns, finish_reason), so the orchestrator does not care which server a
host runs. The call cycle (timeouts, failures, format validation, scrubbing) is
base.HttpBackend's.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.auth import AuthBase

from common.messages import AiTask, Failure, FailureClass
from gpu_worker.backends.base import PREVIEW_CHARS, Answer, HttpBackend, normalize_base_url

# Sampling options with the same name and meaning in Ollama's options and the OpenAI
# API. The rest (num_ctx, top_k, repeat_penalty, ...) are dropped: strict servers refuse
# unknown fields, and a workflow written for Ollama must still run on vLLM.
SHARED_OPTIONS = ("temperature", "top_p", "seed", "stop", "frequency_penalty", "presence_penalty")


class _Bearer(AuthBase):
    """The API key as an Authorization header, applied per request.

    As session.auth rather than a session header: requests does not re-apply it when a
    redirect leads to another host, and its repr never shows the key.
    """

    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._key}"
        return request

    def __repr__(self) -> str:
        return "_Bearer(***)"


def server_root(url: str) -> str:
    """The server's root: users copy base URLs like "http://gpu-3:8000/v1" from client configs."""
    url = normalize_base_url(url)
    return url.removesuffix("/v1")


class OpenAIBackend(HttpBackend):
    chat_path = "/v1/chat/completions"
    models_path = "/v1/models"

    def __init__(self, base_url: str, *, pool_size: int = 8, worker: str = "", api_key: str | None = None) -> None:
        # A key replaces any user:password in the URL as the Authorization header
        # (there is only one); both stay scrubbed from messages either way.
        super().__init__(server_root(base_url), pool_size=pool_size, worker=worker,
                         auth=_Bearer(api_key) if api_key else None, secrets=[api_key] if api_key else None)

    def _payload(self, task: AiTask) -> dict[str, Any]:
        messages = [{"role": "user", "content": task.prompt}]
        if task.system is not None:
            messages.insert(0, {"role": "system", "content": task.system})
        payload: dict[str, Any] = {"model": task.model, "messages": messages, "stream": False}
        payload.update(map_options(task.options))
        if task.format is not None:
            payload["response_format"] = response_format(task.format)
        return payload

    def _read(self, body: dict[str, Any], task: AiTask, metrics: dict[str, Any], elapsed_s: float) -> Answer | Failure:
        usage = body.get("usage")
        if isinstance(usage, dict):
            for theirs, ours in (("prompt_tokens", "prompt_eval_count"), ("completion_tokens", "eval_count")):
                if isinstance(usage.get(theirs), int):
                    metrics[ours] = usage[theirs]
        # The API reports no durations: the call's wall time stands in for Ollama's total_duration.
        metrics["total_duration"] = int(elapsed_s * 1e9)
        where = self._where(task)
        choices = body.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        if choice is None:
            return Failure(failure_class=FailureClass.INVALID_OUTPUT, message=f"{where} answered without choices")
        finish = choice.get("finish_reason")
        if isinstance(finish, str):
            metrics["finish_reason"] = finish
        message = choice.get("message")
        message = message if isinstance(message, dict) else {}
        content = message.get("content")
        if isinstance(content, str):
            return Answer(content, truncated=finish == "length")
        # No content is a model outcome, not a broken server: a refusal (structured
        # outputs), a tool call, or a reasoning model cut off before it answered.
        refusal = message.get("refusal")
        if isinstance(refusal, str) and refusal:
            return Failure(failure_class=FailureClass.INVALID_OUTPUT,
                           message=f"{where} refused: {refusal[:PREVIEW_CHARS]!r}")
        return Failure(failure_class=FailureClass.INVALID_OUTPUT,
                       message=f"{where} answered without message content (finish_reason {finish})")

    def _model_names(self, body: Any) -> list[str]:
        return [m["id"] for m in body["data"]]


def map_options(options: dict[str, Any]) -> dict[str, Any]:
    """Ollama-style task options as OpenAI request fields."""
    out = {k: options[k] for k in SHARED_OPTIONS if options.get(k) is not None}
    num_predict = options.get("num_predict")
    # Ollama's -1 (no limit) and -2 (fill the context) have no OpenAI spelling: no limit it is.
    if isinstance(num_predict, int) and not isinstance(num_predict, bool) and num_predict > 0:
        out["max_tokens"] = num_predict
    return out


def response_format(fmt: str | dict[str, Any]) -> dict[str, Any]:
    """AiTask.format as OpenAI's response_format: JSON mode, or structured output by schema."""
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt, "strict": True}}
    return {"type": "json_object"}
