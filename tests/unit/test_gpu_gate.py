"""The GPU worker's readiness gate and circuit breaker, against a model server over
real HTTP: which queues a host consumes as its server gains, loses or drops models,
or stops answering."""

from __future__ import annotations

from gpu_worker.backends.ollama import OllamaBackend
from gpu_worker.breaker import CircuitBreaker
from common.queues import queue_names
from gpu_worker.discovery import ServerWatch
from tests.model_server import ModelServer
from tests.net import free_port


def watch(url: str, wanted: list[str] | None = None) -> ServerWatch:
    backend = OllamaBackend(url)
    return ServerWatch(backend, CircuitBreaker(url), wanted=wanted)


def test_the_breaker_opens_after_consecutive_connection_failures_only():
    b = CircuitBreaker("host:1", threshold=3)
    assert not b.record_failure() and not b.record_failure()
    b.record_success()  # a success in between starts the count again
    assert not b.record_failure() and not b.record_failure()
    assert b.allow()
    assert b.record_failure() and not b.allow() and b.state == "open"
    assert not b.record_failure()  # already open: it opened once
    assert b.reset() and b.allow() and not b.reset()


def test_auto_consumes_exactly_what_the_server_has_and_follows_it():
    with ModelServer(models=["gemma3:1b"]) as server:
        w = watch(server.url)
        assert w.desired_queues() == set()  # nothing before the first probe
        w.probe()
        assert w.desired_queues() == {"ai.gemma3-1b"}
        server.add_model("qwen2.5:7b")
        w.probe()
        assert w.desired_queues() == {"ai.gemma3-1b", "ai.qwen2.5-7b"}
        server.remove_model("gemma3:1b")
        w.probe()
        assert w.desired_queues() == {"ai.qwen2.5-7b"}


def test_a_listed_model_is_consumed_only_once_the_server_has_it():
    with ModelServer(models=["gemma3:1b"]) as server:
        w = watch(server.url, wanted=["gemma3:1b", "phi3"])
        w.probe()
        assert w.desired_queues() == {"ai.gemma3-1b"}
        server.add_model("phi3")  # pulled later: Ollama lists it as phi3:latest
        w.probe()
        assert w.desired_queues() == {"ai.gemma3-1b", "ai.phi3"}


def test_a_latest_tag_serves_both_spellings():
    assert queue_names("llama3:latest") == {"ai.llama3-latest", "ai.llama3"}
    assert queue_names("qwen2.5:7b") == {"ai.qwen2.5-7b"}


def test_a_server_that_stops_answering_opens_the_circuit_and_a_returning_one_closes_it():
    port = free_port()
    w = watch(f"http://127.0.0.1:{port}")
    w.probe()
    assert w.desired_queues() == set() and w.breaker.state == "open"
    with ModelServer(models=["gemma3:1b"], port=port):
        w.probe()
        assert w.breaker.state == "closed" and w.desired_queues() == {"ai.gemma3-1b"}
    w.probe()
    assert w.breaker.state == "open" and w.desired_queues() == set()
