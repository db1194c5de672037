"""What crosses the broker: the only definition of task and result payloads.

The orchestrator renders everything before a task leaves it: a worker executes,
it never builds prompts or reads the database.

Versioned for rolling upgrades: every message carries the version of the code that
wrote it (`v`), and a reader ignores fields it does not know, so a newer worker's
report still reaches an older orchestrator (and is applied) instead of being
dropped while its interaction waits for the deadline. A change that an older reader
cannot safely ignore needs a new message, not a new field.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class FailureClass(StrEnum):
    """Why an interaction failed; decides whether a retry can help."""

    TIMEOUT = "timeout"                  # the model or script took longer than the step allows
    CONNECTION_ERROR = "connection_error"  # the model server refused or dropped the connection
    SERVER_ERROR = "server_error"        # the model server answered 5xx
    MODEL_MISSING = "model_missing"      # the server does not have the model
    BAD_REQUEST = "bad_request"          # the server refused the request (4xx other than missing)
    INVALID_OUTPUT = "invalid_output"    # the answer is not what the step asked for (e.g. not JSON)
    SCRIPT_ERROR = "script_error"        # the script exited non-zero
    SCRIPT_NOT_FOUND = "script_not_found"  # no such file in the scripts directory, or it escapes it
    RENDER_ERROR = "render_error"        # the step's template could not be rendered for this run
    WORKER_LOST = "worker_lost"          # no result before the deadline (lost message, dead worker)
    SERVER_BUSY = "server_busy"          # the model server said it is busy (HTTP 429 or 503)
    UNREADABLE = "unreadable_report"     # the worker's report (or task message) could not be read
    UNDELIVERABLE = "undeliverable"      # no task message could be made of the interaction


# What each class means for retries: common/retries.py, the one place of the retry rule.

# The version of the messages this code writes; readers accept others (see above).
MESSAGE_VERSION = 2


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TaskBase(_Message):
    v: int = MESSAGE_VERSION
    interaction_id: int
    attempt: int = Field(ge=1)
    run_id: int
    batch_id: int
    step: str
    timeout_s: float = Field(gt=0)
    # After this the orchestrator has given the attempt up (the sweeper re-dispatches
    # it): a worker that receives the message later drops it instead of running it.
    deadline: datetime | None = None

    def expired(self) -> bool:
        return self.deadline is not None and utcnow() > self.deadline


class AiTask(TaskBase):
    """One model call, prompt already rendered."""

    kind: Literal["ai"] = "ai"
    model: str
    prompt: str
    system: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # temperature, num_ctx, seed, ...
    format: Literal["json"] | dict[str, Any] | None = None  # JSON mode or a JSON schema
    keep_alive: str | None = None


class ScriptTask(TaskBase):
    """One script run: `script` is a path relative to the worker's scripts directory."""

    kind: Literal["script"] = "script"
    script: str
    input: dict[str, Any]


Task = AiTask | ScriptTask


class Failure(_Message):
    failure_class: FailureClass
    message: str
    exit_code: int | None = None
    stderr_tail: str | None = None
    retry_after_s: float | None = None  # what a busy server asked for (Retry-After)


class Usage(_Message):
    """What one call used, for accounting: tokens, and where its time went. Durations in
    seconds; None where the server does not say (an OpenAI-compatible server gives no
    load or eval times)."""

    prompt_tokens: int | None = None
    output_tokens: int | None = None
    load_s: float | None = None
    prompt_eval_s: float | None = None
    eval_s: float | None = None
    call_s: float | None = None  # the whole call: the server's own total where it gives one, else measured


class TaskResult(_Message):
    """What a worker sends back for one attempt of one interaction.

    `output` is text for AI steps, the JSON value (object or array) for AI steps with a
    `format`, and a JSON object for script steps.
    Exactly one of `output` and `failure` is set.
    """

    interaction_id: int
    attempt: int = Field(ge=1)
    output: str | dict[str, Any] | list[Any] | None = None
    failure: Failure | None = None
    usage: Usage | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)  # what else the call said: finish reason, exit code
    worker: str = ""
    server: str | None = None  # host:port of the model server that answered
    # The digest of the model that answered, as its server lists it (Ollama's /api/tags;
    # an OpenAI-compatible server's model id): the cache keys the answer by it.
    model_digest: str | None = None
    # Set by serve, never by a worker: the interaction whose cached answer this is.
    cached_from: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


class Resident(_Message):
    """A model loaded in a host's memory, as its server's /api/ps lists it."""

    model: str
    size: int | None = None
    expires_at: datetime | None = None
    context_length: int | None = None


class WorkerStatus(_Message):
    """A worker's heartbeat: what it consumes and how much it can take at once.

    The orchestrator's admission control sizes each queue's in-flight window from
    these (about twice the live consumers' concurrency), and `status` shows them.
    """

    name: str
    kind: Literal["ai", "script"]
    queues: list[str]               # consuming now (after the readiness gate and breaker)
    concurrency: int = Field(ge=1)
    server: str | None = None       # host:port of the model server, never a URL with credentials
    models: list[str] = Field(default_factory=list)  # what it serves: the server's (with --models, of those)
    digests: dict[str, str] = Field(default_factory=dict)  # model -> its digest there (the cache's model identity)
    circuit: Literal["closed", "open"] = "closed"
    stopping: bool = False
    heard_holds: bool = False       # whether serve's word on held work reached it (common/holds.py)
    # Residency (orchestrator/placement.py): the host is (machine, server); it holds at
    # most max_loaded models, these are loaded now, and serve placed these on it (None:
    # not placed by serve: residency off, an OpenAI-compatible server, or no word yet).
    machine: str | None = None
    max_loaded: int | None = Field(None, ge=1)
    resident: list[Resident] = Field(default_factory=list)
    placed: list[str] | None = None
    at: datetime = Field(default_factory=utcnow)


class Holds(_Message):
    """What no worker may start now, as serve last knew it: paused (or cancelled) batches,
    cancelled runs, escalated steps (batch, step). serve sends it to every worker when it
    changes and every few seconds; a worker checks a task against it right before the
    call, and hands back what it holds instead of starting it."""

    batches: list[int] = Field(default_factory=list)
    runs: list[int] = Field(default_factory=list)
    steps: list[tuple[int, str]] = Field(default_factory=list)
    # The database's time of the reading: two messages can cross (serve's periodic word
    # and a command's), and a worker keeps the newer reading.
    at: datetime | None = None


class HostPlacement(_Message):
    """The models one host consumes, and the context each is loaded with (None: the
    server's default), for as long as they stay placed there."""

    machine: str
    server: str
    models: list[str]
    num_ctx: dict[str, int] = Field(default_factory=dict)


class Placement(_Message):
    """serve's word on which host holds which models (orchestrator/placement.py), said to
    every GPU worker when it changes and every few seconds; a worker takes its host's
    entry (common/placement.py). `at` orders two readings, as for Holds."""

    hosts: list[HostPlacement] = Field(default_factory=list)
    at: datetime | None = None


class HandBack(_Message):
    """An attempt a worker received and did not start, because it is held: it goes back
    to pending without using the attempt."""

    interaction_id: int
    attempt: int = Field(ge=1)
    worker: str = ""
    reason: str = ""


class ResultReport(_Message):
    type: Literal["result"] = "result"
    v: int = MESSAGE_VERSION
    result: TaskResult


class WorkerReport(_Message):
    type: Literal["worker"] = "worker"
    v: int = MESSAGE_VERSION
    status: WorkerStatus


class HandBackReport(_Message):
    type: Literal["handed_back"] = "handed_back"
    v: int = MESSAGE_VERSION
    hand_back: HandBack


# Everything the orchestrator reads from its reports queue.
Report = Annotated[ResultReport | WorkerReport | HandBackReport, Field(discriminator="type")]
REPORT = TypeAdapter(Report)
