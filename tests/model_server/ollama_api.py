"""Ollama's API shapes, as the official `ollama` client reads them (docs.ollama.com/api).

"stream" defaults to true, streaming answers are NDJSON with a final done:true object
that carries the counts and durations (nanoseconds), and errors are {"error": "..."}.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from tests.model_server.dialect import (DEFAULT_KEEP_ALIVE_S, ApiError, Call, Usage, canonical, messages_text, now,
                                        runner_options, timestamp)

VERSION = "0.9.0"  # what /api/version reports: recent enough for clients that check it
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to stay loaded (None: forever). Numbers are seconds; strings are Go durations."""
    if value is None:
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            if not body or _DURATION.sub("", body):
                raise ValueError(f'time: invalid duration "{value}"') from None
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(body))
    else:
        raise ValueError(f"invalid keep_alive {value!r}")
    return None if seconds < 0 else seconds


def model_entry(name: str) -> dict[str, Any]:
    """What /api/tags says about a model: plausible sizes derived from the tag (gemma3:1b → 1B)."""
    base, _, tag = name.partition(":")
    billions = re.search(r"(\d+(?:\.\d+)?)b", tag)
    params = float(billions.group(1)) if billions else 4.0
    family = re.match(r"[a-z]+\d*", base.lower())
    fam = family.group(0) if family else base
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": int(params * 0.6e9),  # about Q4_K_M's bytes per parameter
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {"parent_model": "", "format": "gguf", "family": fam, "families": [fam],
                    "parameter_size": f"{params:g}B", "quantization_level": "Q4_K_M"},
    }


def _prompt_of(body: dict[str, Any], chat: bool) -> str | None:
    """All the text the model would read; None when the request is malformed."""
    if not chat:
        prompt = body.get("prompt") or ""
        system = body.get("system") or ""
        return f"{system}\n{prompt}" if system and prompt else str(prompt)
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    return messages_text(messages)


class OllamaDialect:
    """/api/chat (chat=True) or /api/generate (chat=False)."""

    stream_type = "application/x-ndjson"
    guarded = False

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat

    def parse(self, body: dict[str, Any]) -> Call:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model is required")
        try:
            keep = parse_keep_alive(body.get("keep_alive"))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        prompt = _prompt_of(body, self.chat)
        if prompt is None:
            raise ApiError(400, "messages must be a list of {role, content}")
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        num_predict = options.get("num_predict")
        return Call(name=name, model=canonical(name), prompt=prompt, fmt=body.get("format") or None,
                    max_tokens=num_predict if isinstance(num_predict, int) and num_predict > 0 else None,
                    stream=body.get("stream", True) is not False, keep_alive_s=keep, load_only=not prompt,
                    runner=runner_options(options))

    def model_missing(self, name: str) -> ApiError:
        return ApiError(404, f'model "{name}" not found, try pulling it first')

    def error(self, err: ApiError) -> dict[str, Any]:
        return {"error": err.message}

    def loaded(self, call: Call, load_s: float) -> dict[str, Any]:
        reason = "unload" if call.keep_alive_s == 0 else "load"
        return {**self._shape(call, "", done=True), "done_reason": reason, "load_duration": _ns(load_s)}

    def whole(self, call: Call, text: str, usage: Usage) -> dict[str, Any]:
        return {**self._shape(call, text, done=True), "done_reason": usage.finish_reason,
                "total_duration": _ns(usage.total_s), "load_duration": _ns(usage.load_s),
                "prompt_eval_count": usage.prompt_tokens, "prompt_eval_duration": _ns(usage.prompt_s),
                "eval_count": usage.completion_tokens, "eval_duration": _ns(usage.eval_s)}

    def begin(self, call: Call) -> bytes:
        return b""

    def chunk(self, call: Call, token: str) -> bytes:
        return _line(self._shape(call, token, done=False))

    def end(self, call: Call, usage: Usage) -> bytes:
        return _line(self.whole(call, "", usage))  # the text went out in the chunks

    def _shape(self, call: Call, text: str, *, done: bool) -> dict[str, Any]:
        head: dict[str, Any] = {"model": call.name, "created_at": timestamp(now())}
        if self.chat:
            head["message"] = {"role": "assistant", "content": text}
        else:
            head["response"] = text
        head["done"] = done
        return head


def _line(obj: Any) -> bytes:
    return (json.dumps(obj) + "\n").encode()
