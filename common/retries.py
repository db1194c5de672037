"""The retry rule, whole: which failures are tried again, after how long, at what cost,
and which a worker hands back instead of reporting.

The orchestrator asks `RetryPolicy.decide` about every failed attempt it records
(orchestrator/results.py); the GPU worker asks `handed_back` about every failed call
(gpu_worker/worker.py). The backoff is a pure function of the retry's number, so
tests can check it without a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from common.messages import FailureClass

# The host cannot serve the call (server down, model not there): the worker gives the
# message back to the queue for another host and its breaker counts it; the
# interaction keeps its attempts.
HANDED_BACK: frozenset[FailureClass] = frozenset({FailureClass.CONNECTION_ERROR, FailureClass.MODEL_MISSING})

# The server is busy, not broken (HTTP 429, 503): tried again after its Retry-After (or
# the backoff) without using one of the step's retries, without opening the circuit,
# and it is not the step's fault.
BUSY: frozenset[FailureClass] = frozenset({FailureClass.SERVER_BUSY})

# Failures a second attempt may cure. The others are deterministic: retrying them only
# burns GPU time and hides the real problem from the user.
RETRYABLE: frozenset[FailureClass] = frozenset({
    FailureClass.TIMEOUT,
    FailureClass.CONNECTION_ERROR,
    FailureClass.SERVER_ERROR,
    FailureClass.INVALID_OUTPUT,
    FailureClass.WORKER_LOST,
    FailureClass.UNREADABLE,
    *BUSY,
})

# Failures that are the step's own fault (its script, its prompt, its template, what it
# asks of the model), as opposed to the fleet's (timeouts, lost workers, busy servers).
STEP_FAULTS: frozenset[FailureClass] = frozenset({
    FailureClass.SCRIPT_ERROR,
    FailureClass.SCRIPT_NOT_FOUND,
    FailureClass.INVALID_OUTPUT,
    FailureClass.BAD_REQUEST,
    FailureClass.RENDER_ERROR,
})


def handed_back(failure_class: FailureClass) -> bool:
    """Whether a worker gives the task back rather than reporting this failure."""
    return failure_class in HANDED_BACK


@dataclass(frozen=True)
class Backoff:
    """Exponential, capped, with jitter: the n-th retry waits between half and all of
    min(max_s, base_s * 2**(n-1)). Never zero, so a retry never goes out the instant
    its failure came back; never more than max_s; spread, so a hundred interactions
    that failed together do not all come back in the same instant."""

    base_s: float = 1.0
    max_s: float = 60.0

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.max_s, self.base_s * 2 ** max(0, retry - 1))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Retry:
    delay_s: float
    busy: bool  # granted to a busy server: it uses none of the step's retries


@dataclass(frozen=True)
class GiveUp:
    reason: str


@dataclass(frozen=True)
class Escalation:
    """When a step's failures stop being retried one by one and the step is held for a
    person: `streak` step faults of one class in a row, or more than half of the last
    `window` attempts (0 turns either test off)."""

    streak: int = 10
    window: int = 20

    def judge(self, recent: list[str | None]) -> tuple[str, str] | None:
        """(failure class, reason) when the step must be held; `recent` holds the failure
        class of each of its latest finished attempts, newest first (None: completed)."""
        faults = [c if c in STEP_FAULTS else None for c in recent]
        if self.streak and len(faults) >= self.streak and faults[0] is not None \
                and all(c == faults[0] for c in faults[:self.streak]):
            return faults[0], f"{self.streak} attempts in a row failed with {faults[0]}"
        if self.window and len(faults) >= self.window:
            last = faults[:self.window]
            worst = max({c for c in last if c is not None}, key=last.count, default=None)
            if worst is not None and last.count(worst) * 2 > self.window:
                return worst, f"{last.count(worst)} of the last {self.window} attempts failed with {worst}"
        return None

    @property
    def looks_back(self) -> int:
        return max(self.streak, self.window)


@dataclass(frozen=True)
class RetryPolicy:
    backoff: Backoff = Backoff()
    busy_retries: int = 10       # a server busy this many times in a row for one interaction fails it
    max_retry_after_s: float = 600.0  # a Retry-After beyond this is taken as this
    escalation: Escalation = Escalation()

    @classmethod
    def from_settings(cls) -> RetryPolicy:
        from common.settings import get_settings

        s = get_settings()
        return cls(Backoff(s.retry_backoff_s, s.retry_backoff_max_s), busy_retries=s.busy_retries,
                   escalation=Escalation(s.escalation_streak, s.escalation_window))

    def decide(self, failure_class: FailureClass, *, attempt: int, max_attempts: int, busy_retries: int,
               retry_after_s: float | None = None, rng: random.Random | None = None) -> Retry | GiveUp:
        """What to do after attempt `attempt` of `max_attempts` failed with `failure_class`,
        the server having been busy `busy_retries` times for this interaction so far."""
        if failure_class in BUSY:
            if busy_retries >= self.busy_retries:
                return GiveUp(f"the server was busy {busy_retries + 1} times in a row")
            wait = self.backoff.delay(busy_retries + 1, rng)
            if retry_after_s is not None and retry_after_s > 0:
                wait = min(retry_after_s, self.max_retry_after_s)
            return Retry(wait, busy=True)
        if failure_class not in RETRYABLE:
            return GiveUp(f"{failure_class.value} is not retried: another attempt would fail the same way")
        if attempt >= max_attempts:
            return GiveUp(f"no attempts left ({attempt} of {max_attempts} used)")
        # The step's own retries count from 1, whatever busy answers came before.
        return Retry(self.backoff.delay(attempt - busy_retries, rng), busy=False)
