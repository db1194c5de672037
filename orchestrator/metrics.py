"""Prometheus metrics of `orchestrator serve`.

Counters for what this process did (results applied by outcome, apply latency,
messages dispatched per queue, in dispatch.py); gauges read from Postgres at scrape
time for what the farm holds (open interactions by state, step and model; queue
windows from worker heartbeats), so several serve processes report the same truth.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg_pool import ConnectionPool

from common.queues import queue_for
from orchestrator.db import views
from orchestrator.db.store import Store
from orchestrator.workers import STALE_S

log = logging.getLogger(__name__)

RESULTS = Counter("wavefarm_results_total", "Reports applied, by outcome", ["outcome"])
APPLY_SECONDS = Histogram("wavefarm_apply_seconds", "Time to apply one batch of results (one transaction)",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


class FarmCollector(Collector):
    def __init__(self, pool: ConnectionPool, stale_s: float = STALE_S) -> None:
        self.pool = pool
        self.stale_s = stale_s

    def collect(self):
        interactions = GaugeMetricFamily("wavefarm_interactions", "Open interactions by state, step and actor",
                                         labels=["status", "step", "kind", "actor"])
        queue_open = GaugeMetricFamily("wavefarm_queue_interactions", "Open interactions per queue",
                                       labels=["queue", "status"])
        slots = GaugeMetricFamily("wavefarm_queue_slots", "Slots of live workers consuming the queue", labels=["queue"])
        try:
            with self.pool.connection(timeout=2) as conn:
                store = Store(conn)
                per_queue: dict[tuple[str, str], int] = {}
                for r in views.open_by_step(store):
                    interactions.add_metric([r.status, r.step, r.kind, r.actor], r.n)
                    key = (queue_for(r.kind, r.actor), r.status)
                    per_queue[key] = per_queue.get(key, 0) + r.n
                for (queue, status), n in per_queue.items():
                    queue_open.add_metric([queue, status], n)
                for r in store.live_capacity(self.stale_s):
                    slots.add_metric([r.queue], r.slots)
        except Exception as exc:  # a scrape during a database outage shows the process metrics only
            log.warning("metrics: cannot read the database: %s", type(exc).__name__)
        yield interactions
        yield queue_open
        yield slots
