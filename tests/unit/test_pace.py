"""The rate and ETA a person reads in `status` and `--watch`, and the one line printed
where there is no terminal."""

from __future__ import annotations

from datetime import datetime, timezone

from orchestrator.overview import state_of
from decimal import Decimal

from orchestrator.pace import cost_to_go, duration, eta_s, rate_per_min
from orchestrator.progress import CostProgress, RunsProgress, Snapshot, StepProgress
from orchestrator.watch import line, verdict


def test_the_rate_is_per_minute_over_the_last_minute_or_the_batch_age_when_younger():
    assert rate_per_min(30, 60.0) == 30.0
    assert rate_per_min(10, 10.0) == 60.0       # a batch ten seconds old
    assert rate_per_min(0, 60.0) == 0.0


def test_the_eta_is_unknown_without_a_recent_end_and_zero_once_done():
    assert eta_s(120, 60.0) == 120.0
    assert eta_s(120, 0.0) is None
    assert eta_s(0, 0.0) == 0.0
    assert [duration(s) for s in (None, 42, 943, 7500)] == ["unknown", "42s", "15m 43s", "2h 05m"]


def test_a_batch_both_paused_and_escalated_is_paused_and_one_with_nothing_running_is_done():
    assert state_of(running=3, paused=True, escalated=True) == "paused"
    assert state_of(running=3, paused=False, escalated=True) == "escalated"
    assert state_of(running=0, paused=True, escalated=True) == "done"
    assert state_of(running=1, paused=False, escalated=False) == "running"


def snap(**changes) -> Snapshot:
    base = dict(batch_id=7, workflow="postings", workflow_version=2, at=datetime.now(timezone.utc),
                state="running", reason=None, stuck=False,
                progress=RunsProgress(ended=40, total=100, completed=35, failed=4, cancelled=1,
                                      outcomes={"completed": 30, "rejected": 5}),
                rate_per_min=12.0, eta_s=300.0,
                cost=CostProgress(spent=2.0, to_go=3.0, total=5.0, credit_limit=None),
                steps=[StepProgress(step="extract", actor="gemma3:1b", done=60, in_flight=8, waiting=32)],
                models=[], failures={"script_error": 4})
    return Snapshot(**{**base, **changes})


def test_the_plain_line_tells_the_whole_story():
    text = line(snap())
    assert text.startswith("batch 7 running: 40/100 runs ended (35 completed (5 rejected), 4 failed, 1 cancelled)")
    assert "12 runs/min over the last minute, ETA 5m 00s" in text
    assert "8 in flight, 32 waiting" in text and "failures so far: script_error 4" in text


def test_an_escalated_batch_that_cannot_move_says_what_to_do_and_fails():
    ok, message = verdict(snap(state="escalated", reason="step save: 10 script errors in a row", stuck=True))
    assert not ok and "orchestrator resume --batch 7" in message and "10 script errors" in message
    assert verdict(snap(state="done", progress=RunsProgress(ended=3, total=3, completed=3, failed=0, cancelled=0,
                                                            outcomes={})))[0]


def test_the_rest_costs_what_the_ended_runs_cost_each_unknown_before_the_first_and_nothing_once_done():
    assert cost_to_go(Decimal("2.0"), ended=40, runs=100) == Decimal("3.0")
    assert cost_to_go(Decimal("2.0"), ended=0, runs=100) is None
    assert cost_to_go(Decimal("2.0"), ended=100, runs=100) == 0
    assert cost_to_go(Decimal(0), ended=5, runs=10) == 0


def test_the_pace_line_has_the_spend_and_the_forecast_next_to_the_eta():
    text = line(snap())
    assert "ETA 5m 00s; spent 2, the rest ~3 at this rate (total ~5)" in text
    limited = line(snap(cost=CostProgress(spent=2.0, to_go=None, total=None, credit_limit=10.0)))
    assert "spent 2 of 10, the rest's cost unknown (no run ended yet)" in limited
