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
from dataclasses import dataclass, field
from itertools import groupby

import psycopg
from celery import Celery
from prometheus_client import Counter

from common.messages import Task, TaskResult

from common.queues import queue_for, task_name
from orchestrator import cache, locks
from orchestrator.budget import Budget, over_budget
from orchestrator.db.rows import Claimed, DispatchRow, Guard
from orchestrator.db.store import Store
from orchestrator.states import Status, claim_cache_answered, claim_for_dispatch, transition_many
from orchestrator.tasks import task_or_failure
from orchestrator.workers import STALE_S

log = logging.getLogger(__name__)

DISPATCHED = Counter("wavefarm_dispatched_total", "Task messages published", ["queue"])
DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
UNHOSTED_ANSWERS = 500  # cache answers per batch and model per second while the model has no host


@dataclass
class DispatchTurn:
    sent: int = 0
    # Claimed, but no task message can be made of them: their attempt's failure.
    undeliverable: list[TaskResult] = field(default_factory=list)
    # Claimed and answered from the cache (orchestrator/cache.py): results to apply now.
    cached: list[TaskResult] = field(default_factory=list)


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
        self._digests: dict[str, list[str]] = {}  # model -> the digests live hosts serve (the cache's)
        self._slots_read_at = float("-inf")
        self._declared: set[str] = set()  # queues declared on the broker by this process
        self._unhosted_at: dict[str, float] = {}  # actor -> when its cache answers were last looked for

    def dispatch(self, store: Store, *, isolate: bool = False) -> DispatchTurn:
        """Publish what the queues have room for, in a transaction of its own."""
        with store.transaction():
            return self.dispatch_in(store, isolate=isolate)

    def dispatch_in(self, store: Store, *, isolate: bool = False) -> DispatchTurn:
        """Publish what the queues have room for; say how many messages were sent, and
        which claimed interactions could not be made into a message (the caller records
        them failed, in the same transaction).

        Inside the caller's transaction, whose commit makes the claims durable: the
        broker has every message once this returns. The dispatch lock is held until
        that commit, and results for interactions this transaction created wait on it
        (orchestrator/results.py).

        `isolate`: each actor's claims in a savepoint of their own, one that raises
        skipped and said, so that one batch or queue that cannot be dispatched (a row
        the database refuses to claim) does not stop the others. The caller asks for it
        when a whole turn raised.
        """
        turn = DispatchTurn()
        if not store.try_lock(locks.DISPATCH):
            return turn  # another serve process is dispatching right now
        view = store.dispatch_view()
        pending = [r for r in view if r.what == "pending"]
        if not pending:
            return turn
        slots = self._live_slots(store)
        # Queue windows are shared by the actors that map to one queue (all scripts).
        used: dict[str, int] = defaultdict(int)
        for r in view:
            if r.what == "in_flight":
                used[queue_for(r.kind, r.actor)] += r.n
        self._turn += 1
        limited = [(r.batch_id, r.kind, r.actor) for r in pending if r.limited]
        budget = Budget.read(store, limited) if limited else Budget()
        if budget.spent_all:
            # A limit set at or below the spend (a limit of 0, a resubmission with a lower
            # one): no call may go, and the batch pauses now rather than wait silently.
            over_budget(store, budget.spent_all)
        try:
            self._publish_turn(store, pending, used, slots, turn, isolate, budget)
        except Exception:
            self._declared.clear()  # the broker may have lost them: declare anew
            raise
        return turn

    def _publish_turn(self, store: Store, pending: list[DispatchRow], used: dict[str, int],
                      slots: dict[str, int], turn: DispatchTurn, isolate: bool, budget: Budget) -> None:
        """Claim and publish each actor's share of its queue's free window."""
        with self.app.producer_or_acquire() as producer:
            transactional: bool | None = None  # decided at the first message of the turn
            try:
                for (kind, actor), group in groupby(pending, key=lambda r: (r.kind, r.actor)):
                    batches = list(group)
                    queue = queue_for(kind, actor)
                    free = math.ceil(self.window_factor * slots.get(queue, 0)) - used[queue]
                    if free <= 0:
                        if kind == "ai" and not slots.get(queue):
                            self._answer_unhosted(store, actor, batches, turn)
                        continue
                    rows = self._claim_fairly(store, kind, actor, batches, free, isolate, budget, turn)
                    tasks = []
                    for row in rows:
                        made = task_or_failure(row)
                        if isinstance(made, TaskResult):
                            turn.undeliverable.append(made)
                        else:
                            tasks.append((row, made))
                    if tasks and transactional is None:
                        transactional = self._begin(producer)
                    for row, task in tasks:
                        self._publish(producer, row, task, queue)
                    used[queue] += len(tasks)
                    turn.sent += len(tasks)
                    if tasks:
                        DISPATCHED.labels(queue).inc(len(tasks))
            except BaseException:
                if transactional:
                    # What this turn published must not reach the workers: its claims
                    # are rolled back with the transaction that made them.
                    producer.channel.tx_rollback()
                raise
            if transactional:
                # The broker has every message of the turn once this returns; only
                # then does Postgres commit them as dispatched.
                producer.channel.tx_commit()

    def _claim(self, store: Store, kind: str, actor: str, batch_id: int, limit: int,
               isolate: bool) -> list[Claimed] | None:
        """One batch's claim; with `isolate`, in a savepoint of its own: None when it
        raised (said, and the batch skipped this turn; the others go on)."""
        if not isolate:
            return claim_for_dispatch(store, kind=kind, actor=actor, batch_id=batch_id, limit=limit)
        try:
            with store.transaction():
                return claim_for_dispatch(store, kind=kind, actor=actor, batch_id=batch_id, limit=limit)
        except DB_ERRORS:
            raise
        except Exception:
            log.exception("cannot claim the pending work of %s %s in batch %s: skipped this turn, the rest goes on",
                          kind, actor, batch_id)
            return None

    def _answer_unhosted(self, store: Store, actor: str, batches: list[DispatchRow], turn: DispatchTurn) -> None:
        """No host consumes this model now (placement put it elsewhere, or nowhere yet):
        what the cache answers needs no host, and is answered now, once a second per
        model (placement leaves it out of the backlog, so nothing else would)."""
        now = time.monotonic()
        if now - self._unhosted_at.get(actor, float("-inf")) < self.slots_ttl_s:
            return
        self._unhosted_at[actor] = now
        digests = sorted({d for ds in self._digests.values() for d in ds})
        if not digests:
            return
        for b in batches:
            rows = claim_cache_answered(store, actor=actor, batch_id=b.batch_id, digests=digests,
                                        limit=UNHOSTED_ANSWERS)
            hits, unanswered = cache.answer(store, rows, self._digests)
            turn.cached += hits
            if unanswered:  # its entry went in the meantime: it waits for a host like the rest
                transition_many(store, [Guard(id=c.id, attempt=c.attempt) for c in unanswered],
                                from_=Status.DISPATCHED, to=Status.PENDING)

    def live_digests(self, store: Store) -> dict[str, list[str]]:
        """model -> the digests live hosts serve, as read with the slots (once a second)."""
        self._live_slots(store)
        return self._digests

    def _live_slots(self, store: Store) -> dict[str, int]:
        now = time.monotonic()
        if now - self._slots_read_at >= self.slots_ttl_s:
            self._slots = {r.queue: r.slots for r in store.live_capacity(self.stale_s)}
            self._digests = cache.live_digests(store, self.stale_s)
            self._slots_read_at = now
        return self._slots

    def _claim_fairly(self, store: Store, kind: str, actor: str, batches: list[DispatchRow],
                      free: int, isolate: bool, budget: Budget, turn: DispatchTurn) -> list[Claimed]:
        """Claim up to `free` of one actor's pending work from `batches` (each with its
        priority): highest priority first, equal priorities in turns; no more of a batch
        than its credit left allows. What the cache answers is not sent and takes no
        slot: it goes to `turn.cached`, and the claiming goes on."""
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
                    want = budget.allow(batch_id, kind, actor, min(share, free))
                    if want <= 0:
                        continue  # no credit left for more of this batch this turn
                    rows = self._claim(store, kind, actor, batch_id, want, isolate)
                    if rows is None:
                        continue  # a batch that cannot be claimed: the others share its part
                    hits, send = cache.answer(store, rows, self._digests)
                    turn.cached += hits
                    claimed += send
                    free -= len(send)
                    budget.spend(batch_id, kind, actor, len(send))
                    if len(rows) == want:
                        still_pending.append(batch_id)
                active = still_pending
            if free <= 0:
                break
        return claimed

    def _publish(self, producer, row: Claimed, task: Task, queue: str) -> None:
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
