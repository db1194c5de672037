"""`orchestrator serve` in distributed mode: the loop that owns the farm.

Each turn: take the reports that arrived (results, heartbeats), apply them and
dispatch what became ready in one transaction, and only then acknowledge them; now
and then sweep deadlines. A database or broker that goes away is waited for, never fatal:
unacknowledged reports come back from the broker, unpublished work is still pending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import psycopg
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from psycopg_pool import ConnectionPool, PoolTimeout

from common.messages import HandBack, HandBackReport, ResultReport, TaskResult, WorkerReport, WorkerStatus
from common.retries import RetryPolicy
from orchestrator import workers
from orchestrator.catalog import WorkflowCache
from orchestrator.db.store import CONTROLS, Store
from orchestrator.dispatch import Dispatcher, DispatchTurn
from orchestrator.broadcast import Broadcaster
from orchestrator.holds import Announcer, take_back
from orchestrator.residency import Placer
from orchestrator.inbox import Delivery, Inbox
from orchestrator.metrics import APPLY_SECONDS, RESULTS
from orchestrator.results import Applied, apply_in, log_applied, outcome_counts, whole_or_isolated
from orchestrator.sweeper import sweep

log = logging.getLogger(__name__)

DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
# How many times one turn dispatches again after the cache answered some of what it
# claimed: a chain whose every step is cached moves this many steps in one transaction.
CACHE_ROUNDS = 20


class Service:
    def __init__(self, pool: ConnectionPool, app: Celery, *, batch_size: int = 200, window_factor: float = 2.0,
                 sweep_every_s: float = 2.0, dispatch_every_s: float = 0.05, idle_wait_s: float = 0.01) -> None:
        self.pool = pool
        self.app = app
        self.inbox = Inbox(app, prefetch=batch_size * 2)
        self.dispatcher = Dispatcher(app, window_factor=window_factor)
        self.broadcaster = Broadcaster(app)
        self.holds = Announcer(app, broadcaster=self.broadcaster)
        self.cache = WorkflowCache()
        self.placer = Placer(self.broadcaster, self.cache)
        self.policy = RetryPolicy.from_settings()
        self.batch_size = batch_size
        self.sweep_every_s = sweep_every_s
        self.dispatch_every_s = dispatch_every_s
        self.idle_wait_s = idle_wait_s
        self._last_sweep = 0.0
        self._last_dispatch = 0.0
        self._again = False
        self.outcomes: Counter = Counter()
        self._conn: psycopg.Connection | None = None
        self._store: Store | None = None

    def run(self, stop: threading.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                self.turn()
                backoff = 0.5
                continue
            except DB_ERRORS as exc:
                log.warning("database unavailable (%s); retrying in %.1fs", type(exc).__name__, backoff)
            except (BrokerError, *self.inbox.connection_errors) as exc:
                log.warning("broker unavailable (%s); retrying in %.1fs", type(exc).__name__, backoff)
            except Exception:
                # A bug must not take the farm down: say it loudly and try again; the
                # database and the broker still hold everything.
                log.exception("serve turn failed; retrying in %.1fs", backoff)
            self.inbox.close()  # what we held goes back to the broker
            self.holds.close()
            self._release()  # a broken connection is discarded by the pool
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
        self.inbox.close()
        self.holds.close()
        self._release()

    def turn(self) -> None:
        deliveries = self.inbox.collect(limit=self.batch_size, wait_s=self.idle_wait_s)
        now = time.monotonic()
        notes = self._notifications()
        if CONTROLS in notes:
            self.holds.changed()
        if any(n != CONTROLS for n in notes):
            self.placer.wake()  # a new batch: its models get hosts now, not at the next round
        # Before dispatching: after a resume, the workers must have heard it before the
        # work it released reaches them, or they would hand it back.
        self.holds.announce_if_due(self._connection())
        self._place()
        if deliveries or notes or self._again or now - self._last_dispatch >= self.dispatch_every_s:
            self._again = False
            self.apply_and_dispatch(deliveries)
            self._last_dispatch = now
        if now - self._last_sweep >= self.sweep_every_s:
            swept = sweep(self._connection(), self.cache, policy=self.policy)
            if swept:
                log.warning("deadline passed with no result for %d interaction(s): %s", sum(swept.values()),
                            dict(swept))
                self._count(swept)
            self._last_sweep = now

    def apply_and_dispatch(self, deliveries: list[Delivery]) -> None:
        """One transaction: record heartbeats, apply results (their children become
        pending), publish what the queues have room for; then acknowledge the reports.

        The children of a result are on their way to a worker in the same turn that
        applied it, with one commit for both. Dispatching runs in a savepoint: a broker
        that refuses the publish costs the dispatch only, and the results are still
        recorded and acknowledged (the work stays pending for the next turn).
        """
        results = [d.report.result for d in deliveries if isinstance(d.report, ResultReport)]
        statuses = [d.report.status for d in deliveries if isinstance(d.report, WorkerReport)]
        hand_backs = [d.report.hand_back for d in deliveries if isinstance(d.report, HandBackReport)]
        self.holds.heard_from(statuses)
        self.placer.heard_from(statuses)
        t0 = time.perf_counter()
        applied, broker_error = whole_or_isolated(
            lambda isolate: self._turn_transaction(statuses, results, hand_backs, isolate=isolate), len(results))
        if deliveries:
            APPLY_SECONDS.observe(time.perf_counter() - t0)
        log_applied(applied)
        self._count(outcome_counts(applied))
        # Only now: the transaction that applied them has committed.
        self.inbox.ack(deliveries)
        if broker_error is not None:
            raise broker_error

    def _turn_transaction(self, statuses: list[WorkerStatus], results: list[TaskResult], hand_backs: list[HandBack],
                          *, isolate: bool) -> tuple[list[Applied], BaseException | None]:
        store = self._connection()
        broker_error: BaseException | None = None
        with store.transaction():
            if statuses:
                self._record_workers(store, statuses)
            if hand_backs:
                taken = take_back(store, hand_backs)
                log.info("%d held attempt(s) handed back unstarted, %d of them pending again", len(hand_backs),
                         len(taken))
            applied = apply_in(store, results, self.cache, isolate=isolate, policy=self.policy)
            try:
                for _ in range(CACHE_ROUNDS):
                    turn = self._dispatch(store)
                    # Claimed but not sendable: each one's attempt fails, with the reason.
                    # Answered from the cache: completed now, and their children, made
                    # by this apply, are dispatched (or answered) in the next round.
                    applied += apply_in(store, [*turn.undeliverable, *turn.cached], self.cache, isolate=isolate,
                                        policy=self.policy)
                    if not turn.cached:
                        break
                else:
                    self._again = True  # more may be answered: the next turn dispatches at once
            except (BrokerError, *self.inbox.connection_errors) as exc:
                if not results and not statuses:
                    raise
                broker_error = exc
        return applied, broker_error

    def _place(self) -> None:
        """Placement's round, when due. A bug in it must not stop the turn: the hosts keep
        the last placement they heard, and the work goes on."""
        try:
            store = self._connection()
            self.placer.place_if_due(store, lambda: self.dispatcher.live_digests(store))
        except (*DB_ERRORS, BrokerError):
            raise
        except Exception:
            log.exception("placement failed; the hosts keep the placement they have")

    def _dispatch(self, store: Store) -> DispatchTurn:
        """The turn's dispatch, in a savepoint: a broker that refuses costs only the
        dispatch. One batch or queue whose claims raise must not stop the others: the
        turn is dispatched again actor by actor, and what still raises is skipped."""
        try:
            with store.transaction():
                return self.dispatcher.dispatch_in(store)
        except (BrokerError, *self.inbox.connection_errors, *DB_ERRORS):
            raise
        except Exception:
            log.exception("a dispatch turn failed: dispatching actor by actor")
        with store.transaction():
            return self.dispatcher.dispatch_in(store, isolate=True)

    @staticmethod
    def _record_workers(store: Store, statuses: list[WorkerStatus]) -> None:
        """Heartbeats, in a savepoint: one the database refuses is dropped (the worker
        sends another in 10 s), not the turn's results with it."""
        try:
            workers.record(store, statuses)
        except DB_ERRORS:
            raise
        except Exception:
            log.exception("could not record %d heartbeat(s): dropped", len(statuses))

    def _connection(self) -> Store:
        """serve's own connection, held across turns: taking one from the pool each turn
        would cost a liveness check (a round trip) every time. One that broke (Postgres
        restarted) is handed back on the turn's error, and the next turn takes a new one.
        It listens for submissions and controls (`_notifications`)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._release()
            conn = self.pool.getconn()
            self._store = Store(conn)
            self._store.listen_for_work()
            self._conn = conn
        return self._store

    def _notifications(self) -> list[str]:
        """What submissions and controls said since the last look: a new batch starts at
        once instead of at the next idle dispatch tick, a pause reaches the workers at
        once. Reading what the server already sent costs no round trip."""
        return self._connection().notifications()

    def _release(self) -> None:
        if self._conn is not None:
            conn, store, self._conn, self._store = self._conn, self._store, None, None
            try:
                if not conn.broken:
                    store.unlisten()  # the pool's next user must not get our notifications
                self.pool.putconn(conn)
            except Exception:  # broken after all, or a pool already closed
                conn.close()

    def _count(self, outcomes: Counter) -> None:
        self.outcomes.update(outcomes)
        for outcome, n in outcomes.items():
            RESULTS.labels(outcome).inc(n)
