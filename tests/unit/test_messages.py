"""What crosses the broker survives a rolling upgrade: a reader ignores fields it does
not know and takes messages of another version."""

import pytest

from common.messages import MESSAGE_VERSION, REPORT, AiTask, ResultReport, TaskResult


def test_a_report_from_a_newer_worker_is_read_not_dropped():
    body = ResultReport(result=TaskResult(interaction_id=7, attempt=2, output="hi")).model_dump(mode="json")
    body["v"] = MESSAGE_VERSION + 1
    body["shiny_new_field"] = {"x": 1}
    body["result"]["gpu_temperature_c"] = 71
    report = REPORT.validate_python(body)
    assert isinstance(report, ResultReport)
    assert (report.result.interaction_id, report.result.attempt, report.result.output) == (7, 2, "hi")


def test_messages_say_their_version_and_a_task_from_a_newer_orchestrator_runs():
    task = AiTask(interaction_id=1, attempt=1, run_id=1, batch_id=1, step="s", timeout_s=5, model="m", prompt="p")
    body = task.model_dump(mode="json")
    assert body["v"] == MESSAGE_VERSION
    body["priority_hint"] = "high"
    assert AiTask.model_validate(body).prompt == "p"


def test_a_result_report_that_cannot_be_read_fails_its_attempt_instead_of_waiting_for_the_deadline():
    from pydantic import ValidationError

    from common.messages import FailureClass
    from orchestrator.inbox import unreadable

    body = {"type": "result", "v": 9, "result": {"interaction_id": 5, "attempt": 2, "output": 42,
                                                 "worker": "gpu@box:11434"}}
    with pytest.raises(ValidationError) as caught:
        REPORT.validate_python(body)
    report = unreadable(body, caught.value)
    assert report.result.interaction_id == 5 and report.result.attempt == 2
    assert report.result.failure.failure_class == FailureClass.UNREADABLE
    assert "could not be read: result.output" in report.result.failure.message
    assert unreadable({"type": "result", "result": {"attempt": 1}}, caught.value) is None  # for nothing we know
