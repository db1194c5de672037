"""What the fake server's two APIs share: a parsed call, its usage, and the Dialect
each API implements.

The handler runs one pipeline for every completion call (model check, faults, slots,
latency, deterministic answer, truncation, book-keeping); a Dialect only reads the
request into a Call and shapes answers and errors the way its API does. That is what
makes a workflow behave the same on either API.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

DEFAULT_KEEP_ALIVE_S = 300.0  # Ollama's default: a model stays loaded 5 minutes after use
FOREVER = datetime(2318, 1, 1, tzinfo=timezone.utc)  # how Ollama shows keep_alive < 0
DEFAULT_NUM_CTX = 4096  # the server's context length when a call names none
# The options a model is loaded with (Ollama's api.Runner): a call that asks for other
# values than the resident copy's makes the server reload the model.
RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
Runner = tuple[tuple[str, Any], ...]  # (option, value) pairs in RUNNER_OPTIONS order: hashable, comparable
DEFAULT_RUNNER: Runner = (("num_ctx", DEFAULT_NUM_CTX),)


def now() -> datetime:
    return datetime.now(timezone.utc)


def timestamp(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def canonical(name: str) -> str:
    """Ollama's rule: a name without a tag means :latest."""
    return name if ":" in name else f"{name}:latest"


def messages_text(messages: list[dict[str, Any]]) -> str:
    """All the text a chat model reads: answers are a function of this, whichever API asked."""
    return "\n".join(m["content"] for m in messages if isinstance(m.get("content"), str))


def runner_options(options: dict[str, Any]) -> Runner:
    """The runner options a call's `options` ask for: num_ctx defaults to the server's
    (DEFAULT_NUM_CTX), the others are left out unless given (null counts as not given)."""
    given = {"num_ctx": DEFAULT_NUM_CTX, **{k: v for k, v in options.items() if k in RUNNER_OPTIONS and v is not None}}
    return tuple((k, given[k]) for k in RUNNER_OPTIONS if k in given)


class ApiError(Exception):
    """A request the server answers with an error status, shaped by the caller's Dialect."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass(frozen=True)
class Call:
    name: str                          # the model as the client spelled it: echoed back
    model: str                         # canonical name: the key for slots, faults and answers
    prompt: str
    fmt: str | dict[str, Any] | None   # "json" or a JSON schema: the answer is JSON
    max_tokens: int | None             # stop after this many tokens (finish reason "length")
    stream: bool
    keep_alive_s: float | None = DEFAULT_KEEP_ALIVE_S  # None: forever
    load_only: bool = False            # Ollama: an empty prompt only loads (or unloads) the model
    include_usage: bool = False        # OpenAI: stream_options.include_usage
    runner: Runner = DEFAULT_RUNNER    # Ollama: the runner options it asks for (OpenAI: none, the defaults)
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    total_s: float
    load_s: float
    prompt_s: float
    eval_s: float


class Dialect(Protocol):
    stream_type: str  # Content-Type of a streamed answer
    guarded: bool     # whether the server's api_key guards this API (vLLM's --api-key guards /v1 only)

    def parse(self, body: dict[str, Any]) -> Call:
        """The call a request body asks for; raises ApiError(400, ...) for a malformed one."""
        ...

    def model_missing(self, name: str) -> ApiError: ...

    def error(self, err: ApiError) -> dict[str, Any]: ...

    def loaded(self, call: Call, load_s: float) -> dict[str, Any]:
        """The answer to a load-only call."""
        ...

    def whole(self, call: Call, text: str, usage: Usage) -> dict[str, Any]: ...

    # A stream is begin, one chunk per token, end: each the payload of one HTTP chunk
    # (b"" writes nothing, since an empty HTTP chunk would end the body).
    def begin(self, call: Call) -> bytes: ...

    def chunk(self, call: Call, token: str) -> bytes: ...

    def end(self, call: Call, usage: Usage) -> bytes: ...
