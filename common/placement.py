"""The GPU worker's end of placement (orchestrator/placement.py decides, and
orchestrator/residency.py says it): which models serve placed on this worker's host,
received as a Celery remote-control command, as holds are (common/holds.py).

A host is (machine, server): every worker on one machine that drives one model server
takes the same entry, since they share that server's memory. Until serve's word names
this host (it just started, serve has not seen its heartbeat yet), `models()` is None:
the worker decides what to do without it (gpu_worker/residency.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from celery.worker.control import control_command

from common.messages import HostPlacement, Placement
from common.queues import spellings

log = logging.getLogger(__name__)

BROADCAST = "wavefarm_placement"  # the remote-control command's name


def covers(models: Collection[str], model: str) -> bool:
    """Whether `model` is among `models` (as a server lists them): Ollama reads `gemma3`
    as `gemma3:latest`."""
    return any(name in models for name in spellings(model))


@dataclass
class PlacementBoard:
    """What this host last heard, shared by the worker's threads."""

    machine: str
    server: str
    on_change: list = field(default_factory=list)  # callables, run after a change (must not block)
    _mine: HostPlacement | None = None
    _at: datetime | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, placement: Placement) -> None:
        mine = next((h for h in placement.hosts if (h.machine, h.server) == (self.machine, self.server)), None)
        with self._lock:
            if placement.at is not None and self._at is not None and placement.at < self._at:
                return  # an older word that crossed a newer one on the way
            self._at = placement.at
            if mine is None:
                return  # serve does not know this host yet: its next word will
            changed, self._mine = mine != self._mine, mine
        if changed:
            log.info("placed on this host: %s", ", ".join(mine.models) or "no model")
            for callback in self.on_change:
                callback()

    def models(self) -> frozenset[str] | None:
        mine = self._mine
        return None if mine is None else frozenset(mine.models)

    def num_ctx(self, model: str) -> int | None:
        mine = self._mine
        if mine is None:
            return None
        return next((mine.num_ctx[name] for name in spellings(model) if name in mine.num_ctx), None)


@control_command(args=[("placement", dict)], signature="<placement>")
def wavefarm_placement(state, placement: dict) -> dict:
    """serve's word on which models each host consumes (registered with Celery when this
    module is imported; a worker with no board, a script worker, ignores it)."""
    board: PlacementBoard | None = getattr(state.consumer.app, "wavefarm_placement", None)
    if board is not None:
        board.update(Placement.model_validate(placement))
    return {"ok": "placement"}
