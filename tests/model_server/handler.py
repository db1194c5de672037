"""HTTP routes on top of ModelServer's slots, faults and timing, in two APIs.

Ollama's (/api/*) and the OpenAI-compatible one (/v1/*) share one completion pipeline
(`_complete`, `_generate`); their shapes live in ollama_api and openai_api. An unknown
path is Go's plain "404 page not found", as Ollama answers it.
"""

from __future__ import annotations

import json
import re
import select
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tests.model_server.answers import gist, json_answer, text_answer
from tests.model_server.dialect import ApiError, Call, Dialect, Usage, canonical
from tests.model_server.ollama_api import VERSION, OllamaDialect
from tests.model_server.openai_api import OpenAIDialect, model_list

if TYPE_CHECKING:
    from tests.model_server.server import ModelServer, _Lease

_TOKEN = re.compile(r"\S+\s*|\s+")  # a "token" is a word and its trailing space: joins back exactly
OLLAMA_CHAT = OllamaDialect(chat=True)
OPENAI = OpenAIDialect()
COMPLETIONS: dict[str, Dialect] = {
    "/api/chat": OLLAMA_CHAT,
    "/api/generate": OllamaDialect(chat=False),
    "/v1/chat/completions": OPENAI,
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
        elif path == "/v1/models":
            if self._authorized(OPENAI):
                self._json(200, model_list(self.owner.models))
        else:
            self._send(404, b"404 page not found", "text/plain")

    def do_POST(self) -> None:
        path = self._path()
        dialect = COMPLETIONS.get(path)
        body = self._body(dialect or OLLAMA_CHAT)
        if body is None:
            return
        try:
            if dialect is not None:
                self._complete(body, dialect)
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

    def _authorized(self, dialect: Dialect) -> bool:
        """vLLM's --api-key: only /v1 routes ask for the bearer token. False after answering 401."""
        key = self.owner.api_key
        given = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        if key is None or given == key:
            return True
        # Echoes the key it was given, as some proxies do, so tests can see the client scrub it.
        self._json(401, dialect.error(ApiError(401, f"Incorrect API key provided: {given or 'none'}",
                                               code="invalid_api_key")))
        return False

    def _complete(self, body: dict[str, Any], dialect: Dialect) -> None:
        arrived = time.monotonic()
        if dialect.guarded and not self._authorized(dialect):
            return
        try:
            call = dialect.parse(body)
            if self.owner._entry(call.model) is None:
                raise dialect.model_missing(call.name)
        except ApiError as err:
            self._json(err.status, dialect.error(err))
            return
        if call.load_only:  # Ollama's way to load (or, with keep_alive 0, unload) a model
            if call.keep_alive_s == 0:
                self.owner._unload(call.model)  # loads nothing: unloads now, or once its calls end
                self._json(200, dialect.loaded(call, 0.0))
                return
            lease = self.owner._use(call)
            if lease is None:
                raise _Gone
            self.owner._end(lease)
            self._json(200, dialect.loaded(call, lease.load_s))
            return

        fault = self.owner._draw_fault(call.model)
        if fault == "busy":
            # Ollama past OLLAMA_MAX_QUEUE answers 503 with this text and no Retry-After;
            # the OpenAI API (and proxies in front of vLLM) say 429 with one.
            if dialect.guarded:
                self._json(429, dialect.error(ApiError(429, "Rate limit reached: please try again in 1s")),
                           headers={"Retry-After": "1"})
            else:
                self._json(503, dialect.error(ApiError(
                    503, "server busy, please try again.  maximum pending requests exceeded")))
            return
        if fault == "error":
            self._json(500, dialect.error(ApiError(500, "llama runner process has terminated: injected fault")))
            return
        if fault == "garbage":
            self._send(200, b"<html><body>upstream hiccup</body></html>", "text/html")
            return
        # As in Ollama, a call first gets its model resident (loading it, perhaps after an
        # eviction, or waiting), then waits for one of the model's slots.
        lease = self.owner._use(call)
        if lease is None:
            raise _Gone
        try:
            if not self.owner._acquire(call.model):
                raise _Gone
            try:
                if fault == "hang":
                    self._hang()
                self._generate(call, dialect, lease, arrived=arrived, nonsense=fault == "nonsense")
            finally:
                self.owner._release(call.model)
        finally:
            self.owner._end(lease)  # nothing when _generate ended it already

    def _generate(self, call: Call, dialect: Dialect, lease: _Lease, *, arrived: float, nonsense: bool) -> None:
        owner = self.owner
        load_s = lease.load_s
        if nonsense:
            content = f"Sure! Happy to help. {gist(call.prompt, 4, 4)}"
        elif call.fmt is not None:
            content = json_answer(call.model, call.prompt, call.fmt)
        else:
            content = text_answer(call.model, call.prompt)
        tokens = _TOKEN.findall(content)
        finish = "stop"
        if call.max_tokens is not None and call.max_tokens < len(tokens):
            tokens, finish = tokens[:call.max_tokens], "length"
        if not owner._pause(owner.latency):  # prompt evaluation
            raise _Gone
        gen_start = time.monotonic()
        if call.stream:
            self.send_response(200)
            self.send_header("Content-Type", dialect.stream_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(dialect.begin(call))
            for token in tokens:
                if not owner._pause(owner.per_token):
                    raise _Gone
                self._chunk(dialect.chunk(call, token))
        elif not owner._pause(owner.per_token * len(tokens)):
            raise _Gone
        usage = Usage(prompt_tokens=max(1, len(call.prompt.split())), completion_tokens=len(tokens),
                      finish_reason=finish, total_s=time.monotonic() - arrived, load_s=load_s,
                      prompt_s=owner.latency, eval_s=time.monotonic() - gen_start)
        # Book-keeping before the last write: a client that reads /api/ps or the counters
        # right after its answer must see this call's effects (keep_alive 0: unloaded).
        owner._end(lease)
        owner._count_served(call.model, usage.prompt_tokens, usage.completion_tokens)
        if call.stream:
            self._chunk(dialect.end(call, usage))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._json(200, dialect.whole(call, "".join(tokens), usage))

    def _hang(self) -> None:
        """Hold the slot without answering, as a stuck runner does, until the client leaves."""
        deadline = time.monotonic() + self.owner.hang_s
        while time.monotonic() < deadline:
            if not self.owner._pause(0.05) or _client_gone(self.connection):
                raise _Gone

    # -- wire helpers -----------------------------------------------------------------
    def _path(self) -> str:
        return urlsplit(self.path).path.rstrip("/") or "/"

    def _body(self, dialect: Dialect) -> dict[str, Any] | None:
        """The JSON request body, or None after answering 400 in the dialect's shape."""
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self.close_connection = True
            self._json(400, dialect.error(ApiError(400, "invalid JSON in request body")))
            return None
        if not isinstance(body, dict):
            self._json(400, dialect.error(ApiError(400, "request body must be a JSON object")))
            return None
        return body

    def _send(self, status: int, data: bytes, content_type: str, *, head: bool = False,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _json(self, status: int, obj: Any, *, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8", headers=headers)

    def _chunk(self, data: bytes) -> None:
        """One HTTP chunk; nothing for b"" (a zero-length chunk ends the body)."""
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
