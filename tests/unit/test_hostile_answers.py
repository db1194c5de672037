"""A model server that answers what the farm cannot keep: a NUL, an unpaired surrogate,
NaN, JSON nested fifty thousand deep, twenty megabytes, a body trickled a byte at a
time. Each becomes a clear failure on the worker, in seconds, before it is published;
none reaches the orchestrator as a result it cannot store."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common import storable
from common.messages import FailureClass
from gpu_worker.backends.base import MAX_ANSWER_BYTES
from gpu_worker.backends.ollama import OllamaBackend
from gpu_worker.backends.openai import OpenAIBackend
from tests.unit.backends import task


@contextmanager
def answering(body: bytes, *, trickle_s: float = 0.0) -> Iterator[str]:
    """A server whose every chat call gets `body` (optionally one byte every trickle_s)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not trickle_s:
                self.wfile.write(body)
                return
            for i in range(len(body)):
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(trickle_s)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def ollama_answer(content: str) -> bytes:
    return json.dumps({"model": "gemma3:1b", "message": {"role": "assistant", "content": content}, "done": True,
                       "done_reason": "stop", "eval_count": 3}).encode()


def openai_answer(content: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}).encode()


DEEP = "[" * 50_000 + "]" * 50_000

HOSTILE = [
    ("a NUL in plain text", "text with a \x00 in it", None, "NUL character"),
    ("an unpaired surrogate", "broken \ud800 text", None, "unpaired UTF-16 surrogate"),
    ("NaN for a JSON step", '{"score": NaN}', "json", "NaN is not valid JSON"),
    ("a NUL inside a JSON value", '{"summary": "a\\u0000b"}', "json", "NUL character"),
    ("a surrogate inside a JSON key", '{"\\udc00": 1}', "json", "unpaired UTF-16 surrogate"),
    ("JSON nested fifty thousand deep", DEEP, "json", "nested deeper"),
    ("JSON nested a hundred deep", "[" * 100 + "]" * 100, "json", "nested deeper than 64 levels"),
]


@pytest.mark.parametrize("backend_cls", [OllamaBackend, OpenAIBackend], ids=["ollama", "openai"])
@pytest.mark.parametrize(("content", "fmt", "reason"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_an_answer_the_farm_cannot_keep_is_an_invalid_output_on_the_worker(backend_cls, content, fmt, reason):
    body = (ollama_answer if backend_cls is OllamaBackend else openai_answer)(content)
    with answering(body) as url, backend_cls(url, worker="gpu-1") as backend:
        result = backend.complete(task(format=fmt))
    assert result.failure is not None, result.output
    assert result.failure.failure_class == FailureClass.INVALID_OUTPUT
    assert reason in result.failure.message
    # What is published can be stored: the failure's own text holds no NUL or surrogate.
    assert storable.problem(result.failure.message) is None


def test_an_answer_larger_than_any_step_means_is_refused_without_reading_it_all():
    huge = ollama_answer("x" * (MAX_ANSWER_BYTES + 1024))
    with answering(huge) as url, OllamaBackend(url) as backend:
        result = backend.complete(task())
    assert result.failure.failure_class == FailureClass.INVALID_OUTPUT
    assert "more than 16 MiB" in result.failure.message


def test_a_trickled_answer_is_a_timeout_at_the_steps_timeout_not_a_lost_connection():
    with answering(ollama_answer("slow"), trickle_s=0.2) as url, OllamaBackend(url) as backend:
        result = backend.complete(task(timeout_s=1.0))  # the whole body would take 30 s at this pace
    assert result.failure.failure_class == FailureClass.TIMEOUT
    assert "did not finish its answer within 1s" in result.failure.message
