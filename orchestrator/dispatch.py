"""The dispatcher: pending interactions become task messages on their queues.

Admission control. Each queue gets an in-flight window of about twice the slots of
the live workers consuming it (from their heartbeats): every slot has one task
running and one waiting, and everything else stays `pending` in Postgres. So the
broker never holds a 100,000-message backlog, a cancelled or re-prioritised batch
takes effect at the next free slot, and a queue nobody consumes gets nothing (and
`status` says so) instead of messages that silently wait.

Fairness. A queue's free slots go to the batches of the highest priority first, and
among equal priorities in turns, so a second batch shares the farm with the first
instead of waiting for it to finish. Within a batch, the earliest runs go first.

Crash safety. Claiming (pending -> dispatched) and publishing happen inside one
transaction (serve's turn, which also applied the results that made the work ready),
committed after the broker confirmed every message. A crash before the commit leaves
the rows pending (or, for children created in the same turn, not yet created): they
are sent again, and the duplicate's result is ignored by the guarded transition, or,
for an interaction that was never committed, as unknown. The commit failing after
the publish is the same case. Nothing is lost; at worst a call is made twice.

An AMQP transaction, not publisher confirms: RabbitMQ confirms a persistent message
once it is on disk or consumed and acknowledged, which for a message a worker takes at
once means after the worker's call (measured: a 40-step chain took 11.5 ms a step with
confirms, 10.3 with a transaction), while tx.commit returns once it is written.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from itertools import groupby

from celery import Celery
from prometheus_client import Counter

from common.queues import queue_for, task_name
from orchestrator import locks
from orchestrator.db.rows import Claimed, DispatchRow
from orchestrator.db.store import Store
from orchestrator.states import claim_for_dispatch
from orchestrator.tasks import task_from_claim
from orchestrator.workers import STALE_S

log = logging.getLogger(__name__)

DISPATCHED = Counter("wavefarm_dispatched_total", "Task messages published", ["queue"])


class Dispatcher:
    def __init__(self, app: Celery, *, window_factor: float = 2.0, stale_s: float = STALE_S,
                 slots_ttl_s: float = 1.0) -> None:
        self.app = app
        self.slots_ttl_s = slots_ttl_s
        self.window_factor = window_factor
        self.stale_s = stale_s
        self._turn = 0  # rotates which batch of a priority level is served first
        # Live slots change with heartbeats (every 10 s): read them once a second, not
        # every turn. A worker that just stopped is still counted for up to a second.
        self._slots: dict[str, int] = {}
        self._slots_read_at = float("-inf")
        self._declared: set[str] = set()  # queues declared on the broker by this process

    def dispatch(self, store: Store) -> int:
        """Publish what the queues have room for, in a transaction of its own."""
        with store.transaction():
            return self.dispatch_in(store)

    def dispatch_in(self, store: Store) -> int:
        """Publish what the queues have room for; return how many messages were sent.

        Inside the caller's transaction, whose commit makes the claims durable: the
        broker has every message once this returns. The dispatch lock is held until
        that commit, and results for interactions this transaction created wait on it
        (orchestrator/results.py).
        """
        if not store.try_lock(locks.DISPATCH):
            return 0  # another serve process is dispatching right now
        view = store.dispatch_view()
        pending = [r for r in view if r.what == "pending"]
        if not pending:
            return 0
        slots = self._live_slots(store)
        # Queue windows are shared by the actors that map to one queue (all scripts).
        used: dict[str, int] = defaultdict(int)
        for r in view:
            if r.what == "in_flight":
                used[queue_for(r.kind, r.actor)] += r.n
        self._turn += 1
        try:
            return self._publish_turn(store, pending, used, slots)
        except Exception:
            self._declared.clear()  # the broker may have lost them: declare anew
            raise

    def _publish_turn(self, store: Store, pending: list[DispatchRow], used: dict[str, int],
                      slots: dict[str, int]) -> int:
        """Claim and publish each actor's share of its queue's free window."""
        sent = 0
        with self.app.producer_or_acquire() as producer:
            transactional: bool | None = None  # decided at the first message of the turn
            for (kind, actor), batches in groupby(pending, key=lambda r: (r.kind, r.actor)):
                queue = queue_for(kind, actor)
                free = math.ceil(self.window_factor * slots.get(queue, 0)) - used[queue]
                if free <= 0:
                    continue
                rows = self._claim_fairly(store, kind, actor, list(batches), free)
                if rows and transactional is None:
                    transactional = self._begin(producer)
                for row in rows:
                    self._publish(producer, row, queue)
                used[queue] += len(rows)
                sent += len(rows)
                if rows:
                    DISPATCHED.labels(queue).inc(len(rows))
            if transactional:
                # The broker has every message of the turn once this returns; only
                # then does Postgres commit them as dispatched.
                producer.channel.tx_commit()
        return sent

    def _live_slots(self, store: Store) -> dict[str, int]:
        now = time.monotonic()
        if now - self._slots_read_at >= self.slots_ttl_s:
            self._slots = {r.queue: r.slots for r in store.live_capacity(self.stale_s)}
            self._slots_read_at = now
        return self._slots

    def _claim_fairly(self, store: Store, kind: str, actor: str, batches: list[DispatchRow],
                      free: int) -> list[Claimed]:
        """Claim up to `free` of one actor's pending work from `batches` (each with its
        priority): highest priority first, equal priorities in turns."""
        batches = sorted(batches, key=lambda b: (-b.priority, b.batch_id))
        claimed: list[Claimed] = []
        for _, level in groupby(batches, key=lambda b: b.priority):
            active = [b.batch_id for b in level]
            start = self._turn % len(active)
            active = active[start:] + active[:start]
            while free > 0 and active:
                share = max(1, free // len(active))
                still_pending = []
                for batch_id in active:
                    want = min(share, free)
                    if want <= 0:
                        still_pending.append(batch_id)
                        continue
                    rows = claim_for_dispatch(store, kind=kind, actor=actor, batch_id=batch_id, limit=want)
                    claimed += rows
                    free -= len(rows)
                    if len(rows) == want:
                        still_pending.append(batch_id)
                active = still_pending
            if free <= 0:
                break
        return claimed

    def _publish(self, producer, row: Claimed, queue: str) -> None:
        task = task_from_claim(row)
        self.app.send_task(
            task_name(row.kind),
            args=[task.model_dump(mode="json")],
            queue=queue,
            routing_key=queue,
            # Readable in Flower, and the same id for a re-sent duplicate of one attempt.
            task_id=f"i{row.id}.a{row.attempt}",
            # What Flower shows as the task's arguments: which interaction, not a
            # truncated repr of its prompt (which Celery would also spend time making).
            argsrepr=f"interaction {row.id} attempt {row.attempt}: run {row.run_id}, step {row.step}",
            kwargsrepr="{}",
            retry=False,  # a broker that is away fails the transaction: the rows stay pending
            producer=producer,
            # Declared once, then not again: kombu would re-bind and copy the queue's
            # declaration on every publish (4% of serve's CPU at zero latency). Workers
            # declare the queues they consume too, and a queue gets work only while a
            # live worker consumes it; after a broker error everything is declared anew.
            declare=[] if queue in self._declared else None,
        )
        self._declared.add(queue)

    def _begin(self, producer) -> bool:
        """Put the channel in AMQP transaction mode, unless every publish is confirmed
        already (an app made without batched_publish) or the transport has no
        transactions (Redis: its LPUSH has returned once the broker has the message)."""
        channel = producer.channel
        if self.app.conf.broker_transport_options.get("confirm_publish") or not hasattr(channel, "tx_select"):
            return False
        if not getattr(channel, "_wavefarm_tx", False):  # a channel stays in transaction mode
            channel.tx_select()
            channel._wavefarm_tx = True
        return True
