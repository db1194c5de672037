"""What GPU and script workers share: starting a Celery worker, keeping the set of
consumed queues equal to what the worker should take right now, and telling the
orchestrator about it (heartbeats).

A worker decides *what* to consume in its own thread (a probe of its model server, a
circuit breaker); this module applies that decision inside the Celery consumer's event
loop, the only thread where adding or cancelling a consumer is safe, through a
consumer bootstep that runs every half second.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Literal

from celery import Celery, bootsteps
from celery.signals import worker_shutting_down
from prometheus_client import Gauge, start_http_server

from common import placement  # noqa: F401  (registers serve's placement command on every worker)
from common.holds import HoldBoard
from common.leases import Lease, LeaseKeeper, NameTaken
from common.messages import WorkerStatus
from common.reporting import publish_status

log = logging.getLogger(__name__)

# A queue no task is ever sent to: Celery wants one at start, before the first probe
# has said what this worker may take. It is cancelled on the first reconcile.
IDLE_QUEUE = "wavefarm.idle"
RECONCILE_S = 0.5
HEARTBEAT_S = 10.0

CONSUMING = Gauge("wavefarm_worker_consuming", "1 while this worker consumes the queue", ["queue"])


class WorkerRuntime:
    """The state a worker's threads share: what to consume, and how to describe itself."""

    def __init__(self, *, name: str, kind: Literal["ai", "script"], concurrency: int,
                 desired: Callable[[], set[str]], describe: Callable[[], dict]) -> None:
        self.name = name
        self.kind = kind
        self.concurrency = concurrency
        self.desired = desired          # the queues to consume now; called from the event loop, must not block
        self.describe = describe        # server, models, circuit: fields of WorkerStatus
        self.consuming: set[str] = set()
        self.stopping = False
        self.holds = HoldBoard()        # what serve says no one may start now (common/holds.py)
        self._last_sent: tuple | None = None
        self._last_sent_at = 0.0
        self._lock = threading.Lock()

    def status(self) -> WorkerStatus:
        return WorkerStatus(name=self.name, kind=self.kind, queues=sorted(self.consuming),
                            concurrency=self.concurrency, stopping=self.stopping, heard_holds=self.holds.heard,
                            **self.describe())

    def heartbeat(self, app: Celery, *, force: bool = False) -> None:
        """Publish a status when it changed or every HEARTBEAT_S; never blocks on a broker that is away."""
        status = self.status()
        # Not the resident models' expiry: every call moves it, and it says nothing new.
        key = (tuple(status.queues), status.circuit, tuple(status.models), tuple(sorted(status.digests.items())),
               status.stopping, status.heard_holds, tuple((r.model, r.context_length) for r in status.resident),
               None if status.placed is None else tuple(status.placed))
        now = time.monotonic()
        with self._lock:
            if not force and key == self._last_sent and now - self._last_sent_at < HEARTBEAT_S:
                return
            self._last_sent, self._last_sent_at = key, now
        try:
            publish_status(app, status, retry=False)
        except Exception as exc:  # the broker is away: the next heartbeat tries again
            log.warning("could not send a heartbeat: %s", type(exc).__name__)
            with self._lock:
                self._last_sent = None


class ReconcileQueues(bootsteps.StartStopStep):
    """Consumer step: every RECONCILE_S, make the consumed queues equal to runtime.desired()."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs) -> None:
        super().__init__(parent, **kwargs)
        self.tref = None

    def start(self, c) -> None:
        runtime: WorkerRuntime = c.app.wavefarm_runtime
        runtime.consuming = set()  # a restarted consumer (broker reconnect) starts from its selection
        # Not a first tick here: until the event loop runs, the task consumer has no
        # message callback yet, and a message delivered to a queue added now would be
        # dropped on the floor (kombu: "Consumer does not have any callbacks").
        self.tref = c.timer.call_repeatedly(RECONCILE_S, self.tick, (c,), priority=10)

    def stop(self, c) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def tick(self, c) -> None:
        runtime: WorkerRuntime = c.app.wavefarm_runtime
        try:
            want = set() if runtime.stopping else set(runtime.desired())
            have = {q.name for q in c.task_consumer.queues}
            for queue in sorted(want - have):
                c.add_task_queue(queue)
                CONSUMING.labels(queue).set(1)
            for queue in sorted(have - want):
                c.cancel_task_queue(queue)
                if queue != IDLE_QUEUE:
                    CONSUMING.labels(queue).set(0)
            runtime.consuming = want
            runtime.heartbeat(c.app)
        except Exception:  # a failed tick must not stop the timer; the next one retries
            log.exception("could not update the consumed queues")


def run_worker(app: Celery, runtime: WorkerRuntime, lease: Lease, *, pool: str = "threads",
               pool_size: int | None = None, metrics_port: int | None = None, loglevel: str = "INFO") -> None:
    """Start the Celery worker in this process and block until it stops.

    `lease` holds the worker's name (common.leases.claim) and is held until the worker
    has stopped. `pool_size` (default: the announced concurrency) is how many tasks it
    holds at once.
    """
    app.wavefarm_runtime = runtime
    app.wavefarm_holds = runtime.holds  # where the remote-control command puts serve's word
    app.steps["consumer"].add(ReconcileQueues)
    if metrics_port:
        start_http_server(metrics_port)

    def on_shutdown(**_: object) -> None:
        # Tell the orchestrator at once, so admission control stops counting this
        # worker's slots instead of waiting for its heartbeat to go stale.
        runtime.stopping = True
        runtime.consuming = set()
        runtime.heartbeat(app, force=True)

    worker_shutting_down.connect(on_shutdown, weak=False)
    # Celery's own two lines per task ("received", "succeeded in ...") repeat what our
    # one line per interaction says, without its ids, and cost 8% of a GPU worker's
    # CPU at zero model latency. Their warnings and errors still show.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(loglevel)))
    # Another worker took the name while this one could not reach the broker: stop
    # (a warm shutdown, as on SIGTERM) rather than run beside it under one name.
    keeper = LeaseKeeper(lease, runtime.name, on_lost=lambda: os.kill(os.getpid(), signal.SIGTERM))
    keeper.start()
    try:
        # No --task-events: task events cost CPU on every task, and Flower, the only
        # reader, turns them on when it runs (its --enable-events, the default).
        app.worker_main([
            "worker",
            f"--pool={pool}",
            f"--concurrency={pool_size or runtime.concurrency}",
            f"--hostname={runtime.name}",
            f"--queues={IDLE_QUEUE}",
            f"--loglevel={loglevel}",
            "--without-mingle",
            "--without-gossip",
        ])
    finally:
        keeper.stop()
    if keeper.lost:
        raise NameTaken(f"stopped: another worker took the name {runtime.name} while this one could not reach "
                        "the broker; start this one again under another name (with no --name it takes a free one)")
