"""The escalation rule as a pure function: which runs of failures hold a step."""

from common.retries import Escalation

RULE = Escalation(streak=10, window=20)
S, I, T = "script_error", "invalid_output", "timeout"


def test_ten_step_faults_of_one_class_in_a_row_escalate():
    assert RULE.judge([S] * 10) == (S, "10 attempts in a row failed with script_error")


def test_nine_are_not_enough_and_a_success_breaks_the_row():
    assert RULE.judge([S] * 9) is None
    assert RULE.judge([S] * 9 + [None] + [S] * 5) is None


def test_the_fleets_failures_never_escalate():
    assert RULE.judge([T] * 20) is None
    assert RULE.judge(["worker_lost"] * 20) is None
    assert RULE.judge(["server_busy"] * 20) is None


def test_more_than_half_of_the_window_escalates_even_with_successes_between():
    recent = [I, None] * 5 + [I] * 6 + [None] * 4  # 11 of 20
    assert RULE.judge(recent) == (I, "11 of the last 20 attempts failed with invalid_output")


def test_half_of_the_window_is_not_more_than_half():
    assert RULE.judge([I, None] * 10) is None


def test_two_classes_in_a_row_are_not_one_streak():
    assert RULE.judge([S, I] * 5) is None


def test_zero_turns_a_test_off():
    assert Escalation(streak=0, window=20).judge([S] * 10) is None
    assert Escalation(streak=0, window=0).judge([S] * 50) is None
    assert Escalation(streak=0, window=0).looks_back == 0
