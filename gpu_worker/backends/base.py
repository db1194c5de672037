"""What every model backend offers, and the one place call problems become Failures.

Backends differ in their request and answer shapes, not in what a timeout or a 503
means: both classify through `failure_from_exception` and `failure_from_status`, so
the orchestrator's retry policy (common.messages.RETRYABLE) sees the same classes
whichever server a host runs.

Messages name the model and the server as host:port only: a base URL may carry
user:password for an authenticating proxy, and it must never reach a message.
"""

from __future__ import annotations

import errno
from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import requests

from common.errors import WavefarmError
from common.messages import AiTask, Failure, FailureClass, TaskResult, utcnow

ERROR_TEXT_LIMIT = 200  # enough to recognise the server's reason, short enough for a table cell


@runtime_checkable
class ModelBackend(Protocol):
    def complete(self, task: AiTask) -> TaskResult:
        """One model call; never raises for call problems (the result carries the failure)."""
        ...

    def list_models(self) -> list[str]:
        """The models the server has; raises BackendError when it cannot be asked."""
        ...


class BackendError(WavefarmError):
    """The model server could not answer a non-task call (such as listing models)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def normalize_base_url(url: str) -> str:
    """Accept OLLAMA_HOST-style values ("10.0.0.5:11434") as well as full URLs."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def server_label(url: str) -> str:
    """host:port of a base URL, without scheme, credentials or path: safe to show anyone."""
    parts = urlsplit(normalize_base_url(url))
    host = parts.hostname or "?"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a malformed port must not turn a message into a crash
        port = None
    port = port or {"http": 80, "https": 443}.get(parts.scheme)
    return f"{host}:{port}" if port else host


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that must be scrubbed from any text we did not write ourselves."""
    parts = urlsplit(normalize_base_url(url))
    return [s for s in (parts.password,) if s]


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def error_text(response: requests.Response) -> str:
    """The server's own reason: Ollama's {"error": "..."}, OpenAI's {"error": {"message": ...}}, or the raw body."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text.strip()[:ERROR_TEXT_LIMIT]
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            err = err.get("message")
        if isinstance(err, str):
            return err[:ERROR_TEXT_LIMIT]
    return str(body)[:ERROR_TEXT_LIMIT]


def _is_model_missing(text: str) -> bool:
    # Ollama: 'model "x" not found, try pulling it first'; vLLM/OpenAI: 'The model `x` does not exist.'
    low = text.lower()
    return "model" in low and ("not found" in low or "does not exist" in low)


def _where(model: str | None, server: str) -> str:
    return f"model {model} on {server}" if model else server


def failure_from_status(status: int, text: str, *, model: str | None, server: str) -> Failure:
    """Classify an HTTP error answer. `text` is the server's reason (see error_text)."""
    where = _where(model, server)
    reason = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if status == 404 and _is_model_missing(text):
        return Failure(failure_class=FailureClass.MODEL_MISSING, message=f"{where} is not available ({reason})")
    if status == 408:
        return Failure(failure_class=FailureClass.TIMEOUT, message=f"{where} timed out ({reason})")
    # 429 and 5xx say "busy or broken right now": retryable, unlike the other 4xx,
    # which refuse this request as written and would refuse it again.
    if status == 429 or status >= 500:
        return Failure(failure_class=FailureClass.SERVER_ERROR, message=f"{where} failed ({reason})")
    return Failure(failure_class=FailureClass.BAD_REQUEST, message=f"{where} refused the request ({reason})")


def _os_reason(exc: BaseException) -> str | None:
    """The innermost OS-level reason ("Connection refused"), not urllib3's object reprs."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno is not None:
            return cur.strerror or errno.errorcode.get(cur.errno, str(cur.errno))
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]  # requests wraps urllib3's error as an argument, not as a cause
        if nxt is None and hasattr(cur, "reason") and isinstance(cur.reason, BaseException):
            nxt = cur.reason
        cur = nxt
    return None


def failure_from_exception(exc: requests.RequestException, *, model: str | None, server: str,
                           timeout_s: float | None = None) -> Failure:
    """Classify a requests exception. The exception's own text is never used: it can carry a URL."""
    where = _where(model, server)
    reason = _os_reason(exc)
    suffix = f": {reason}" if reason else ""
    calling = f"cannot connect to {server}" + (f" (calling model {model})" if model else "")
    # ConnectTimeout is both a Timeout and a ConnectionError: the server never took
    # the call, so it is a connection problem, not a slow model.
    if isinstance(exc, requests.ConnectTimeout):
        return Failure(failure_class=FailureClass.CONNECTION_ERROR, message=f"{calling}: connect timed out")
    if isinstance(exc, requests.Timeout):
        limit = f" within {timeout_s:g}s" if timeout_s is not None else ""
        return Failure(failure_class=FailureClass.TIMEOUT, message=f"{where} did not answer{limit}")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema)):
        return Failure(failure_class=FailureClass.BAD_REQUEST, message=f"the model server address {server} is not usable")
    if isinstance(exc, requests.ConnectionError):
        return Failure(failure_class=FailureClass.CONNECTION_ERROR, message=f"{calling}{suffix}")
    # ChunkedEncodingError, ContentDecodingError and the rest: the answer was cut off.
    return Failure(failure_class=FailureClass.CONNECTION_ERROR,
                   message=f"{where} broke off its answer ({type(exc).__name__}{suffix})")


def failed_result(task: AiTask, failure: Failure, *, worker: str, started_at: datetime,
                  metrics: dict[str, Any] | None = None) -> TaskResult:
    return TaskResult(interaction_id=task.interaction_id, attempt=task.attempt, failure=failure,
                      metrics=metrics or {}, worker=worker, started_at=started_at, finished_at=utcnow())
