"""The retry rule: what is retried, after how long, and at what cost (common/retries.py)."""

import random

import pytest

from common.messages import FailureClass
from common.retries import BUSY, HANDED_BACK, RETRYABLE, STEP_FAULTS, Backoff, GiveUp, Retry, RetryPolicy, handed_back

POLICY = RetryPolicy(Backoff(base_s=1.0, max_s=60.0), busy_retries=3)


def test_the_backoff_grows_is_capped_never_zero_and_spread():
    backoff = Backoff(base_s=1.0, max_s=60.0)
    rng = random.Random(1)
    for retry, ceiling in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (50, 60)]:
        delays = [backoff.delay(retry, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (retry, min(delays), max(delays))
        assert max(delays) - min(delays) > ceiling / 4  # jitter: failures that came together part


def test_a_retryable_failure_is_retried_until_the_attempts_are_used():
    decision = POLICY.decide(FailureClass.TIMEOUT, attempt=1, max_attempts=3, busy_retries=0)
    assert isinstance(decision, Retry) and not decision.busy and 0.5 <= decision.delay_s <= 1
    last = POLICY.decide(FailureClass.TIMEOUT, attempt=3, max_attempts=3, busy_retries=0)
    assert last == GiveUp("no attempts left (3 of 3 used)")


@pytest.mark.parametrize("failure_class", sorted(STEP_FAULTS - RETRYABLE))
def test_a_deterministic_failure_is_not_retried_and_says_why(failure_class):
    decision = POLICY.decide(failure_class, attempt=1, max_attempts=3, busy_retries=0)
    assert isinstance(decision, GiveUp) and failure_class.value in decision.reason


def test_a_busy_server_is_waited_for_as_it_asks_without_using_a_retry():
    decision = POLICY.decide(FailureClass.SERVER_BUSY, attempt=3, max_attempts=3, busy_retries=0, retry_after_s=7)
    assert decision == Retry(7, busy=True)  # even on the last attempt: it is not the step's fault
    without = POLICY.decide(FailureClass.SERVER_BUSY, attempt=1, max_attempts=3, busy_retries=2)
    assert isinstance(without, Retry) and without.busy and 2 <= without.delay_s <= 4  # the backoff
    huge = POLICY.decide(FailureClass.SERVER_BUSY, attempt=1, max_attempts=3, busy_retries=0, retry_after_s=1e9)
    assert huge.delay_s == POLICY.max_retry_after_s
    assert POLICY.decide(FailureClass.SERVER_BUSY, attempt=1, max_attempts=3, busy_retries=3) == GiveUp(
        "the server was busy 4 times in a row")


def test_the_steps_own_retries_back_off_from_the_first_whatever_busy_answers_came_before():
    decision = POLICY.decide(FailureClass.TIMEOUT, attempt=4, max_attempts=6, busy_retries=3)
    assert 0.5 <= decision.delay_s <= 1


def test_the_classes_are_sorted_once():
    assert handed_back(FailureClass.CONNECTION_ERROR) and handed_back(FailureClass.MODEL_MISSING)
    assert not handed_back(FailureClass.SERVER_BUSY)  # a busy host keeps its circuit closed
    assert BUSY <= RETRYABLE and not BUSY & STEP_FAULTS and not HANDED_BACK & STEP_FAULTS
    assert FailureClass.WORKER_LOST not in STEP_FAULTS and FailureClass.TIMEOUT not in STEP_FAULTS
