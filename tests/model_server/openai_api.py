"""The OpenAI-compatible API's shapes, as vLLM serves them and the official `openai` client reads them.

"stream" defaults to false; streams are server-sent events (`data: {chunk}` lines,
then `data: [DONE]`); errors are {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
from typing import Any

from tests.model_server.dialect import ApiError, Call, Usage, canonical, messages_text

CREATED = 1735689600  # 2025-01-01, the models' modified_at in /api/tags
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def model_list(names: list[str]) -> dict[str, Any]:
    return {"object": "list",
            "data": [{"id": n, "object": "model", "created": CREATED, "owned_by": "wavefarm-test"} for n in names]}


def _text(content: Any) -> Any:
    """A message's content as one string: content parts ([{"type": "text", "text": ...}]) joined."""
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content


def _response_format(value: Any) -> str | dict[str, Any] | None:
    """response_format as the pipeline's fmt: "json", a schema, or None for text."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object")
        return schema
    raise ApiError(400, f"response_format.type must be text, json_object or json_schema, not {kind!r}")


class OpenAIDialect:
    """/v1/chat/completions."""

    stream_type = "text/event-stream"
    guarded = True

    def parse(self, body: dict[str, Any]) -> Call:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model is required")
        messages = body.get("messages")
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(m, dict) and m.get("role") in ROLES for m in messages)):
            raise ApiError(400, "messages must be a non-empty list of {role, content}")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ApiError(400, "max_tokens must be at least 1")
        options = body.get("stream_options")
        return Call(name=name, model=canonical(name), fmt=_response_format(body.get("response_format")),
                    prompt=messages_text([{**m, "content": _text(m.get("content"))} for m in messages]),
                    max_tokens=limit, stream=body.get("stream") is True,
                    include_usage=isinstance(options, dict) and options.get("include_usage") is True)

    def model_missing(self, name: str) -> ApiError:
        return ApiError(404, f"The model `{name}` does not exist.", code="model_not_found")

    def error(self, err: ApiError) -> dict[str, Any]:
        kind = "server_error" if err.status >= 500 else "invalid_request_error"
        return {"error": {"message": err.message, "type": kind, "param": None, "code": err.code}}

    def loaded(self, call: Call, load_s: float) -> dict[str, Any]:
        # Not reached: parse never asks for a load-only call (the API has none).
        return self.whole(call, "", Usage(0, 0, "stop", load_s, load_s, 0.0, 0.0))

    def whole(self, call: Call, text: str, usage: Usage) -> dict[str, Any]:
        return {**self._head(call, "chat.completion"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": usage.finish_reason}],
                "usage": _usage(usage)}

    def begin(self, call: Call) -> bytes:
        return self._event(call, {"role": "assistant", "content": ""}, None)

    def chunk(self, call: Call, token: str) -> bytes:
        return self._event(call, {"content": token}, None)

    def end(self, call: Call, usage: Usage) -> bytes:
        out = self._event(call, {}, usage.finish_reason)
        if call.include_usage:  # one more chunk, with no choices, carries the counts
            out += _sse({**self._head(call, "chat.completion.chunk"), "choices": [], "usage": _usage(usage)})
        return out + b"data: [DONE]\n\n"

    def _event(self, call: Call, delta: dict[str, Any], finish: str | None) -> bytes:
        chunk = {**self._head(call, "chat.completion.chunk"),
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if call.include_usage:
            chunk["usage"] = None
        return _sse(chunk)

    @staticmethod
    def _head(call: Call, kind: str) -> dict[str, Any]:
        return {"id": call.id, "object": kind, "created": call.created, "model": call.name}


def _usage(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()
