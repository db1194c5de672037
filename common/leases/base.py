"""What every lease offers: a worker name held on the broker for as long as the worker
lives, so that a second worker of the same name can be told, at once, that it is taken.

One module per broker (amqp.py, redis.py, filesystem.py) says how a name is held
there; `common.leases` picks one by the broker URL, claims a name at start-up and
keeps it (keeper.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from common.errors import WavefarmError


class BrokerAway(WavefarmError):
    """The broker cannot be reached now: nothing is known about the name."""


class NameTaken(WavefarmError):
    """A worker name is held by another live worker."""


class Lease(ABC):
    """One name on one broker. `key` is what two workers may not share (the Celery node name)."""

    def __init__(self, key: str) -> None:
        self.key = key

    @abstractmethod
    def acquire(self) -> bool:
        """Hold the name if no live worker does: True when held, False when another holds it.
        Atomic: of two workers asking at the same instant, one gets True. Raises BrokerAway."""

    @abstractmethod
    def renew(self) -> bool:
        """Keep the name, or take it back after the broker lost it (a restart): True when
        held, False when another worker holds it now. Raises BrokerAway."""

    @abstractmethod
    def release(self) -> None:
        """Give the name up and close what holds it; never raises."""
