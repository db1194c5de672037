"""The worker's end of holds (orchestrator/holds.py is serve's): what serve last said is
held, received as a Celery remote-control command on every worker, and the check each
task makes right before its call.

A task that is held is handed back (common/reporting.py publish_hand_back): serve puts it
back to pending without using its attempt, and dispatches it again once the hold lifts.
A worker that has heard nothing yet (it just started, serve is down) waits a few seconds
for the first word before it starts a call, then goes on without: serve repeats the
holds every few seconds, and dispatches nothing it holds in the first place.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime

from celery.worker.control import control_command

from celery import Celery

from common.messages import HandBack, Holds, TaskBase
from common.reporting import publish_hand_back

log = logging.getLogger(__name__)

BROADCAST = "wavefarm_holds"  # the remote-control command's name
FIRST_WORD_S = 6.0            # serve repeats the holds every 5 s


@dataclass(frozen=True)
class HoldSet:
    batches: frozenset[int] = frozenset()
    runs: frozenset[int] = frozenset()
    steps: frozenset[tuple[int, str]] = frozenset()

    @classmethod
    def of(cls, holds: Holds) -> HoldSet:
        return cls(frozenset(holds.batches), frozenset(holds.runs), frozenset((b, s) for b, s in holds.steps))

    def reason(self, task: TaskBase) -> str | None:
        """Why `task` may not start now, or None."""
        if task.batch_id in self.batches:
            return f"batch {task.batch_id} is paused or cancelled"
        if task.run_id in self.runs:
            return f"run {task.run_id} is cancelled"
        if (task.batch_id, task.step) in self.steps:
            return f"step {task.step} of batch {task.batch_id} is escalated"
        return None


@dataclass
class HoldBoard:
    """What this worker last heard, shared by its threads."""

    first_word_s: float = FIRST_WORD_S
    _holds: HoldSet = field(default_factory=HoldSet)
    _heard: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _at: datetime | None = None

    def update(self, holds: Holds) -> None:
        with self._lock:
            if holds.at is not None and self._at is not None and holds.at < self._at:
                return  # an older reading that crossed a newer one on the way
            self._at = holds.at
            new = HoldSet.of(holds)
            changed, self._holds = new != self._holds, new  # one assignment: readers see the old set or the new
        if changed or not self._heard.is_set():
            log.info("held now: %d batch(es), %d run(s), %d step(s)", len(holds.batches), len(holds.runs),
                     len(holds.steps))
        self._heard.set()

    @property
    def heard(self) -> bool:
        return self._heard.is_set()

    def reason(self, task: TaskBase) -> str | None:
        if not self._heard.wait(self.first_word_s):
            self._heard.set()  # said once: from now on, go on with what we have
            log.warning("no word from serve about held work in %.0fs: going on without it", self.first_word_s)
        return self._holds.reason(task)


def hand_back_if_held(app: Celery, board: HoldBoard, task: TaskBase, *, worker: str) -> bool:
    """Right before a call: whether `task` is held, and if so, hand it back unstarted."""
    reason = board.reason(task)
    if reason is None:
        return False
    hand_back(app, task, worker=worker, reason=reason)
    return True


def hand_back(app: Celery, task: TaskBase, *, worker: str, reason: str) -> None:
    """Give `task` back unstarted: serve makes it pending again without using its attempt."""
    log.info("interaction %s attempt %s not started (%s): handed back", task.interaction_id, task.attempt, reason,
             extra={"interaction_id": task.interaction_id, "run_id": task.run_id, "batch_id": task.batch_id,
                    "step": task.step, "attempt": task.attempt})
    publish_hand_back(app, HandBack(interaction_id=task.interaction_id, attempt=task.attempt, worker=worker,
                                    reason=reason))


@control_command(args=[("holds", dict)], signature="<holds>")
def wavefarm_holds(state, holds: dict) -> dict:
    """serve's word on what is held (registered with Celery when this module is imported)."""
    board: HoldBoard | None = getattr(state.consumer.app, "wavefarm_holds", None)
    if board is not None:
        board.update(Holds.model_validate(holds))
    return {"ok": "holds"}
