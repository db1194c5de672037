"""OllamaBackend against the fake model server: answers, metrics, and every failure
class a GPU worker can report, with credentials kept out of every message."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.messages import FailureClass
from common.retries import RETRYABLE
from gpu_worker.backends.base import BackendError, ModelBackend, failure_from_status, server_label
from gpu_worker.backends.ollama import OllamaBackend
from tests.model_server import ModelServer
from tests.unit.backends import MODEL, closed_port, task

SECRET = "s3cret-pw"


@pytest.fixture
def backend(srv: ModelServer):
    with OllamaBackend(srv.url, worker="gpu-1") as b:
        yield b


def test_success_carries_output_metrics_and_times(backend):
    assert isinstance(backend, ModelBackend)
    result = backend.complete(task(system="You are terse."))
    assert result.ok and result.interaction_id == 7 and result.attempt == 2 and result.worker == "gpu-1"
    assert "Leeds" in result.output and "terse" in result.output  # the system message was sent
    for key in ("prompt_eval_count", "eval_count", "total_duration", "load_duration",
                "prompt_eval_duration", "eval_duration"):
        assert key in result.metrics
    assert result.metrics["eval_count"] > 0
    assert result.started_at <= result.finished_at


def test_list_models(backend):
    assert backend.list_models() == [MODEL, "qwen2.5:7b"]


def test_keep_alive_and_options_reach_the_server(srv, backend):
    assert backend.complete(task(keep_alive="0", options={"num_predict": 2})).metrics["eval_count"] == 2
    assert srv.loaded() == []
    backend.complete(task(keep_alive="-1"))
    assert srv.loaded() == [MODEL]


def test_json_format_and_schema(backend):
    assert isinstance(backend.complete(task(format="json")).output, dict)  # stored as JSON, not text
    schema = {"type": "object", "properties": {"skills": {"type": "array", "items": {"type": "string"}}},
              "required": ["skills"]}
    result = backend.complete(task("Skills: Python, SQL and Terraform", format=schema))
    assert result.ok and "terraform" in result.output["skills"]


def test_schema_answer_comes_back_as_its_json_value(backend):
    schema = {"type": "object", "properties": {"verdict": {"enum": ["PASS", "FAIL"]},
                                               "score": {"type": "integer", "minimum": 1, "maximum": 10}},
              "required": ["verdict", "score"]}
    out = backend.complete(task("Grade this. prefer FAIL", format=schema)).output
    assert out["verdict"] == "FAIL" and 1 <= out["score"] <= 10


def test_answer_that_is_not_json_is_invalid_output(srv, backend):
    srv.set_fault(MODEL, "nonsense")
    result = backend.complete(task(format="json"))
    assert result.failure.failure_class == FailureClass.INVALID_OUTPUT
    assert "did not answer JSON" in result.failure.message and "Sure!" in result.failure.message
    assert backend.complete(task()).ok  # without a format, any text is an answer


def test_hang_is_a_timeout(srv, backend):
    srv.set_fault(MODEL, "hang")
    started = time.monotonic()
    result = backend.complete(task(timeout_s=0.3))
    assert time.monotonic() - started < 1.5
    assert result.failure.failure_class == FailureClass.TIMEOUT
    assert "within 0.3s" in result.failure.message


def test_closed_port_is_a_connection_error():
    result = OllamaBackend(f"http://127.0.0.1:{closed_port()}").complete(task())
    assert result.failure.failure_class == FailureClass.CONNECTION_ERROR
    assert "refused" in result.failure.message.lower()


@pytest.mark.parametrize("fault", ["error", "garbage"])
def test_server_failures_are_server_errors(srv, backend, fault):
    srv.set_fault(MODEL, fault)
    result = backend.complete(task())
    assert result.failure.failure_class == FailureClass.SERVER_ERROR
    assert MODEL in result.failure.message and srv.url.removeprefix("http://") in result.failure.message


def test_missing_model_is_not_retryable(backend):
    result = backend.complete(task(model="llama3:70b"))
    assert result.failure.failure_class == FailureClass.MODEL_MISSING
    assert result.failure.failure_class not in RETRYABLE
    assert "llama3:70b" in result.failure.message


def test_refused_request_is_a_bad_request(backend):
    result = backend.complete(task(keep_alive="banana"))
    assert result.failure.failure_class == FailureClass.BAD_REQUEST
    assert "invalid duration" in result.failure.message


@pytest.mark.parametrize(("status", "text", "expected"), [
    (404, 'model "x" not found, try pulling it first', FailureClass.MODEL_MISSING),
    (404, "The model `x` does not exist.", FailureClass.MODEL_MISSING),
    (404, "404 page not found", FailureClass.BAD_REQUEST),  # a wrong base URL, not a missing model
    (400, "invalid options", FailureClass.BAD_REQUEST),
    (408, "", FailureClass.TIMEOUT),
    (429, "too many requests", FailureClass.SERVER_BUSY),
    (503, "server busy, please try again", FailureClass.SERVER_BUSY),
    (500, "llama runner process has terminated", FailureClass.SERVER_ERROR),
    (502, "bad gateway", FailureClass.SERVER_ERROR),
])
def test_status_classification(status, text, expected):
    assert failure_from_status(status, text, model="x", server="h:1").failure_class == expected


def test_a_busy_server_is_its_own_class_with_its_retry_after(srv, backend):
    srv.set_fault(MODEL, "busy")
    result = backend.complete(task())
    assert result.failure.failure_class == FailureClass.SERVER_BUSY
    assert "busy" in result.failure.message and result.failure.retry_after_s is None  # Ollama sends none


@pytest.mark.parametrize(("header", "seconds"), [
    ("7", 7.0), ("0.5", 0.5), ("-3", 0.0), ("soon", None), ("", None), ("nan", None), ("inf", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: now
])
def test_retry_after_is_read_as_seconds_or_a_date(header, seconds):
    failure = failure_from_status(429, "slow down", model="x", server="h:1", retry_after=header)
    assert failure.retry_after_s == seconds


def test_usage_is_reported_in_seconds_and_tokens(backend):
    result = backend.complete(task())
    u = result.usage
    assert u.prompt_tokens > 0 and u.output_tokens > 0
    assert u.call_s is not None and 0 <= u.call_s < 60  # nanoseconds became seconds
    assert result.server == backend.server


def test_credentials_never_reach_a_message(srv):
    port = srv.port
    with OllamaBackend(f"http://user:{SECRET}@127.0.0.1:{port}") as b:
        assert b.server == f"127.0.0.1:{port}"
        assert b.complete(task()).ok
        messages = [b.complete(task(model="nope:1")).failure.message]
        srv.set_fault(MODEL, "error")
        messages.append(b.complete(task()).failure.message)
        srv.set_fault(MODEL, "hang")
        messages.append(b.complete(task(timeout_s=0.2)).failure.message)
    closed = OllamaBackend(f"http://user:{SECRET}@127.0.0.1:{closed_port()}")
    messages.append(closed.complete(task()).failure.message)
    with pytest.raises(BackendError) as err:
        closed.list_models()
    messages.append(str(err.value))
    assert all(SECRET not in m and "user:" not in m for m in messages), messages


def test_server_label_forms():
    assert server_label("http://u:p@gpu-3.lan:11434/") == "gpu-3.lan:11434"
    assert server_label("10.0.0.5:11434") == "10.0.0.5:11434"  # OLLAMA_HOST style, no scheme
    assert server_label("https://ollama.example.org") == "ollama.example.org:443"


def test_pool_serves_parallel_calls(srv):
    with ModelServer(models=[MODEL], slots=4, latency=0.15) as slow, OllamaBackend(slow.url, pool_size=4) as b:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda i: b.complete(task(f"posting {i}")), range(8)))
    assert all(r.ok for r in results)
    assert slow.max_concurrent[MODEL] == 4


def test_the_proxy_settings_of_the_environment_are_read_once_for_the_server(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert OllamaBackend("http://gpu-7:11434").session.proxies.get("http") == "http://proxy.example:3128"
    monkeypatch.setenv("NO_PROXY", "gpu-7")
    assert OllamaBackend("http://gpu-7:11434").session.proxies == {}
