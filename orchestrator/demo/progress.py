"""The demo's live display: the one of `status --watch` (orchestrator/watch.py), until the
batch ends; a process of the farm that stops ends it early, and a farm that makes no
progress for a minute is told why if the farm knows."""

from __future__ import annotations

import time

from rich.text import Text

from common.supervisor import Supervisor
from orchestrator import watch as display
from orchestrator.demo.console import err
from orchestrator.progress import Snapshot
from orchestrator.reconnect import Reconnecting

POLL_S = 0.5
STALL_S = 60.0     # no change for this long: say what the farm knows


def watch(db: Reconnecting, batch_id: int, farm: Supervisor) -> None:
    """Until every run of the batch has ended (or what is left waits for a person); raises
    ProcessDied when a process of the farm stops. A database that goes away is waited for
    (said in one line), not a traceback."""
    view = display.view_for(err, as_json=False)
    stall = _StallWarning(db, farm)
    try:
        last = display.follow(db, batch_id, view, every_s=POLL_S, each=stall.check)
    finally:
        view.close()
    _, message = display.verdict(last)
    if message:
        err.print(Text.assemble(("waiting for a person: ", "yellow"), message), soft_wrap=True)


class _StallWarning:
    """After every refresh: the farm's processes are alive, and if nothing moved for
    STALL_S, say once which queue has no live worker."""

    def __init__(self, db: Reconnecting, farm: Supervisor) -> None:
        self.db, self.farm = db, farm
        self.last_change, self.last_state, self.warned = time.monotonic(), None, False

    def check(self, snap: Snapshot) -> None:
        from orchestrator import overview
        from orchestrator.workers import STALE_S

        self.farm.check()
        state = (snap.progress.ended, tuple((s.done, s.in_flight, s.waiting) for s in snap.steps))
        if state != self.last_state:
            self.last_change, self.last_state = time.monotonic(), state
        elif not self.warned and time.monotonic() - self.last_change > STALL_S:
            self.warned = True  # say once why nothing moves, if the farm knows
            for q in self.db.run(lambda store: overview.farm_status(store, stale_s=STALE_S))["queues"]:
                if q["problem"]:
                    err.print(Text.assemble((f"no progress for {STALL_S:.0f}s:", "yellow"),
                                            f" queue {q['queue']}: {q['problem']} (logs in {self.farm.logs})"))

