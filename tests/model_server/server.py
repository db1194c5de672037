"""A fake model server: Ollama's HTTP API and the OpenAI-compatible one (vLLM's), with
GPU-like timing and injected faults that apply to both alike.

Stdlib only, so it runs wherever the tests run. What it imitates, and why:
- N slots per model (OLLAMA_NUM_PARALLEL): requests beyond them queue, so a worker's
  concurrency and a model's capacity can be told apart in tests and benchmarks.
- latency = base seconds (prompt evaluation) + seconds per output token; a model's
  first request (or the first after its keep_alive ran out) also pays `load_s`.
- residency, as Ollama's scheduler (server/sched.go) keeps it, so tests and benchmarks
  can count model swaps: at most `max_loaded` models resident (OLLAMA_MAX_LOADED_MODELS),
  loads one at a time server-wide, the least recently used idle model evicted to make
  room (a call waits while every resident model is busy), a reload when a call asks for
  other runner options (num_ctx, num_batch, ...), unload on keep_alive 0 or its expiry.
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
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any, Literal

from tests.model_server.dialect import DEFAULT_NUM_CTX, FOREVER, Call, Runner, canonical, now, timestamp
from tests.model_server.handler import Handler
from tests.model_server.ollama_api import model_entry

FaultKind = Literal["error", "busy", "hang", "garbage", "nonsense"]
FAULT_KINDS: tuple[str, ...] = ("error", "busy", "hang", "garbage", "nonsense")
_WAIT_S = 0.05  # how often a waiting call looks again (and notices that the server stops)


@dataclass(eq=False)
class _Copy:
    """A model's resident copy, like a runner in Ollama's scheduler."""

    runner: Runner                     # the options it was loaded with
    keep_alive_s: float | None         # of the latest call given this copy (None: forever)
    loading: bool = True
    refs: int = 0                      # calls in progress on it (a copy with none is idle)
    last_used: float = field(default_factory=time.monotonic)
    expires_at: datetime = FOREVER     # once idle
    draining: bool = False             # the next load waits for it to go idle: no new calls join it

    def expires(self, current: datetime) -> datetime:
        """What /api/ps shows: a busy copy's clock starts when its calls end."""
        if not self.refs:
            return self.expires_at
        return FOREVER if self.keep_alive_s is None else current + timedelta(seconds=self.keep_alive_s)


@dataclass(eq=False)
class _Lease:
    """A call's hold on a resident copy: the copy stays (is not evicted or reloaded) until end()."""

    model: str
    copy: _Copy
    load_s: float  # seconds this call spent loading the model (0.0 when it was resident)
    ended: bool = False


class ModelServer:
    """Run with `with ModelServer(models=[...]) as srv:` and point clients at `srv.url`.

    Counters (per canonical model name; read them after the requests ended):
    `requests` every completion call (either API) for a known model, `served` answered normally,
    `faults` injected, `max_concurrent` most calls generating at once, `loads` every load
    (first, after an expiry, an eviction or an unload, and reloads for other runner options),
    `evictions` times a model was unloaded to make room for another; `load_log` holds
    (time.monotonic() when the load began, model, runner options) per load.

    `max_loaded` (None: no limit) caps the models resident at once, as
    OLLAMA_MAX_LOADED_MODELS does.
    """

    def __init__(self, models: Iterable[str] = ("gemma3:1b",), *, host: str = "127.0.0.1", port: int = 0,
                 latency: float = 0.0, per_token: float = 0.0, slots: int = 4, load_s: float = 0.0,
                 hang_s: float = 300.0, seed: int = 0, verbose: bool = False, api_key: str | None = None,
                 max_loaded: int | None = None) -> None:
        if max_loaded is not None and max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1 (or None for no limit), not {max_loaded}")
        self.latency, self.per_token, self.load_s, self.hang_s = latency, per_token, load_s, hang_s
        self.api_key = api_key
        self.slots = slots
        self.max_loaded = max_loaded
        self.verbose = verbose
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._models: dict[str, dict[str, Any]] = {}
        self._revisions: dict[str, int] = {}
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        # Residency (see _use): the resident copies in load order, one condition every
        # change wakes, the server-wide load lock (a flag under the condition) and the
        # queue of calls waiting to load, served first come first served.
        self._resident: dict[str, _Copy] = {}
        self._changed = threading.Condition(self._lock)
        self._load_busy = False
        self._load_queue: deque[object] = deque()
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
        self.loads: Counter[str] = Counter()
        self.evictions: Counter[str] = Counter()
        self.load_log: list[tuple[float, str, dict[str, Any]]] = []
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
            self._resident.pop(canonical(name), None)
            self._changed.notify_all()

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
            for counter in (self.requests, self.served, self.faults, self.max_concurrent, self.loads, self.evictions):
                counter.clear()
            self.load_log.clear()

    @property
    def loads_total(self) -> int:
        with self._lock:
            return sum(self.loads.values())

    def in_flight(self, model: str | None = None) -> int:
        with self._lock:
            return sum(self._active.values()) if model is None else self._active[canonical(model)]

    def loaded(self) -> list[str]:
        """The resident models (loaded, not still loading), in the order they were loaded."""
        with self._lock:
            self._expire()
            return [name for name, copy in self._resident.items() if not copy.loading]

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

    # -- residency (Ollama's scheduler) ---------------------------------------------------
    def _use(self, call: Call) -> _Lease | None:
        """Hold the call's model resident with the call's runner options, loading it when it is
        not; None when the server stops first. end() the lease once the call is done.

        A resident copy with the same options is shared at once. Otherwise the call joins the
        load queue; the call at its head, once no load is in progress, reloads the model
        when its copy is idle (or waits, no new calls joining that copy, until it is), else
        loads it where there is room, evicting the least recently used idle model when
        `max_loaded` are resident (or waiting, the least recently used busy one taking no
        new calls, until one is idle). Loads take `load_s` each, one at a time."""
        ticket = object()
        with self._changed:
            try:
                while not self._stop.is_set():
                    self._expire()
                    head = bool(self._load_queue) and self._load_queue[0] is ticket
                    if head:  # only the head holds copies for itself: let go of any, choose again
                        for other in self._resident.values():
                            other.draining = False
                    copy = self._resident.get(call.model)
                    if copy is not None and not copy.loading and not copy.draining and copy.runner == call.runner:
                        return self._lease(call, copy, 0.0)
                    if copy is not None and copy.loading:
                        self._changed.wait(_WAIT_S)  # its load ends soon: share it if the options match
                        continue
                    if ticket not in self._load_queue:
                        self._load_queue.append(ticket)
                        head = self._load_queue[0] is ticket
                    if not head or self._load_busy:
                        self._changed.wait(_WAIT_S)
                        continue
                    if copy is not None:  # other runner options: reload once its calls end
                        if copy.refs:
                            copy.draining = True
                            self._changed.wait(_WAIT_S)
                            continue
                        del self._resident[call.model]
                    elif self.max_loaded is not None and len(self._resident) >= self.max_loaded:
                        idle = [c for c in self._resident.items() if not c[1].refs]
                        if not idle:
                            min(self._resident.values(), key=lambda c: c.last_used).draining = True
                            self._changed.wait(_WAIT_S)
                            continue
                        victim = min(idle, key=lambda c: c[1].last_used)[0]
                        del self._resident[victim]
                        self.evictions[victim] += 1
                    self._load_queue.popleft()  # this call: the next in line may plan its load meanwhile
                    return self._load_locked(call)
                return None
            finally:
                if ticket in self._load_queue:
                    if self._load_queue[0] is ticket:
                        for other in self._resident.values():
                            other.draining = False
                    self._load_queue.remove(ticket)
                self._changed.notify_all()

    def _load_locked(self, call: Call) -> _Lease | None:
        """Load the call's model (the lock held; released while loading, like the load lock)."""
        copy = _Copy(runner=call.runner, keep_alive_s=call.keep_alive_s)
        self._resident[call.model] = copy
        self._load_busy = True
        self.loads[call.model] += 1
        self.load_log.append((time.monotonic(), call.model, dict(call.runner)))
        lease = self._lease(call, copy, self.load_s)
        self._changed.release()
        try:
            ok = self._pause(self.load_s)
        finally:
            self._changed.acquire()
            self._load_busy = False
            copy.loading = False
            copy.last_used = time.monotonic()
        if not ok:
            self._end_locked(lease)
            return None
        return lease

    def _lease(self, call: Call, copy: _Copy, load_s: float) -> _Lease:
        copy.refs += 1
        copy.keep_alive_s = call.keep_alive_s  # as Ollama's runner takes the latest request's
        copy.last_used = time.monotonic()
        return _Lease(call.model, copy, load_s)

    def _end(self, lease: _Lease) -> None:
        """The call is done with its copy (again: nothing). The last call to end starts the
        copy's keep_alive clock; keep_alive 0 unloads it now."""
        with self._changed:
            self._end_locked(lease)
            self._changed.notify_all()

    def _end_locked(self, lease: _Lease) -> None:
        if lease.ended:
            return
        lease.ended = True
        copy = lease.copy
        copy.refs -= 1
        copy.last_used = time.monotonic()
        if copy.refs:
            return
        if copy.keep_alive_s == 0:
            if self._resident.get(lease.model) is copy:
                del self._resident[lease.model]
        else:
            copy.expires_at = FOREVER if copy.keep_alive_s is None else now() + timedelta(seconds=copy.keep_alive_s)

    def _unload(self, model: str) -> None:
        """keep_alive 0 with no prompt: unload now if idle, else once its calls end."""
        with self._changed:
            copy = self._resident.get(model)
            if copy is None:
                return
            copy.keep_alive_s = 0
            if not copy.refs:
                del self._resident[model]
                self._changed.notify_all()

    def _expire(self) -> None:
        """Drop idle copies whose keep_alive ran out (the lock held)."""
        current = now()
        for name, copy in list(self._resident.items()):
            if not copy.refs and not copy.loading and copy.expires_at <= current:
                del self._resident[name]

    def _ps(self) -> list[dict[str, Any]]:
        current = now()
        with self._lock:
            self._expire()
            copies = [(name, copy.expires(current), dict(copy.runner).get("num_ctx", DEFAULT_NUM_CTX))
                      for name, copy in self._resident.items() if not copy.loading]
        out = []
        for name, expires, num_ctx in copies:
            entry = self._entry(name)
            if entry is None:
                continue
            out.append({**entry, "expires_at": timestamp(expires), "size_vram": entry["size"],
                        "context_length": num_ctx})
        return out


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 refuses connections under a worker's burst

    def __init__(self, address: tuple[str, int], owner: ModelServer) -> None:
        self.owner = owner
        super().__init__(address, Handler)
