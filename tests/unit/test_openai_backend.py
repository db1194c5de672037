"""OpenAIBackend against the fake model server's /v1 API: answers, metrics, every failure
class a GPU worker can report, credentials kept out of every message, and the same
answers as the Ollama API for the same prompt."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from common.messages import FailureClass
from common.retries import RETRYABLE
from gpu_worker.backends.base import BackendError, ModelBackend
from gpu_worker.backends.ollama import OllamaBackend
from gpu_worker.backends.openai import OpenAIBackend, map_options, response_format, server_root
from tests.model_server import ModelServer
from tests.unit.backends import MODEL, closed_port, task

SECRET = "s3cret-pw"
KEY = "sk-test-0123456789abcdef"
SCHEMA = {"type": "object", "properties": {"skills": {"type": "array", "items": {"type": "string"}},
                                           "years": {"type": "integer"}},
          "required": ["skills", "years"]}


@pytest.fixture
def backend(srv: ModelServer):
    with OpenAIBackend(srv.url, worker="gpu-1") as b:
        yield b


def test_success_carries_output_and_ollama_named_metrics(backend):
    assert isinstance(backend, ModelBackend)
    result = backend.complete(task())
    assert result.ok and result.interaction_id == 7 and result.attempt == 2 and result.worker == "gpu-1"
    assert "Leeds" in result.output
    m = result.metrics
    assert m["prompt_eval_count"] > 0 and m["eval_count"] > 0 and m["finish_reason"] == "stop"
    assert isinstance(m["total_duration"], int) and m["total_duration"] > 0 and "wall_s" in m
    assert result.started_at <= result.finished_at


def test_system_prompt_is_sent(backend):
    assert "terse" in backend.complete(task(system="You are terse.")).output


def test_same_answer_as_the_ollama_api(srv, backend):
    grade = "Posting 3. Answer [PASS] or [FAIL]."
    with OllamaBackend(srv.url) as ollama:
        for t in (task(system="Be brief."), task(grade), task(format=SCHEMA), task(format="json")):
            assert backend.complete(t).output == ollama.complete(t).output


def test_json_mode_and_schema_give_parseable_json(backend):
    assert isinstance(backend.complete(task(format="json")).output, dict)
    result = backend.complete(task("Skills: Python, SQL and Terraform", format=SCHEMA))
    answer = result.output
    assert result.ok and "terraform" in answer["skills"] and isinstance(answer["years"], int)


def test_options_map_and_num_predict_limits_tokens(backend):
    result = backend.complete(task(options={"num_predict": 2, "num_ctx": 8192, "temperature": 0}))
    assert result.ok and result.metrics["eval_count"] == 2 and result.metrics["finish_reason"] == "length"
    assert map_options({"num_predict": 5, "num_ctx": 4096, "top_k": 40, "temperature": 0.2, "seed": 1,
                        "top_p": 0.9, "stop": ["\n"]}) == {"max_tokens": 5, "temperature": 0.2, "seed": 1,
                                                           "top_p": 0.9, "stop": ["\n"]}
    assert map_options({"num_predict": -1}) == {}
    assert response_format("json") == {"type": "json_object"}
    assert response_format(SCHEMA) == {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": SCHEMA, "strict": True}}
    # llama-cpp-python's server spelling: JSON mode with the schema beside it.
    assert response_format(SCHEMA, schema_form="json_object") == {"type": "json_object", "schema": SCHEMA}
    assert response_format("json", schema_form="json_object") == {"type": "json_object"}


# What llama-cpp-python's server (0.3.x) answers to response_format type json_schema: its
# request model allows only "text" and "json_object", and its error handler turns the
# validation error into a 500.
LLAMA_CPP_PYTHON_REFUSAL = {"error": {
    "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
               "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', "
               "'ctx': {'expected': \"'text' or 'json_object'\"}}",
    "type": "internal_server_error", "param": None, "code": None}}


def _json_response(status: int, body: dict) -> requests.Response:
    """A response as requests hands back one it has not read yet (stream=True)."""
    import io

    from urllib3.response import HTTPResponse

    data = json.dumps(body).encode()
    response = requests.Response()
    response.status_code = status
    response.raw = HTTPResponse(body=io.BytesIO(data), status=status, preload_content=False,
                                headers={"Content-Type": "application/json", "Content-Length": str(len(data))})
    response.headers["Content-Type"] = "application/json"
    return response


def _llama_cpp_python(backend, monkeypatch) -> list:
    """Make the fake server speak llama-cpp-python's dialect of response_format; returns what was sent."""
    sent: list = []
    post = backend.session.post

    def dialect(url, **kw):
        fmt = kw["json"].get("response_format")
        sent.append(fmt)
        if fmt and fmt["type"] == "json_schema":
            return _json_response(500, LLAMA_CPP_PYTHON_REFUSAL)
        if fmt and "schema" in fmt:  # constrained by the schema, as its grammar does
            kw["json"] = {**kw["json"], "response_format": {
                "type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}}
        return post(url, **kw)

    monkeypatch.setattr(backend.session, "post", dialect)
    return sent


def test_a_server_that_refuses_json_schema_gets_the_schema_as_json_object(backend, monkeypatch):
    sent = _llama_cpp_python(backend, monkeypatch)
    result = backend.complete(task("Skills: Python, SQL and Terraform", format=SCHEMA))
    assert result.ok and "terraform" in result.output["skills"] and isinstance(result.output["years"], int)
    assert sent == [response_format(SCHEMA), {"type": "json_object", "schema": SCHEMA}]
    assert backend.schema_form == "json_object"
    # Learnt once: the next schema step is one call; JSON mode and plain text are untouched.
    assert backend.complete(task("Skills: Go", format=SCHEMA)).ok and len(sent) == 3
    assert sent[2] == {"type": "json_object", "schema": SCHEMA}
    assert backend.complete(task(format="json")).ok and sent[3] == {"type": "json_object"}
    assert backend.complete(task()).ok and sent[4] is None


def test_only_a_refused_response_format_tries_the_other_form(srv, backend, monkeypatch):
    sent: list = []

    def refuse(url, **kw):
        sent.append(kw["json"]["response_format"]["type"])
        return _json_response(400, {"error": {"message": "response_format is not supported by this model"}})

    monkeypatch.setattr(backend.session, "post", refuse)
    result = backend.complete(task(format=SCHEMA))
    # Both spellings refused: the answer is the second refusal, and nothing is learnt.
    assert result.failure.failure_class == FailureClass.BAD_REQUEST and "response_format" in result.failure.message
    assert sent == ["json_schema", "json_object"] and backend.schema_form == "json_schema"
    monkeypatch.undo()
    srv.set_fault(MODEL, "error")  # any other failure is the task's answer, after one call
    assert backend.complete(task(format=SCHEMA)).failure.failure_class == FailureClass.SERVER_ERROR
    assert srv.requests[MODEL] == 1 and backend.schema_form == "json_schema"


def test_answer_that_is_not_json_is_invalid_output(srv, backend):
    srv.set_fault(MODEL, "nonsense")
    result = backend.complete(task(format="json"))
    assert result.failure.failure_class == FailureClass.INVALID_OUTPUT
    assert "did not answer JSON" in result.failure.message and "Sure!" in result.failure.message
    assert backend.complete(task()).ok  # without a format, any text is an answer


def test_json_cut_off_at_the_token_limit_says_so(backend):
    result = backend.complete(task(format=SCHEMA, options={"num_predict": 2}))
    assert result.failure.failure_class == FailureClass.INVALID_OUTPUT
    assert "cut off at the token limit" in result.failure.message
    assert result.metrics["finish_reason"] == "length"


@pytest.mark.parametrize(("body", "expected"), [
    ({"choices": []}, "without choices"),
    ({"choices": [{"message": {"role": "assistant", "content": None}, "finish_reason": "tool_calls"}]},
     "without message content (finish_reason tool_calls)"),
    ({"choices": [{"message": {"content": None, "refusal": "I can't help with that."}, "finish_reason": "stop"}]},
     "refused: \"I can't help with that.\""),
])
def test_answer_without_content_is_invalid_output(backend, body, expected):
    outcome = backend._read(body, task(), {}, 0.1)
    assert outcome.failure_class == FailureClass.INVALID_OUTPUT and expected in outcome.message


def test_server_fault_is_a_server_error(srv, backend):
    srv.set_fault(MODEL, "error")
    result = backend.complete(task())
    assert result.failure.failure_class == FailureClass.SERVER_ERROR
    assert "HTTP 500" in result.failure.message and "injected fault" in result.failure.message


def test_garbage_body_is_a_server_error(srv, backend):
    srv.set_fault(MODEL, "garbage")
    assert backend.complete(task()).failure.failure_class == FailureClass.SERVER_ERROR


def test_closed_port_is_a_connection_error():
    result = OpenAIBackend(f"http://127.0.0.1:{closed_port()}").complete(task())
    assert result.failure.failure_class == FailureClass.CONNECTION_ERROR
    assert "refused" in result.failure.message.lower()


def test_hang_is_a_timeout(srv, backend):
    srv.set_fault(MODEL, "hang")
    started = time.monotonic()
    result = backend.complete(task(timeout_s=0.3))
    assert time.monotonic() - started < 1.5
    assert result.failure.failure_class == FailureClass.TIMEOUT and "within 0.3s" in result.failure.message


def test_unknown_model_is_missing_and_not_retryable(backend):
    result = backend.complete(task(model="llama3:70b"))
    assert result.failure.failure_class == FailureClass.MODEL_MISSING
    assert result.failure.failure_class not in RETRYABLE
    assert "The model `llama3:70b` does not exist." in result.failure.message


def test_list_models_and_base_url_forms(srv):
    for url in (srv.url, srv.url + "/", srv.url + "/v1", srv.url + "/v1/", srv.url.removeprefix("http://")):
        with OpenAIBackend(url) as b:
            assert b.list_models() == [MODEL, "qwen2.5:7b"], url
    assert server_root("http://h:8000/proxy/v1/") == "http://h:8000/proxy"


def test_list_models_failures_raise_backend_error(srv):
    with pytest.raises(BackendError) as err:
        OpenAIBackend(f"http://127.0.0.1:{closed_port()}").list_models()
    assert err.value.failure.failure_class == FailureClass.CONNECTION_ERROR
    with pytest.raises(BackendError) as err:
        OpenAIBackend(srv.url + "/api").list_models()  # a wrong root: /api/v1/models is 404 page not found
    assert err.value.failure.failure_class == FailureClass.BAD_REQUEST


def test_api_key_is_sent_as_a_bearer_token(srv):
    srv.api_key = KEY
    with OpenAIBackend(srv.url, api_key=KEY) as b:
        assert b.list_models() and b.complete(task()).ok
    refused = OpenAIBackend(srv.url).complete(task())
    assert refused.failure.failure_class == FailureClass.BAD_REQUEST and "HTTP 401" in refused.failure.message


def test_api_key_and_url_password_never_reach_a_message(srv):
    srv.api_key = "the-right-key"  # the server echoes the wrong key it was given in its 401
    port = srv.port
    messages: list[str] = []
    with OpenAIBackend(f"http://user:{SECRET}@127.0.0.1:{port}/v1", api_key=KEY) as b:
        assert b.server == f"127.0.0.1:{port}"
        assert KEY not in repr(b) and SECRET not in repr(b) and KEY not in repr(b.session.auth)
        messages.append(b.complete(task()).failure.message)
        with pytest.raises(BackendError) as err:
            b.list_models()
        messages.append(str(err.value))
        srv.api_key = KEY
        messages.append(b.complete(task(model="nope:1")).failure.message)
        srv.set_fault(MODEL, "error")
        messages.append(b.complete(task()).failure.message)
        srv.set_fault(MODEL, "hang")
        messages.append(b.complete(task(timeout_s=0.2)).failure.message)
    closed = OpenAIBackend(f"http://user:{SECRET}@127.0.0.1:{closed_port()}", api_key=KEY)
    messages.append(closed.complete(task()).failure.message)
    assert "***" in messages[0]  # the echoed key was there, and was scrubbed
    assert all(KEY not in m and SECRET not in m and "user:" not in m for m in messages), messages


def test_pool_serves_parallel_calls():
    with ModelServer(models=[MODEL], slots=4, latency=0.15) as slow, OpenAIBackend(slow.url, pool_size=4) as b:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda i: b.complete(task(f"posting {i}")), range(8)))
    assert all(r.ok for r in results)
    assert slow.max_concurrent[MODEL] == 4


# -- the fake server's /v1 API, over plain HTTP ---------------------------------------------

def test_fake_server_models_and_errors_are_openai_shaped(srv):
    listed = requests.get(f"{srv.url}/v1/models", timeout=5).json()
    assert listed["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in listed["data"]] == [
        (MODEL, "model", "wavefarm-test"), ("qwen2.5:7b", "model", "wavefarm-test")]
    missing = requests.post(f"{srv.url}/v1/chat/completions", timeout=5,
                            json={"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    assert missing.status_code == 404 and missing.json() == {"error": {
        "message": "The model `x` does not exist.", "type": "invalid_request_error", "param": None,
        "code": "model_not_found"}}
    bad = requests.post(f"{srv.url}/v1/chat/completions", timeout=5, data=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_fake_server_streams_sse_that_adds_up_to_the_whole_answer(srv):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Describe a data engineer role in Leeds"}]}
    whole = requests.post(f"{srv.url}/v1/chat/completions", json=body, timeout=5).json()
    with requests.post(f"{srv.url}/v1/chat/completions", timeout=5, stream=True,
                       json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_official_openai_client_talks_to_the_fake_server(srv):
    openai = pytest.importorskip("openai")
    srv.api_key = KEY
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, max_retries=0, timeout=5)
    assert [m.id for m in client.models.list()] == [MODEL, "qwen2.5:7b"]
    messages = [{"role": "user", "content": "Summarise: a nurse in Leeds, night shifts"}]
    done = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=50)
    assert done.choices[0].finish_reason == "stop" and "Leeds" in done.choices[0].message.content
    assert done.usage.completion_tokens > 0
    streamed = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == done.choices[0].message.content
    parsed = client.chat.completions.create(model=MODEL, messages=messages, response_format={
        "type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA, "strict": True}})
    assert set(json.loads(parsed.choices[0].message.content)) == {"skills", "years"}
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="llama3:70b", messages=messages)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{srv.url}/v1", api_key="wrong", max_retries=0).models.list()
