"""Holding a claimed name for the worker's lifetime, in a thread of its own.

Every RENEW_S the lease is renewed. A broker that is away costs one warning, not a
line per try, and the name is taken back when it returns. Only when another worker
took the name in between (possible only while this one could not reach the broker)
does `on_lost` run, once: the worker stops rather than run beside a namesake.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from common.leases.base import Lease

log = logging.getLogger(__name__)

RENEW_S = 3.0


class LeaseKeeper:
    def __init__(self, lease: Lease, name: str, on_lost: Callable[[], None], *, every_s: float = RENEW_S) -> None:
        self.lease = lease
        self.name = name
        self.on_lost = on_lost
        self.every_s = every_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wavefarm-name-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and give the name up."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.lease.release()

    def _run(self) -> None:
        away = False
        while not self._stop.wait(self.every_s):
            try:
                held = self.lease.renew()
            except Exception as exc:  # BrokerAway, or whatever a client library raised: try again
                if not away:
                    log.warning("cannot reach the broker to hold the worker name %s (%s): it is taken back "
                                "when the broker returns", self.name, exc)
                away = True
                continue
            if not held:
                self.lost = True
                log.error("the worker name %s was taken by another worker while this one could not reach the "
                          "broker: stopping", self.name)
                self.on_lost()
                return
            if away:
                log.info("the broker is back: the worker name %s is held again", self.name)
                away = False
