"""A fake model server: Ollama's HTTP API and the OpenAI-compatible one (vLLM's), with
GPU-like timing and injected faults that apply to both alike.

Stdlib only, so it runs wherever the tests run. What it imitates, and why:
- N slots per model (OLLAMA_NUM_PARALLEL): requests beyond them queue, so a worker's
  concurrency and a model's capacity can be told apart in tests and benchmarks.
- latency = base seconds (prompt evaluation) + seconds per output token; a model's
  first request (or the first after its keep_alive ran out) also pays `load_s`.
- faults per model, drawn from a seeded RNG: "error" (HTTP 500, like a crashed
  runner), "busy" (Ollama's 503 past its queue; 429 with Retry-After on /v1), "hang" (holds its slot and never answers until the client gives up),
  "garbage" (HTTP 200 with a body that is not JSON, like a broken proxy) and
  "nonsense" (a normal answer whose text ignores the requested format).
Answers come from tests.model_server.answers: deterministic per (model, prompt), the
same on either API. `api_key` makes the /v1 routes ask for a bearer token, as vLLM's
--api-key does.
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any, Literal

from tests.model_server.dialect import DEFAULT_KEEP_ALIVE_S, FOREVER, canonical, now, timestamp
from tests.model_server.handler import Handler
from tests.model_server.ollama_api import model_entry

FaultKind = Literal["error", "busy", "hang", "garbage", "nonsense"]
FAULT_KINDS: tuple[str, ...] = ("error", "busy", "hang", "garbage", "nonsense")


class ModelServer:
    """Run with `with ModelServer(models=[...]) as srv:` and point clients at `srv.url`.

    Counters (per canonical model name; read them after the requests ended):
    `requests` every completion call (either API) for a known model, `served` answered normally,
    `faults` injected, `max_concurrent` most calls generating at once.
    """

    def __init__(self, models: Iterable[str] = ("gemma3:1b",), *, host: str = "127.0.0.1", port: int = 0,
                 latency: float = 0.0, per_token: float = 0.0, slots: int = 4, load_s: float = 0.0,
                 hang_s: float = 300.0, seed: int = 0, verbose: bool = False, api_key: str | None = None) -> None:
        self.latency, self.per_token, self.load_s, self.hang_s = latency, per_token, load_s, hang_s
        self.api_key = api_key
        self.slots = slots
        self.verbose = verbose
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._models: dict[str, dict[str, Any]] = {}
        self._revisions: dict[str, int] = {}
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._loaded: dict[str, datetime] = {}  # model -> expires_at
        self._faults: dict[str, tuple[str, float]] = {}
        self._active: Counter[str] = Counter()
        self._stop = threading.Event()
        self._serving = threading.Event()
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self.requests: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        # Tokens of the answers it gave, per model, as it reported them in each answer.
        self.prompt_tokens: Counter[str] = Counter()
        self.output_tokens: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.max_concurrent: Counter[str] = Counter()
        for name in models:
            self.add_model(name)
        self._httpd = _HTTPServer((host, port), self)

    # -- lifecycle ---------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        return f"http://{host}:{self.port}"

    def start(self) -> ModelServer:
        """Serve from a background thread (for tests); returns self."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"model-server-{self.port}", daemon=True)
        self._serving.set()
        self._thread.start()
        return self

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        """Serve from this thread until stop() is called from another one."""
        self._serving.set()
        try:
            self._httpd.serve_forever(poll_interval=poll_interval)
        finally:
            self._close()

    def stop(self) -> None:
        self._stop.set()  # wakes queued, hanging and sleeping requests first
        if self._serving.is_set():
            self._serving.clear()
            self._httpd.shutdown()  # returns once serve_forever has left its loop
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close()

    def _close(self) -> None:
        self._stop.set()
        self._httpd.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # idle keep-alive connections would otherwise hold their threads
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control, for tests ----------------------------------------------------------
    @property
    def models(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def add_model(self, name: str) -> None:
        with self._lock:
            name = canonical(name)
            self._models[name] = model_entry(name)
            self._slots.setdefault(name, threading.BoundedSemaphore(self.slots))
            self._loading.setdefault(name, threading.Lock())

    def repull(self, name: str) -> str:
        """Like `ollama pull` of a newer build under the same name: /api/tags lists another
        digest (the name, its slots and residency stay). The new digest."""
        with self._lock:
            name = canonical(name)
            old = self._models[name]
            self._revisions[name] = self._revisions.get(name, 0) + 1
            self._models[name] = {**old, "digest": hashlib.sha256(f"{name}#{self._revisions[name]}".encode()).hexdigest()}
            return self._models[name]["digest"]

    def remove_model(self, name: str) -> None:
        """Like `ollama rm`: later calls get 404 model not found."""
        with self._lock:
            self._models.pop(canonical(name), None)
            self._loaded.pop(canonical(name), None)

    def set_fault(self, model: str, kind: FaultKind | Literal["none"], rate: float = 1.0) -> None:
        """From now on, `rate` of the calls to `model` ("*": every model) fail as `kind`."""
        if kind not in (*FAULT_KINDS, "none"):
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        key = model if model == "*" else canonical(model)
        with self._lock:
            if kind == "none" or rate <= 0:
                self._faults.pop(key, None)
            else:
                self._faults[key] = (kind, rate)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_stats(self) -> None:
        with self._lock:
            for counter in (self.requests, self.served, self.faults, self.max_concurrent):
                counter.clear()

    def in_flight(self, model: str | None = None) -> int:
        with self._lock:
            return sum(self._active.values()) if model is None else self._active[canonical(model)]

    def loaded(self) -> list[str]:
        current = now()
        with self._lock:
            for name, expires in list(self._loaded.items()):
                if expires <= current:
                    del self._loaded[name]
            return list(self._loaded)

    # -- used by the handler ---------------------------------------------------------
    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _pause(self, seconds: float) -> bool:
        """Sleep like a GPU at work; False when the server is stopping instead."""
        return not (seconds > 0 and self._stop.wait(seconds)) and not self._stop.is_set()

    def _count_served(self, model: str, prompt_tokens: int = 0, output_tokens: int = 0) -> None:
        with self._lock:
            self.served[model] += 1
            self.prompt_tokens[model] += prompt_tokens
            self.output_tokens[model] += output_tokens

    def _entry(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._models.get(name)

    def _draw_fault(self, model: str) -> str | None:
        with self._lock:
            self.requests[model] += 1
            kind, rate = self._faults.get(model) or self._faults.get("*") or (None, 0.0)
            if kind is None or self._rng.random() >= rate:
                return None
            self.faults[model] += 1
            return kind

    def _acquire(self, model: str) -> bool:
        """Wait for a slot like a queued Ollama request; False when the server stops first."""
        sem = self._slots[model]
        while not self._stop.is_set():
            if sem.acquire(timeout=0.05):
                with self._lock:
                    self._active[model] += 1
                    self.max_concurrent[model] = max(self.max_concurrent[model], self._active[model])
                return True
        return False

    def _release(self, model: str) -> None:
        with self._lock:
            self._active[model] -= 1
        self._slots[model].release()

    def _load(self, model: str) -> float:
        """Seconds spent loading: `load_s` unless the model is still resident."""
        with self._loading[model]:  # concurrent first calls share one load, as Ollama's scheduler does
            if model in self.loaded():
                return 0.0
            self._pause(self.load_s)
            self._keep(model, DEFAULT_KEEP_ALIVE_S)  # resident (and in /api/ps) while it generates
            return self.load_s

    def _keep(self, model: str, keep_alive_s: float | None) -> None:
        with self._lock:
            if keep_alive_s == 0:
                self._loaded.pop(model, None)  # keep_alive 0 unloads right after the call
            else:
                self._loaded[model] = FOREVER if keep_alive_s is None else now() + timedelta(seconds=keep_alive_s)

    def _ps(self) -> list[dict[str, Any]]:
        out = []
        for name in self.loaded():
            entry = self._entry(name)
            if entry is None:
                continue
            with self._lock:
                expires = self._loaded.get(name, now())
            out.append({**entry, "expires_at": timestamp(expires), "size_vram": entry["size"], "context_length": 4096})
        return out


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 refuses connections under a worker's burst

    def __init__(self, address: tuple[str, int], owner: ModelServer) -> None:
        self.owner = owner
        super().__init__(address, Handler)
