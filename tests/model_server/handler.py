"""Ollama's HTTP API on top of ModelServer's slots, faults and timing.

Shapes follow docs.ollama.com/api as the official `ollama` client reads them:
"stream" defaults to true, streaming answers are NDJSON with a final done:true
object that carries the counts and durations (nanoseconds), errors are
{"error": "..."} with the status Ollama uses, and an unknown path is Go's plain
"404 page not found".
"""

from __future__ import annotations

import hashlib
import json
import re
import select
import socket
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tests.model_server.answers import gist, json_answer, text_answer

if TYPE_CHECKING:
    from tests.model_server.server import ModelServer

VERSION = "0.9.0"  # what /api/version reports: recent enough for clients that check it
DEFAULT_KEEP_ALIVE_S = 300.0  # Ollama's default: a model stays loaded 5 minutes after use
FOREVER = datetime(2318, 1, 1, tzinfo=timezone.utc)  # how Ollama shows keep_alive < 0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TOKEN = re.compile(r"\S+\s*|\s+")  # a "token" is a word and its trailing space: joins back exactly


def now() -> datetime:
    return datetime.now(timezone.utc)


def timestamp(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def canonical(name: str) -> str:
    """Ollama's rule: a name without a tag means :latest."""
    return name if ":" in name else f"{name}:latest"


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


def _client_gone(sock: socket.socket) -> bool:
    """True once the client closed its end (it timed out and gave up on us)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class _Gone(Exception):
    """The client left or the server is stopping: stop work, answer nothing."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a client's connection pool is exercised

    @property
    def owner(self) -> ModelServer:
        return self.server.owner  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle plus the
        # client's delayed ACK adds ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.owner._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.owner._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if self.owner.verbose:
            super().log_message(format, *args)

    # -- routes ---------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._send(200 if self._path() == "/" else 404, b"", "text/plain; charset=utf-8", head=True)

    def do_GET(self) -> None:
        path = self._path()
        if path == "/":
            self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif path == "/api/version":
            self._json(200, {"version": VERSION})
        elif path == "/api/tags":
            self._json(200, {"models": [e for e in map(self.owner._entry, self.owner.models) if e]})
        elif path == "/api/ps":
            self._json(200, {"models": self.owner._ps()})
        else:
            self._send(404, b"404 page not found", "text/plain")

    def do_POST(self) -> None:
        path = self._path()
        body = self._body()
        if body is None:
            return
        try:
            if path in ("/api/chat", "/api/generate"):
                self._complete(body, chat=path == "/api/chat")
            elif path == "/api/show":
                self._show(body)
            else:
                self._send(404, b"404 page not found", "text/plain")
        except _Gone:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- endpoints ----------------------------------------------------------------------
    def _show(self, body: dict[str, Any]) -> None:
        name = body.get("model") or body.get("name") or ""
        entry = self.owner._entry(canonical(name)) if name else None
        if entry is None:
            self._json(404, {"error": f'model "{name}" not found'})
            return
        fam = entry["details"]["family"]
        self._json(200, {"modelfile": f"FROM {entry['name']}\n", "parameters": "", "template": "{{ .Prompt }}",
                         "details": entry["details"], "modified_at": entry["modified_at"],
                         "model_info": {"general.architecture": fam, f"{fam}.context_length": 8192},
                         "capabilities": ["completion"]})

    def _complete(self, body: dict[str, Any], *, chat: bool) -> None:
        arrived = time.monotonic()
        name = body.get("model")
        if not isinstance(name, str) or not name:
            self._json(400, {"error": "model is required"})
            return
        model = canonical(name)
        if self.owner._entry(model) is None:
            self._json(404, {"error": f'model "{name}" not found, try pulling it first'})
            return
        try:
            keep = parse_keep_alive(body.get("keep_alive"))
        except ValueError as exc:
            self._json(400, {"error": str(exc)})
            return
        prompt = _prompt_of(body, chat)
        if prompt is None:
            self._json(400, {"error": "messages must be a list of {role, content}"})
            return
        if not prompt:  # Ollama's way to load (or, with keep_alive 0, unload) a model
            load_s = self.owner._load(model)
            self.owner._keep(model, keep)
            reason = "unload" if keep == 0 else "load"
            self._json(200, {**_shape(name, "", chat, done=True), "done_reason": reason, "load_duration": _ns(load_s)})
            return

        fault = self.owner._draw_fault(model)
        if fault == "error":
            self._json(500, {"error": "llama runner process has terminated: injected fault"})
            return
        if fault == "garbage":
            self._send(200, b"<html><body>upstream hiccup</body></html>", "text/html")
            return
        if not self.owner._acquire(model):
            raise _Gone
        try:
            if fault == "hang":
                self._hang()
            self._generate(name, model, prompt, body, chat=chat, arrived=arrived, keep=keep,
                           nonsense=fault == "nonsense")
        finally:
            self.owner._release(model)

    def _generate(self, name: str, model: str, prompt: str, body: dict[str, Any], *, chat: bool,
                  arrived: float, keep: float | None, nonsense: bool) -> None:
        owner = self.owner
        load_s = owner._load(model)
        fmt = body.get("format") or None
        if nonsense:
            content = f"Sure! Happy to help. {gist(prompt, 4, 4)}"
        elif fmt is not None:
            content = json_answer(model, prompt, fmt)
        else:
            content = text_answer(model, prompt)
        tokens = _TOKEN.findall(content)
        done_reason = "stop"
        num_predict = (body.get("options") or {}).get("num_predict")
        if isinstance(num_predict, int) and 0 < num_predict < len(tokens):
            tokens, done_reason = tokens[:num_predict], "length"
        if not owner._pause(owner.latency):  # prompt evaluation
            raise _Gone
        gen_start = time.monotonic()
        stream = body.get("stream", True) is not False
        if stream:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for token in tokens:
                if not owner._pause(owner.per_token):
                    raise _Gone
                self._chunk(_shape(name, token, chat, done=False))
        elif not owner._pause(owner.per_token * len(tokens)):
            raise _Gone
        final = {**_shape(name, "" if stream else "".join(tokens), chat, done=True), "done_reason": done_reason,
                 "total_duration": _ns(time.monotonic() - arrived), "load_duration": _ns(load_s),
                 "prompt_eval_count": max(1, len(prompt.split())), "prompt_eval_duration": _ns(owner.latency),
                 "eval_count": len(tokens), "eval_duration": _ns(time.monotonic() - gen_start)}
        # Book-keeping before the last write: a client that reads /api/ps or the counters
        # right after its answer must see this call's effects.
        owner._keep(model, keep)
        owner._count_served(model)
        if stream:
            self._chunk(final)
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._json(200, final)

    def _hang(self) -> None:
        """Hold the slot without answering, as a stuck runner does, until the client leaves."""
        deadline = time.monotonic() + self.owner.hang_s
        while time.monotonic() < deadline:
            if not self.owner._pause(0.05) or _client_gone(self.connection):
                raise _Gone

    # -- wire helpers -----------------------------------------------------------------
    def _path(self) -> str:
        return urlsplit(self.path).path.rstrip("/") or "/"

    def _body(self) -> dict[str, Any] | None:
        """The JSON request body, or None after answering 400."""
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self.close_connection = True
            self._json(400, {"error": "invalid JSON in request body"})
            return None
        if not isinstance(body, dict):
            self._json(400, {"error": "request body must be a JSON object"})
            return None
        return body

    def _send(self, status: int, data: bytes, content_type: str, *, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

    def _chunk(self, obj: Any) -> None:
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _prompt_of(body: dict[str, Any], chat: bool) -> str | None:
    """All the text the model would read; None when the request is malformed."""
    if not chat:
        prompt = body.get("prompt") or ""
        system = body.get("system") or ""
        return f"{system}\n{prompt}" if system and prompt else str(prompt)
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    return "\n".join(m["content"] for m in messages if isinstance(m.get("content"), str))


def _shape(name: str, text: str, chat: bool, *, done: bool) -> dict[str, Any]:
    head: dict[str, Any] = {"model": name, "created_at": timestamp(now())}
    if chat:
        head["message"] = {"role": "assistant", "content": text}
    else:
        head["response"] = text
    head["done"] = done
    return head
