"""The fake model server, driven by the official `ollama` client: if that client is
happy with it, our backend is tested against the API it will meet in production."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import pytest

from tests.model_server import ModelServer

MODELS = ["gemma3:1b", "qwen2.5:7b"]
GRADE = "Summary: {}. Does it hold up? Answer with one line of reasons, then [PASS] or [FAIL]."


@pytest.fixture
def srv():
    with ModelServer(models=MODELS, slots=2) as server:
        yield server


@pytest.fixture
def client(srv: ModelServer):
    with ollama.Client(host=srv.url) as c:
        yield c


def chat(client: ollama.Client, prompt: str, model: str = "gemma3:1b", **kw) -> ollama.ChatResponse:
    return client.chat(model=model, messages=[{"role": "user", "content": prompt}], **kw)


def test_list_shows_every_model_with_details(client):
    listed = client.list().models
    assert [m.model for m in listed] == MODELS
    for m in listed:
        assert len(m.digest) == 64 and m.size > 0 and m.modified_at is not None
        assert m.details.format == "gguf" and m.details.parameter_size
    assert client.show("qwen2.5:7b").details.family == "qwen2"


def test_chat_answers_deterministically_with_metrics(client):
    first = chat(client, "Summarise: a nurse in Leeds, night shifts")
    again = chat(client, "Summarise: a nurse in Leeds, night shifts")
    other = chat(client, "Summarise: a welder in Hull, day shifts")
    assert first.done and first.done_reason == "stop" and first.message.role == "assistant"
    assert first.message.content == again.message.content != other.message.content
    assert "Leeds" in first.message.content
    assert first.prompt_eval_count > 0 and first.eval_count > 0
    assert first.total_duration >= first.eval_duration > 0


def test_streamed_chunks_add_up_to_the_whole_answer(client):
    prompt = "Describe the role of a data engineer at a small bank in Leeds"
    whole = chat(client, prompt).message.content
    chunks = list(chat(client, prompt, stream=True))
    assert len(chunks) > 2 and [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.message.content for c in chunks) == whole
    assert chunks[-1].eval_count == len(chunks) - 1 and chunks[-1].total_duration > 0


def test_generate_streams_and_fills_a_schema(client):
    schema = {"type": "object", "required": ["skills", "years", "remote"],
              "properties": {"skills": {"type": "array", "items": {"type": "string"}},
                             "years": {"type": "integer"}, "remote": {"type": "boolean"},
                             "level": {"enum": ["junior", "senior"]}}}
    answer = json.loads(client.generate(model="qwen2.5:7b", prompt="Skills: Python, Kubernetes, Terraform",
                                        format=schema).response)
    assert answer["skills"][-3:] == ["python", "kubernetes", "terraform"]  # words of the prompt's end
    assert isinstance(answer["years"], int) and isinstance(answer["remote"], bool)
    assert answer["level"] in ("junior", "senior")
    streamed = "".join(c.response for c in client.generate(model="qwen2.5:7b", prompt="hi", format="json", stream=True))
    assert isinstance(json.loads(streamed), dict)


def test_markers_pick_exactly_one_stably_and_prefer_forces_it(client):
    picked = []
    for i in range(16):
        text = chat(client, GRADE.format(f"posting {i}")).message.content
        found = re.findall(r"\[[A-Z_]+\]", text)
        assert len(found) == 1, text
        assert chat(client, GRADE.format(f"posting {i}")).message.content == text
        picked.append(found[0])
    assert set(picked) == {"[PASS]", "[FAIL]"}
    for i in range(4):
        assert "[FAIL]" in chat(client, GRADE.format(f"posting {i}") + " prefer [FAIL]").message.content
    # One quoted marker is not a choice: no marker comes back, so no branch fires by accident.
    assert "[" not in chat(client, "This was graded [FAIL]. Rewrite the summary.").message.content


def test_ps_reflects_loaded_models_and_keep_alive(client):
    assert client.ps().models == []
    chat(client, "warm up", keep_alive="-1")
    chat(client, "warm up", model="qwen2.5:7b", keep_alive=0)  # 0 unloads right after the call
    running = client.ps().models
    assert [m.model for m in running] == ["gemma3:1b"]
    assert running[0].expires_at.year == 2318 and running[0].size_vram == running[0].size


def test_missing_model_is_404_like_ollama(client):
    with pytest.raises(ollama.ResponseError) as err:
        chat(client, "hi", model="llama3:70b")
    assert err.value.status_code == 404
    assert err.value.error == 'model "llama3:70b" not found, try pulling it first'


def test_slots_bound_concurrency_and_the_rest_queue():
    slots, extra, latency = 3, 2, 0.2
    with ModelServer(models=MODELS, slots=slots, latency=latency) as srv, ollama.Client(host=srv.url) as client:
        started = time.monotonic()
        with ThreadPoolExecutor(slots + extra) as pool:
            list(pool.map(lambda i: chat(client, f"request {i}"), range(slots + extra)))
        elapsed = time.monotonic() - started
        assert srv.max_concurrent["gemma3:1b"] == slots
        assert srv.served["gemma3:1b"] == slots + extra
        assert elapsed >= 2 * latency  # the queued two waited for a free slot


def test_injected_errors_are_per_model_and_switch_off(srv, client):
    srv.set_fault("gemma3:1b", "error")
    with pytest.raises(ollama.ResponseError) as err:
        chat(client, "hi")
    assert err.value.status_code == 500
    assert chat(client, "hi", model="qwen2.5:7b").done  # the other model is healthy
    srv.set_fault("gemma3:1b", "error", rate=0.5)
    outcomes = []
    for i in range(20):
        try:
            outcomes.append(chat(client, f"try {i}").done)
        except ollama.ResponseError:
            outcomes.append(False)
    assert 0 < outcomes.count(False) < 20
    srv.clear_faults()
    assert chat(client, "hi").done
    assert srv.faults["gemma3:1b"] == 1 + outcomes.count(False) and srv.faults["qwen2.5:7b"] == 0


def test_a_hang_holds_its_slot_until_the_client_gives_up(srv):
    srv.set_fault("gemma3:1b", "hang")
    with ollama.Client(host=srv.url, timeout=0.3) as impatient, pytest.raises(httpx.TimeoutException):
        chat(impatient, "hi")
    deadline = time.monotonic() + 1.0
    while srv.in_flight("gemma3:1b") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.in_flight("gemma3:1b") == 0  # the slot came back once the client left


def test_stop_returns_promptly_with_a_request_hanging():
    srv = ModelServer(models=MODELS).start()
    srv.set_fault("*", "hang")
    with ollama.Client(host=srv.url, timeout=5) as client, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(chat, client, "hi")
        time.sleep(0.1)
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 1.0
        with pytest.raises(httpx.HTTPError):  # the connection closes without an answer
            pending.result(timeout=2)
