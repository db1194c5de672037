"""The OpenAI-compatible backend (vLLM, llama.cpp's server, ...): one /v1/chat/completions
call per task over a pooled requests.Session.

It reports the metric keys the Ollama backend does (prompt_eval_count, eval_count,
total_duration in ns, finish_reason), so the orchestrator does not care which server a
host runs. The call cycle (timeouts, failures, format validation, scrubbing) is
base.HttpBackend's.

A JSON schema has two spellings in response_format, and no one payload suits every
server: OpenAI and vLLM take `{"type": "json_schema", "json_schema": {...}}` (vLLM
reads `{"type": "json_object"}` as plain JSON mode and ignores a schema beside it);
llama-cpp-python's server (`python -m llama_cpp.server`) refuses that type (HTTP 500,
a validation error naming response_format) and constrains by a grammar built from
`{"type": "json_object", "schema": {...}}`, as llama.cpp's own llama-server did before
it learnt json_schema (ggml-org/llama.cpp#9527; it takes both now). The backend sends
the standard form first; a server that refuses it gets the other one, and the backend
keeps to whichever form the server last accepted.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

import requests
from requests.auth import AuthBase

from common.messages import AiTask, Failure, FailureClass, TaskResult
from gpu_worker.backends.base import PREVIEW_CHARS, Answer, HttpBackend, normalize_base_url

# Sampling options with the same name and meaning in Ollama's options and the OpenAI
# API. The rest (num_ctx, top_k, repeat_penalty, ...) are dropped: strict servers refuse
# unknown fields, and a workflow written for Ollama must still run on vLLM.
SHARED_OPTIONS = ("temperature", "top_p", "seed", "stop", "frequency_penalty", "presence_penalty")

SchemaForm = Literal["json_schema", "json_object"]
_OTHER_FORM: dict[str, SchemaForm] = {"json_schema": "json_object", "json_object": "json_schema"}

log = logging.getLogger(__name__)


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
        # How this server takes a JSON schema (see the module's docstring), learnt from its
        # first refusal; each call's own choice is thread-local, as pool threads share self.
        self.schema_form: SchemaForm = "json_schema"
        self._call = threading.local()

    def complete(self, task: AiTask) -> TaskResult:
        form = self.schema_form
        result = self._complete_as(task, form)
        if not isinstance(task.format, dict) or not refused_response_format(result):
            return result
        other = _OTHER_FORM[form]
        retried = self._complete_as(task, other)
        if not refused_response_format(retried):
            if self.schema_form != other:
                log.info("%s refused response_format type %s for a JSON schema: sending type %s from now on",
                         self.server, form, other)
            self.schema_form = other
        return retried

    def _complete_as(self, task: AiTask, form: SchemaForm) -> TaskResult:
        self._call.form = form
        try:
            return super().complete(task)
        finally:
            self._call.form = None

    def _payload(self, task: AiTask) -> dict[str, Any]:
        messages = [{"role": "user", "content": task.prompt}]
        if task.system is not None:
            messages.insert(0, {"role": "system", "content": task.system})
        payload: dict[str, Any] = {"model": task.model, "messages": messages, "stream": False}
        payload.update(map_options(task.options))
        if task.format is not None:
            form = getattr(self._call, "form", None) or self.schema_form
            payload["response_format"] = response_format(task.format, schema_form=form)
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

    def _model_identities(self, body: Any) -> dict[str, str]:
        # An OpenAI-compatible server says no more than the id of what it serves.
        return {m["id"]: m["id"] for m in body["data"]}


def map_options(options: dict[str, Any]) -> dict[str, Any]:
    """Ollama-style task options as OpenAI request fields."""
    out = {k: options[k] for k in SHARED_OPTIONS if options.get(k) is not None}
    num_predict = options.get("num_predict")
    # Ollama's -1 (no limit) and -2 (fill the context) have no OpenAI spelling: no limit it is.
    if isinstance(num_predict, int) and not isinstance(num_predict, bool) and num_predict > 0:
        out["max_tokens"] = num_predict
    return out


def response_format(fmt: str | dict[str, Any], *, schema_form: SchemaForm = "json_schema") -> dict[str, Any]:
    """AiTask.format as OpenAI's response_format: JSON mode, or structured output by schema,
    in the spelling `schema_form` names (see the module's docstring)."""
    if isinstance(fmt, dict):
        if schema_form == "json_object":
            return {"type": "json_object", "schema": fmt}
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt, "strict": True}}
    return {"type": "json_object"}


def refused_response_format(result: TaskResult) -> bool:
    """The server refused the request for its response_format (not for the prompt or the model)."""
    failure = result.failure
    return (failure is not None and failure.failure_class in (FailureClass.BAD_REQUEST, FailureClass.SERVER_ERROR)
            and "response_format" in failure.message)
