"""serve's end of holds (common/holds.py is the workers'): what no worker may start now,
said to every worker, and the attempts they hand back applied.

The dispatcher sends nothing held in the first place (claims skip paused batches and
escalated steps). What this adds is the work already sent: about two attempts per slot
sit in queues, prefetch buffers and behind a GPU worker's gate. Each worker checks a
task against the last holds it heard right before the call, and hands back what is
held; the hand-back puts the attempt back to pending without using it
(states.py: dispatched -> pending), and the dispatcher sends it again once the hold lifts.

serve says the holds when it starts, when a control changed them (a NOTIFY from the
command), when a worker's heartbeat says it has not heard them yet (it just started),
and every REPEAT_S, with one broadcast on its own broker connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from celery import Celery
from kombu import Connection

from common.holds import BROADCAST
from common.messages import HandBack, Holds, WorkerStatus
from orchestrator.broadcast import Broadcaster, broadcast
from orchestrator.db.rows import Guard, Moved
from orchestrator.db.store import Store
from orchestrator.states import Status, transition_many
from orchestrator.workers import STALE_S

log = logging.getLogger(__name__)

REPEAT_S = 5.0      # a worker that missed a broadcast hears the next (common/holds.py waits 6 s)
MAX_RUNS = 10_000   # runs cancelled one by one, newest first; whole batches are held as one


def current(store: Store) -> Holds:
    """What is held now, as the workers are told it."""
    held = store.held_now(MAX_RUNS)
    return Holds(batches=sorted({h.batch_id for h in held if h.what == "batch"}),
                 runs=sorted({h.run_id for h in held if h.what == "run"}),
                 steps=sorted({(h.batch_id, h.step) for h in held if h.what == "step"}),
                 at=next(h.at for h in held if h.what == "clock"))


def tell_workers(app: Celery, holds: Holds, *, expect: int = 0, timeout_s: float = 2.0,
                 connection: Connection | None = None) -> int:
    """Say `holds` to every worker; with `expect`, wait (up to `timeout_s`) until that
    many have answered that they heard it. Returns how many answered."""
    arguments = {"holds": holds.model_dump(mode="json")}
    if connection is not None:
        return len(broadcast(app, connection, BROADCAST, arguments, reply=expect > 0, timeout_s=timeout_s,
                             limit=expect or None))
    with app.connection_for_write() as conn:
        return len(broadcast(app, conn, BROADCAST, arguments, reply=expect > 0, timeout_s=timeout_s,
                             limit=expect or None))


def tell_now(store: Store, app: Celery) -> tuple[int, int]:
    """A command's own word to the workers, right after its change committed: it returns
    once every live worker has heard it, so that when `pause` returns no call of the
    batch starts (serve says the same a moment later). (answered, live workers)."""
    with store.transaction():
        holds = current(store)
        live = sum(1 for w in store.workers(STALE_S) if w.live and not w.stopping)
    return (tell_workers(app, holds, expect=live) if live else 0), live


def take_back(store: Store, hand_backs: Sequence[HandBack]) -> list[Moved]:
    """dispatched -> pending for attempts workers did not start; a stale one (the run was
    cancelled, the deadline passed and the attempt failed) matches nothing."""
    return transition_many(store, [Guard(id=h.interaction_id, attempt=h.attempt) for h in hand_backs],
                           from_=Status.DISPATCHED, to=Status.PENDING)


class Announcer:
    """Says the holds to every worker when they may have changed, and now and then."""

    def __init__(self, app: Celery, *, repeat_s: float = REPEAT_S, broadcaster: Broadcaster | None = None) -> None:
        self.app = app
        self.repeat_s = repeat_s
        self.broadcaster = broadcaster or Broadcaster(app)
        self._said_at = float("-inf")
        self._due = True
        self.last: Holds | None = None

    def changed(self) -> None:
        self._due = True

    def heard_from(self, statuses: Sequence[WorkerStatus]) -> None:
        """A worker that has not heard the holds yet (it just started) hears them now."""
        if any(not s.heard_holds and not s.stopping for s in statuses):
            self._due = True

    def announce_if_due(self, store: Store) -> None:
        if not self._due and time.monotonic() - self._said_at < self.repeat_s:
            return
        with store.transaction():
            holds = current(store)
        try:
            self.broadcaster.say(BROADCAST, {"holds": holds.model_dump(mode="json")})
        except Exception as exc:  # the broker is away: the next turn tries again
            log.warning("could not tell the workers what is held (%s); trying again", type(exc).__name__)
            return
        if self.last is None or _key(holds) != _key(self.last):
            log.info("held now: %d batch(es), %d run(s), %d step(s)", len(holds.batches), len(holds.runs),
                     len(holds.steps))
        self.last, self._due, self._said_at = holds, False, time.monotonic()

    def close(self) -> None:
        self.broadcaster.close()


def _key(holds: Holds) -> tuple:
    return tuple(holds.batches), tuple(holds.runs), tuple(map(tuple, holds.steps))
