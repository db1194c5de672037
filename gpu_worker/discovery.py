"""Which model queues this host may consume right now: the readiness gate.

A thread asks the model server what it has (Ollama's /api/tags, or /v1/models) every
few seconds. A queue is consumed only while the server has its model and answers at
all: a host is never sent a model it lacks, a model pulled later is picked up, one
removed is let go, and a server that stops answering opens the breaker.
"""

from __future__ import annotations

import logging
import threading

from common.placement import covers
from common.queues import queue_names
from gpu_worker.backends.base import BackendError, ModelBackend, identity_of, model_identities
from gpu_worker.breaker import CircuitBreaker
from gpu_worker.residency import Residency

log = logging.getLogger(__name__)


class ServerWatch:
    def __init__(self, backend: ModelBackend, breaker: CircuitBreaker, *, wanted: list[str] | None,
                 interval_s: float = 5.0, open_interval_s: float = 1.0, residency: Residency | None = None) -> None:
        self.backend = backend
        self.breaker = breaker
        self.residency = residency
        self.wanted = wanted  # None: whatever the server has ("auto")
        self.interval_s = interval_s
        self.open_interval_s = open_interval_s
        self.available: list[str] = []
        self.identities: dict[str, str] = {}  # name -> digest, as the server lists them
        self.probed = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wavefarm-server-watch", daemon=True)

    def start(self) -> None:
        self.probe()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Probe now (a call said the model is missing, or the breaker just opened)."""
        self._wake.set()

    def models(self) -> list[str]:
        if self.wanted is None:
            return list(self.available)
        return [m for m in self.wanted if covers(self.available, m)]

    def digests(self) -> dict[str, str]:
        """The digest of each model this host serves: the cache's model identity."""
        return {m: d for m in self.models() if (d := identity_of(self.identities, m)) is not None}

    def digest_of(self, model: str) -> str | None:
        return identity_of(self.identities, model)

    def desired_queues(self) -> set[str]:
        if not self.probed or not self.breaker.allow():
            return set()
        models = self.models() if self.residency is None else self.residency.allowed(self.models())
        return set().union(*(queue_names(m) for m in models))

    def probe(self) -> None:
        try:
            identities = model_identities(self.backend)
        except BackendError as exc:
            if self.breaker.allow():
                log.warning("model server unavailable, not taking work: %s", exc)
            self.breaker.trip()
            return
        models = list(identities)
        if set(models) != set(self.available):
            log.info("model server has: %s", ", ".join(models) or "no models")
            if self.wanted is not None:
                missing = [m for m in self.wanted if not covers(models, m)]
                if missing:
                    log.warning("not on the model server (not consumed until it has them): %s", ", ".join(missing))
        self.available = models
        self.identities = identities
        self.probed = True
        if self.breaker.reset():
            log.info("model server answers again: taking work")
        if self.residency is not None:
            self._residency()

    def _residency(self) -> None:
        """What the host has loaded (/api/ps), and the models no longer placed here unloaded."""
        running = getattr(self.backend, "running", None)
        if running is None:
            return  # an OpenAI-compatible server: it holds what it was started with
        try:
            self.residency.resident = running()
            for model in self.residency.to_release():
                self.backend.unload(model)
                self.residency.released(model)
                log.info("unloaded %s: placed on other hosts now", model)
        except BackendError as exc:
            log.warning("could not read or change what the model server has loaded: %s", exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.open_interval_s if not self.breaker.allow() else self.interval_s)
            self._wake.clear()
            if not self._stop.is_set():
                self.probe()
