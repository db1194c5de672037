"""What every model backend offers, and the one place call problems become Failures.

Backends differ in their request and answer shapes, not in what a timeout or a 503
means: both classify through `failure_from_exception` and `failure_from_status`, so
the retry rule (common/retries.py) sees the same classes whichever server a host runs.

Messages name the model and the server as host:port only: a base URL may carry
user:password for an authenticating proxy, and it must never reach a message (nor
may an API key: whatever a server echoes back is scrubbed).

`HttpBackend` is the call cycle both HTTP backends share (pooling, timeouts, format
validation); ollama.py and openai.py only say how their API is shaped.
"""

from __future__ import annotations

import errno
import json
import math
import os
from abc import ABC, abstractmethod
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol, Self, runtime_checkable
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from common.errors import WavefarmError
from common import storable
from common.messages import AiTask, Failure, FailureClass, TaskResult, Usage, utcnow
from common.queues import spellings
from common.redact import scrub, secrets_of
from common.structured import InvalidOutput, parse_answer

ERROR_TEXT_LIMIT = 200  # enough to recognise the server's reason, short enough for a table cell
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # no step's answer is larger; beyond it a server is running away
READ_CHUNK = 64 * 1024
PREVIEW_CHARS = 200       # how much of a rejected answer a failure message shows
CONNECT_TIMEOUT_S = 5.0   # a server that does not accept a connection in 5s is down, not busy
LIST_TIMEOUT_S = 10.0     # listing models reads a directory: it never needs a model's time


@runtime_checkable
class ModelBackend(Protocol):
    def complete(self, task: AiTask) -> TaskResult:
        """One model call; never raises for call problems (the result carries the failure)."""
        ...

    def list_models(self) -> list[str]:
        """The models the server has; raises BackendError when it cannot be asked."""
        ...


def model_identities(backend: ModelBackend) -> dict[str, str]:
    """name -> identity of what the server has; a backend that lists only names (a test
    double) is taken as naming each model by itself."""
    identities = getattr(backend, "model_identities", None)
    return identities() if identities is not None else {m: m for m in backend.list_models()}


def identity_of(identities: dict[str, str], model: str) -> str | None:
    """The identity of `model` among a server's: `gemma3` is `gemma3:latest` to Ollama."""
    return next((identities[name] for name in spellings(model) if name in identities), None)


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


def body_error(body: Any) -> str | None:
    """The reason in an error body: Ollama's {"error": "..."} or OpenAI's {"error": {"message": ...}}."""
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict):
        err = err.get("message")
    return err[:ERROR_TEXT_LIMIT] if isinstance(err, str) else None


@dataclass(frozen=True)
class Reply:
    """A server's whole answer to one call, read within the call's time and size limits."""

    status_code: int
    headers: Any
    content: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.content)
        except RecursionError:
            raise ValueError("nested too deep") from None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


def error_text(response: requests.Response | Reply) -> str:
    """The server's own reason (see body_error), or the raw body when it has none."""
    try:
        body: Any = response.json()
    except ValueError:
        return storable.clean(response.text.strip()[:ERROR_TEXT_LIMIT])
    reason = body_error(body)
    return storable.clean(reason if reason is not None else str(body)[:ERROR_TEXT_LIMIT])


def _is_model_missing(text: str) -> bool:
    # Ollama: 'model "x" not found, try pulling it first'; vLLM/OpenAI: 'The model `x` does not exist.'
    low = text.lower()
    return "model" in low and ("not found" in low or "does not exist" in low)


def _where(model: str | None, server: str) -> str:
    return f"model {model} on {server}" if model else server


def failure_from_status(status: int, text: str, *, model: str | None, server: str,
                        retry_after: str | None = None) -> Failure:
    """Classify an HTTP error answer. `text` is the server's reason (see error_text),
    `retry_after` its Retry-After header."""
    where = _where(model, server)
    reason = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if status == 404 and _is_model_missing(text):
        return Failure(failure_class=FailureClass.MODEL_MISSING, message=f"{where} is not available ({reason})")
    if status == 408:
        return Failure(failure_class=FailureClass.TIMEOUT, message=f"{where} timed out ({reason})")
    # 429 and 503 say "busy right now, ask again later"; the other 5xx "broken right
    # now". Both are retried, unlike the other 4xx, which refuse this request as
    # written and would refuse it again.
    if status in (429, 503):
        return Failure(failure_class=FailureClass.SERVER_BUSY, message=f"{where} is busy ({reason})",
                       retry_after_s=retry_after_seconds(retry_after))
    if status >= 500:
        return Failure(failure_class=FailureClass.SERVER_ERROR, message=f"{where} failed ({reason})")
    return Failure(failure_class=FailureClass.BAD_REQUEST, message=f"{where} refused the request ({reason})")


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now; None when
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - utcnow()).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


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
                  metrics: dict[str, Any] | None = None, server: str | None = None) -> TaskResult:
    metrics = metrics or {}
    return TaskResult(interaction_id=task.interaction_id, attempt=task.attempt, failure=failure,
                      usage=usage_from_metrics(metrics), metrics=metrics, worker=worker, server=server,
                      started_at=started_at, finished_at=utcnow())


_NS = 1e-9


def usage_from_metrics(metrics: dict[str, Any]) -> Usage:
    """The call's usage from Ollama-named metrics (the OpenAI backend writes the same
    names): token counts, and durations from nanoseconds to seconds; the whole call's
    time is the server's own total where it gives one, else the time measured here."""

    def seconds(key: str) -> float | None:
        value = metrics.get(key)
        return value * _NS if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def count(key: str) -> int | None:
        value = metrics.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    total = seconds("total_duration")
    return Usage(prompt_tokens=count("prompt_eval_count"), output_tokens=count("eval_count"),
                 load_s=seconds("load_duration"), prompt_eval_s=seconds("prompt_eval_duration"),
                 eval_s=seconds("eval_duration"), call_s=total if total is not None else metrics.get("wall_s"))


def pooled_session(pool_size: int, base_url: str) -> requests.Session:
    """One pool per server, as large as the worker's concurrency, so parallel calls reuse
    connections instead of opening and discarding one each. No transport retries:
    retrying is the orchestrator's decision, made per failure class.

    The environment (HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE) is read once, here,
    for the one server this session talks to: requests would otherwise look it up, and
    look for a ~/.netrc, on every call (4% of a GPU worker's CPU at zero latency).
    """
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.proxies = requests.utils.get_environ_proxies(base_url)
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    session.trust_env = False
    return session


@dataclass(frozen=True)
class Answer:
    """A model's text as a backend read it from the server's body."""

    content: str
    truncated: bool = False  # the server stopped at its token limit, not at the model's end


class HttpBackend(ABC):
    """The call cycle both HTTP backends share; subclasses say only how their API is shaped.

    Timeouts, pooling, failure classification, format validation and scrubbing live
    here once, so a vLLM host and an Ollama host fail the same way for the same cause.
    """

    chat_path: ClassVar[str]    # POSTed once per task
    models_path: ClassVar[str]  # GET lists the served models

    def __init__(self, base_url: str, *, pool_size: int = 8, worker: str = "",
                 auth: AuthBase | None = None, secrets: list[str] | None = None) -> None:
        self.base_url = normalize_base_url(base_url)
        self.server = server_label(self.base_url)
        self.worker = worker
        self._secrets = secrets_of(self.base_url) + [s for s in secrets or [] if s]
        self.session = pooled_session(pool_size, self.base_url)
        self.session.auth = auth

    def __repr__(self) -> str:
        # Explicit, so no default or future repr can show the URL's password or a key.
        return f"{type(self).__name__}(server={self.server!r}, worker={self.worker!r})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what a subclass provides ------------------------------------------------------
    @abstractmethod
    def _payload(self, task: AiTask) -> dict[str, Any]:
        """The JSON body POSTed to chat_path for one task."""

    @abstractmethod
    def _read(self, body: dict[str, Any], task: AiTask, metrics: dict[str, Any], elapsed_s: float) -> Answer | Failure:
        """The answer in a 2xx JSON body, filling `metrics`; a Failure when it holds none."""

    @abstractmethod
    def _model_identities(self, body: Any) -> dict[str, str]:
        """name -> identity (digest) in a models listing; may raise KeyError/TypeError/...
        on an odd body."""

    # -- the shared cycle -----------------------------------------------------------------
    def _where(self, task: AiTask) -> str:
        return f"model {task.model} on {self.server}"

    def complete(self, task: AiTask) -> TaskResult:
        started_at = utcnow()
        t0 = time.monotonic()
        reply = self._exchange(task, t0)
        if isinstance(reply, Failure):
            return failed_result(task, reply, worker=self.worker, started_at=started_at,
                                 metrics={"wall_s": round(time.monotonic() - t0, 3)}, server=self.server)
        elapsed_s = time.monotonic() - t0
        metrics: dict[str, Any] = {"wall_s": round(elapsed_s, 3)}
        outcome = self._answer(reply, task, metrics, elapsed_s)
        if isinstance(outcome, Failure):
            return failed_result(task, outcome, worker=self.worker, started_at=started_at, metrics=metrics,
                                 server=self.server)
        return TaskResult(interaction_id=task.interaction_id, attempt=task.attempt, output=outcome,
                          usage=usage_from_metrics(metrics), metrics=metrics, worker=self.worker, server=self.server,
                          started_at=started_at, finished_at=utcnow())

    def _exchange(self, task: AiTask, t0: float) -> Reply | Failure:
        """POST the task and read the whole answer, within the step's timeout for the
        whole call (a server that trickles its answer a byte at a time is as late as one
        that sends nothing) and within MAX_ANSWER_BYTES."""
        deadline = t0 + task.timeout_s
        where = self._where(task)
        late = Failure(failure_class=FailureClass.TIMEOUT,
                       message=f"{where} did not finish its answer within {task.timeout_s:g}s")
        try:
            response = self.session.post(self.base_url + self.chat_path, json=self._payload(task),
                                         timeout=(CONNECT_TIMEOUT_S, task.timeout_s), stream=True)
        except requests.RequestException as exc:
            return failure_from_exception(exc, model=task.model, server=self.server, timeout_s=task.timeout_s)
        data = bytearray()
        try:
            # read1: whatever has arrived, so that the clock is looked at while a slow
            # body trickles in, not only once a whole chunk has.
            while chunk := response.raw.read1(READ_CHUNK, decode_content=True):
                data += chunk
                if len(data) > MAX_ANSWER_BYTES:
                    return Failure(failure_class=FailureClass.INVALID_OUTPUT,
                                   message=f"{where} answered more than {MAX_ANSWER_BYTES // 2**20} MiB: no step's "
                                           "answer is that large")
                if time.monotonic() > deadline:
                    return late
        except Exception as exc:  # urllib3's and requests' errors alike: the answer broke off
            if time.monotonic() > deadline:
                return late
            wrapped = exc if isinstance(exc, requests.RequestException) else requests.ConnectionError(exc)
            return failure_from_exception(wrapped, model=task.model, server=self.server, timeout_s=task.timeout_s)
        finally:
            response.close()
        return Reply(response.status_code, response.headers, bytes(data))

    def _answer(self, response: Reply, task: AiTask, metrics: dict[str, Any],
                elapsed_s: float) -> str | dict[str, Any] | list[Any] | Failure:
        where = self._where(task)
        if response.status_code >= 400:
            text = scrub(error_text(response), self._secrets)
            return failure_from_status(response.status_code, text, model=task.model, server=self.server,
                                       retry_after=response.headers.get("Retry-After"))
        try:
            body = response.json()
        except ValueError:
            return Failure(failure_class=FailureClass.SERVER_ERROR,
                           message=f"{where} answered HTTP {response.status_code} with a body that is not JSON")
        if not isinstance(body, dict):
            return Failure(failure_class=FailureClass.SERVER_ERROR, message=f"{where} answered an unexpected body")
        reason = body_error(body)
        if reason is not None:  # both APIs report some failures in a 200 body
            return Failure(failure_class=FailureClass.SERVER_ERROR, message=f"{where} failed: {scrub(reason, self._secrets)}")
        answer = self._read(body, task, metrics, elapsed_s)
        if isinstance(answer, Failure):
            return answer
        if task.format is None:
            found = storable.problem(answer.content)
            if found:
                return Failure(failure_class=FailureClass.INVALID_OUTPUT, message=f"{where} answered text that {found}")
            return answer.content
        try:
            return parse_answer(answer.content, task.format)
        except InvalidOutput as exc:
            cut = " (cut off at the token limit)" if answer.truncated else ""
            return Failure(failure_class=FailureClass.INVALID_OUTPUT,
                           message=f"{where} {exc}{cut}: {storable.clean(answer.content[:PREVIEW_CHARS])!r}")

    def list_models(self) -> list[str]:
        return list(self.model_identities())

    def _ask(self, method: str, path: str, *, model: str | None = None, **kwargs: Any) -> requests.Response:
        """A call that is not a task's (a listing, an unload); raises BackendError when it fails."""
        try:
            response = self.session.request(method, self.base_url + path, timeout=(CONNECT_TIMEOUT_S, LIST_TIMEOUT_S),
                                            **kwargs)
        except requests.RequestException as exc:
            raise BackendError(failure_from_exception(exc, model=model, server=self.server)) from None
        if response.status_code >= 400:
            text = scrub(error_text(response), self._secrets)
            raise BackendError(failure_from_status(response.status_code, text, model=model, server=self.server))
        return response

    def unexpected(self, path: str) -> BackendError:
        return BackendError(Failure(failure_class=FailureClass.SERVER_ERROR,
                                    message=f"{self.server} answered {path} with an unexpected body"))

    def model_identities(self) -> dict[str, str]:
        """The models the server has, each with what identifies that build of it (the
        cache's model identity); raises BackendError when it cannot be asked."""
        response = self._ask("GET", self.models_path)
        try:
            found = self._model_identities(response.json())
            if not all(isinstance(n, str) and isinstance(d, str) for n, d in found.items()):
                raise TypeError
            # A NUL cannot be stored (nor is it a model's name): such an entry is not a model.
            return {n: d[:200] for n, d in found.items() if "\0" not in n and "\0" not in d}
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            raise self.unexpected(self.models_path) from None
