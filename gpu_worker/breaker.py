"""A circuit breaker for one model server.

Closed: calls go through. After `threshold` connection failures in a row it opens:
the worker stops consuming (its queued work stays in the broker for other hosts)
and gives back the messages it already holds, so no interaction burns its retries
against a dead server. The server probe closes it again once the server answers.
"""

from __future__ import annotations

import threading
from typing import Literal

from prometheus_client import Gauge

CIRCUIT_OPEN = Gauge("wavefarm_circuit_open", "1 while the breaker for the model server is open", ["server"])


class CircuitBreaker:
    def __init__(self, server: str, *, threshold: int = 3) -> None:
        self.server = server
        self.threshold = threshold
        self._failures = 0
        self._open = False
        self._lock = threading.Lock()
        CIRCUIT_OPEN.labels(server).set(0)

    @property
    def state(self) -> Literal["closed", "open"]:
        return "open" if self._open else "closed"

    def allow(self) -> bool:
        return not self._open

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0

    def record_failure(self) -> bool:
        """Count a connection failure; True when this one opened the circuit."""
        with self._lock:
            self._failures += 1
            if self._open or self._failures < self.threshold:
                return False
            self._open = True
        CIRCUIT_OPEN.labels(self.server).set(1)
        return True

    def trip(self) -> None:
        """Open at once: the probe found the server down."""
        with self._lock:
            self._open = True
        CIRCUIT_OPEN.labels(self.server).set(1)

    def reset(self) -> bool:
        """Close after a successful probe; True when it was open."""
        with self._lock:
            was_open, self._open, self._failures = self._open, False, 0
        CIRCUIT_OPEN.labels(self.server).set(0)
        return was_open
