"""What the GPU worker's task does with one message: run it and report, drop it when
its deadline passed, give it back when the server cannot be reached. Celery's
in-memory transport stands in for the broker; the model server is real HTTP."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import Reject
from kombu import Consumer

from common.celery_app import make_app, reports_queue
from common.messages import REPORT, Holds, utcnow
from gpu_worker.backends.ollama import OllamaBackend
from gpu_worker.worker import GpuWorker
from tests.model_server import ModelServer
from tests.net import free_port
from tests.unit.backends import task


def reports(app) -> list:
    got = []
    with app.connection_for_read() as conn:
        with Consumer(conn, queues=[reports_queue()], accept=["json"],
                      callbacks=[lambda body, msg: (got.append(REPORT.validate_python(body)), msg.ack())]):
            try:
                while True:
                    conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass
    return got


@pytest.fixture
def app():
    return make_app(f"memory://localhost/{free_port()}")


def worker(app, url: str, holds: Holds | None = None) -> GpuWorker:
    w = GpuWorker(app, OllamaBackend(url), server="test", wanted=None, concurrency=2, name="gpu-t")
    w.runtime.holds.update(holds or Holds())  # what serve says when the worker starts
    return w


def test_a_task_runs_and_its_result_goes_to_the_reports_queue(app):
    with ModelServer(models=["gemma3:1b"]) as server:
        worker(app, server.url)._task(task().model_dump(mode="json"))
    (report,) = reports(app)
    assert report.result.ok and report.result.interaction_id == 7 and "Leeds" in report.result.output


def test_a_task_past_its_deadline_is_dropped_unrun(app):
    with ModelServer(models=["gemma3:1b"]) as server:
        worker(app, server.url)._task(task(deadline=utcnow() - timedelta(seconds=1)).model_dump(mode="json"))
        assert sum(server.requests.values()) == 0
    assert reports(app) == []


def test_an_unreachable_server_gives_the_message_back_and_opens_the_breaker(app):
    w = worker(app, f"http://127.0.0.1:{free_port()}")
    for _ in range(w.breaker.threshold):
        with pytest.raises(Reject) as info:
            w._task(task().model_dump(mode="json"))
        assert info.value.requeue
    assert w.breaker.state == "open"
    with pytest.raises(Reject):  # open: not even tried
        w._task(task().model_dump(mode="json"))
    assert reports(app) == []  # no failure reported: the interaction keeps its attempts


def test_a_task_message_it_cannot_read_is_reported_failed_at_once_not_dropped(app):
    body = task().model_dump(mode="json")
    body["timeout_s"] = "soon"  # what an orchestrator of another version might send
    with ModelServer(models=["gemma3:1b"]) as server:
        worker(app, server.url)._task(body)
        assert sum(server.requests.values()) == 0
    (report,) = reports(app)
    assert (report.result.interaction_id, report.result.attempt) == (7, 2)
    assert report.result.failure.failure_class == "unreadable_report"
    assert "could not read the task message (timeout_s" in report.result.failure.message
    worker(app, "http://127.0.0.1:1")._task({"what": "is this"})  # not even whose: logged, dropped
    assert reports(app) == []


@pytest.mark.parametrize("holds", [Holds(batches=[3]), Holds(runs=[5]), Holds(steps=[(3, "summarise")])],
                         ids=["batch paused", "run cancelled", "step escalated"])
def test_a_held_task_is_handed_back_unstarted(app, holds):
    with ModelServer(models=["gemma3:1b"]) as server:
        worker(app, server.url, holds)._task(task(batch_id=3, run_id=5, step="summarise").model_dump(mode="json"))
        assert sum(server.requests.values()) == 0  # the model was never called
    (report,) = reports(app)
    assert (report.hand_back.interaction_id, report.hand_back.attempt) == (7, 2)
    assert report.hand_back.worker == "gpu-t" and report.hand_back.reason


def test_a_hold_on_another_batch_does_not_stop_the_call(app):
    with ModelServer(models=["gemma3:1b"]) as server:
        worker(app, server.url, Holds(batches=[4], steps=[(3, "other")]))._task(
            task(batch_id=3, step="summarise").model_dump(mode="json"))
        assert sum(server.requests.values()) == 1
    (report,) = reports(app)
    assert report.result.ok
