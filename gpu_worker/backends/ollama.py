"""The Ollama backend: one /api/chat call per task over a pooled requests.Session.

Non-streaming on purpose: a worker needs the whole answer before it can report, and
the final object is the one that carries the token counts and durations.
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from common.messages import AiTask, Failure, FailureClass, TaskResult, utcnow
from gpu_worker.backends.base import (
    BackendError,
    error_text,
    failed_result,
    failure_from_exception,
    failure_from_status,
    normalize_base_url,
    scrub,
    server_label,
    url_secrets,
)

CONNECT_TIMEOUT_S = 5.0   # a server that does not accept a connection in 5s is down, not busy
LIST_TIMEOUT_S = 10.0     # /api/tags reads a directory: it never needs a model's time
METRIC_KEYS = ("prompt_eval_count", "eval_count", "total_duration", "load_duration",
               "prompt_eval_duration", "eval_duration")
PREVIEW_CHARS = 200


class OllamaBackend:
    def __init__(self, base_url: str, *, pool_size: int = 8, worker: str = "") -> None:
        self.base_url = normalize_base_url(base_url)
        self.server = server_label(self.base_url)
        self.worker = worker
        self._secrets = url_secrets(self.base_url)
        self.session = requests.Session()
        # One pool per server, as large as the worker's concurrency, so parallel calls
        # reuse connections instead of opening and discarding one each. No transport
        # retries: retrying is the orchestrator's decision, made per failure class.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> OllamaBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def complete(self, task: AiTask) -> TaskResult:
        started_at = utcnow()
        t0 = time.monotonic()
        try:
            response = self.session.post(f"{self.base_url}/api/chat", json=self._payload(task),
                                         timeout=(CONNECT_TIMEOUT_S, task.timeout_s))
        except requests.RequestException as exc:
            failure = failure_from_exception(exc, model=task.model, server=self.server, timeout_s=task.timeout_s)
            return failed_result(task, failure, worker=self.worker, started_at=started_at,
                                 metrics={"wall_s": round(time.monotonic() - t0, 3)})
        metrics: dict[str, Any] = {"wall_s": round(time.monotonic() - t0, 3)}
        content, failure = self._read_answer(response, task, metrics)
        if failure is not None:
            return failed_result(task, failure, worker=self.worker, started_at=started_at, metrics=metrics)
        return TaskResult(interaction_id=task.interaction_id, attempt=task.attempt, output=content,
                          metrics=metrics, worker=self.worker, started_at=started_at, finished_at=utcnow())

    def list_models(self) -> list[str]:
        try:
            response = self.session.get(f"{self.base_url}/api/tags", timeout=(CONNECT_TIMEOUT_S, LIST_TIMEOUT_S))
        except requests.RequestException as exc:
            raise BackendError(failure_from_exception(exc, model=None, server=self.server)) from None
        if response.status_code >= 400:
            text = scrub(error_text(response), self._secrets)
            raise BackendError(failure_from_status(response.status_code, text, model=None, server=self.server))
        try:
            return [m.get("name") or m["model"] for m in response.json()["models"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BackendError(Failure(failure_class=FailureClass.SERVER_ERROR,
                                       message=f"{self.server} answered /api/tags with an unexpected body")) from None

    @staticmethod
    def _payload(task: AiTask) -> dict[str, Any]:
        messages = [{"role": "user", "content": task.prompt}]
        if task.system is not None:
            messages.insert(0, {"role": "system", "content": task.system})
        payload: dict[str, Any] = {"model": task.model, "messages": messages, "stream": False,
                                   "options": task.options}
        # Omitted rather than null: Ollama treats a present keep_alive/format as a request.
        if task.format is not None:
            payload["format"] = task.format
        if task.keep_alive is not None:
            payload["keep_alive"] = task.keep_alive
        return payload

    def _read_answer(self, response: requests.Response, task: AiTask,
                     metrics: dict[str, Any]) -> tuple[str | None, Failure | None]:
        """The answer's text, or why there is none; fills `metrics` from the body."""
        where = f"model {task.model} on {self.server}"
        if response.status_code >= 400:
            text = scrub(error_text(response), self._secrets)
            return None, failure_from_status(response.status_code, text, model=task.model, server=self.server)
        try:
            body = response.json()
        except ValueError:
            return None, Failure(failure_class=FailureClass.SERVER_ERROR,
                                 message=f"{where} answered HTTP {response.status_code} with a body that is not JSON")
        if not isinstance(body, dict):
            return None, Failure(failure_class=FailureClass.SERVER_ERROR, message=f"{where} answered an unexpected body")
        metrics.update({k: body[k] for k in METRIC_KEYS if k in body})
        if isinstance(body.get("error"), str):  # Ollama reports some failures in a 200 body
            return None, Failure(failure_class=FailureClass.SERVER_ERROR,
                                 message=f"{where} failed: {scrub(body['error'][:PREVIEW_CHARS], self._secrets)}")
        message = body.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            return None, Failure(failure_class=FailureClass.SERVER_ERROR, message=f"{where} answered without message.content")
        if task.format is not None:
            problem = _format_problem(content, task.format)
            if problem:
                return None, Failure(failure_class=FailureClass.INVALID_OUTPUT,
                                     message=f"{where} {problem}: {content[:PREVIEW_CHARS]!r}")
        return content, None


def _format_problem(content: str, fmt: str | dict[str, Any]) -> str | None:
    """Why `content` does not answer the requested format, or None when it does.

    Not a JSON Schema validator: Ollama's grammar already constrains the shape; this
    catches what still goes wrong (truncation at num_predict, a server that ignored
    the format, a missing required key) before it reaches a template or a script.
    """
    try:
        value = json.loads(content)
    except ValueError:
        return "did not answer JSON"
    if isinstance(fmt, dict) and fmt.get("type") == "object":
        if not isinstance(value, dict):
            return f"answered JSON {type(value).__name__}, not an object"
        missing = [k for k in fmt.get("required", []) if k not in value]
        if missing:
            return f"answered JSON without required {', '.join(missing)}"
    return None
