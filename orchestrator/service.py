"""`orchestrator serve` in distributed mode: the loop that owns the farm.

Each turn: take the reports that arrived (results, heartbeats), apply them in one
transaction and only then acknowledge them; dispatch what became ready; now and then
sweep deadlines. A database or broker that goes away is waited for, never fatal:
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

from common.messages import ResultReport, WorkerReport
from orchestrator import workers
from orchestrator.catalog import WorkflowCache
from orchestrator.dispatch import Dispatcher
from orchestrator.inbox import Delivery, Inbox
from orchestrator.metrics import APPLY_SECONDS, RESULTS
from orchestrator.results import apply_results
from orchestrator.sweeper import sweep

log = logging.getLogger(__name__)

DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


class Service:
    def __init__(self, pool: ConnectionPool, app: Celery, *, batch_size: int = 200, window_factor: float = 2.0,
                 sweep_every_s: float = 2.0, dispatch_every_s: float = 0.05, idle_wait_s: float = 0.05) -> None:
        self.pool = pool
        self.app = app
        self.inbox = Inbox(app, prefetch=batch_size * 2)
        self.dispatcher = Dispatcher(app, window_factor=window_factor)
        self.cache = WorkflowCache()
        self.batch_size = batch_size
        self.sweep_every_s = sweep_every_s
        self.dispatch_every_s = dispatch_every_s
        self.idle_wait_s = idle_wait_s
        self._last_sweep = 0.0
        self._last_dispatch = 0.0
        self.outcomes: Counter = Counter()

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
            stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
        self.inbox.close()

    def turn(self) -> None:
        deliveries = self.inbox.collect(limit=self.batch_size, wait_s=self.idle_wait_s)
        if deliveries:
            self.apply(deliveries)
        now = time.monotonic()
        if deliveries or now - self._last_dispatch >= self.dispatch_every_s:
            with self.pool.connection() as conn:
                self.dispatcher.dispatch(conn)
            self._last_dispatch = now
        if now - self._last_sweep >= self.sweep_every_s:
            with self.pool.connection() as conn:
                swept = sweep(conn, self.cache)
            if swept:
                log.warning("deadline passed with no result for %d interaction(s): %s", sum(swept.values()),
                            dict(swept))
                self._count(swept)
            self._last_sweep = now

    def apply(self, deliveries: list[Delivery]) -> None:
        results = [d.report.result for d in deliveries if isinstance(d.report, ResultReport)]
        statuses = [d.report.status for d in deliveries if isinstance(d.report, WorkerReport)]
        t0 = time.perf_counter()
        with self.pool.connection() as conn:
            if statuses:
                workers.record(conn, statuses)
            if results:
                self._count(apply_results(conn, results, self.cache))
        APPLY_SECONDS.observe(time.perf_counter() - t0)
        # Only now: the transaction that applied them has committed.
        self.inbox.ack(deliveries)

    def _count(self, outcomes: Counter) -> None:
        self.outcomes.update(outcomes)
        for outcome, n in outcomes.items():
            RESULTS.labels(outcome).inc(n)
