"""Prometheus metrics of `orchestrator serve`.

Counters for what this process did (results applied by outcome, apply latency,
messages dispatched per queue, in dispatch.py); gauges read from Postgres at scrape
time for what the farm holds (open interactions by state, step and model; queue
windows from worker heartbeats; each batch's runs, state, escalations and ETA; each
live worker's circuit), so several serve processes report the same truth.

Batch series are kept few: a batch has them while it has running runs, and for an hour
after it was made, cancelled or seen ending (so its `done` is scraped before the series
go); a purged batch has none. deploy/prometheus/alerts.yml alerts on these.

Per model, counters of what the farm's models used since it began: tokens (prompt and
output), model seconds (call time), cost (at the prices in force when each attempt was
recorded; unpriced counts 0) and cache hits. They are sums over usage_totals, which
store_decisions keeps per batch, step and model as it records attempts: a scrape reads a
few rows per batch, never the attempts table, and a purge does not make them go down.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from decimal import Decimal

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg_pool import ConnectionPool

from common.queues import queue_for
from orchestrator.db import views
from orchestrator.db.store import Store
from orchestrator.overview import BATCH_STATES, state_of
from orchestrator.pace import held_eta, pace_of
from orchestrator.states import RunStatus
from orchestrator.workers import STALE_S

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelUsage:
    model: str
    attempts: int
    prompt_tokens: int
    output_tokens: int
    call_s: float
    cost: Decimal
    cache_hits: int


def usage_families(rows: list[ModelUsage]) -> list[CounterMetricFamily]:
    """The per-model counters of one scrape."""
    tokens = CounterMetricFamily("wavefarm_model_tokens", "Tokens the models counted, by model and kind "
                                 "(prompt, output); every attempt, retries and ignored results included",
                                 labels=["model", "kind"])
    seconds = CounterMetricFamily("wavefarm_model_seconds", "Model call time, by model", labels=["model"])
    cost = CounterMetricFamily("wavefarm_model_cost", "Cost of the models' calls at the prices in force when "
                               "recorded (unpriced: 0), by model", labels=["model"])
    attempts = CounterMetricFamily("wavefarm_model_attempts", "Attempts recorded, by model", labels=["model"])
    hits = CounterMetricFamily("wavefarm_cache_hits", "Interactions answered from the cache, by model",
                               labels=["model"])
    for r in rows:
        tokens.add_metric([r.model, "prompt"], r.prompt_tokens)
        tokens.add_metric([r.model, "output"], r.output_tokens)
        seconds.add_metric([r.model], r.call_s)
        cost.add_metric([r.model], float(r.cost))
        attempts.add_metric([r.model], r.attempts)
        hits.add_metric([r.model], r.cache_hits)
    return [tokens, seconds, cost, attempts, hits]

RESULTS = Counter("wavefarm_results_total", "Reports applied, by outcome", ["outcome"])
APPLY_SECONDS = Histogram("wavefarm_apply_seconds", "Time to apply one batch of results (one transaction)",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
SHOW_ENDED_S = 3600.0  # how long a batch keeps its series after a scrape last saw it running


class FarmCollector(Collector):
    def __init__(self, pool: ConnectionPool, stale_s: float = STALE_S) -> None:
        self.pool = pool
        self.stale_s = stale_s
        self._running_seen: dict[int, float] = {}  # batch id -> when a scrape last saw it running

    def collect(self):
        interactions = GaugeMetricFamily("wavefarm_interactions", "Open interactions by state, step and actor",
                                         labels=["status", "step", "kind", "actor"])
        queue_open = GaugeMetricFamily("wavefarm_queue_interactions", "Open interactions per queue",
                                       labels=["queue", "status"])
        slots = GaugeMetricFamily("wavefarm_queue_slots", "Slots of live workers consuming the queue", labels=["queue"])
        families = _BatchFamilies()
        usage: list[ModelUsage] = []
        circuit = GaugeMetricFamily("wavefarm_worker_circuit_open",
                                    "1 when a live worker's circuit to its model server is open (calls refused)",
                                    labels=["worker", "server"])
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
                for b in views.batch_gauges(store, self._shown()):
                    families.add(b)
                    if b.runs > b.ended:
                        self._running_seen[b.batch_id] = time.monotonic()
                for w in store.workers(self.stale_s):
                    if w.live:
                        circuit.add_metric([w.name, w.server or ""], 1 if w.circuit == "open" else 0)
                usage = store.all("metrics_usage", None, ModelUsage)
        except Exception as exc:  # a scrape during a database outage shows the process metrics only
            log.warning("metrics: cannot read the database: %s", type(exc).__name__)
        yield interactions
        yield queue_open
        yield slots
        yield from families.all()
        yield circuit
        yield from usage_families(usage)

    def _shown(self) -> list[int]:
        """Batches seen running within the hour: shown until then, done or not."""
        now = time.monotonic()
        self._running_seen = {b: t for b, t in self._running_seen.items() if now - t < SHOW_ENDED_S}
        return sorted(self._running_seen)


class _BatchFamilies:
    """The per-batch gauges of one scrape."""

    def __init__(self) -> None:
        labels = ["batch", "workflow"]
        self.runs = GaugeMetricFamily("wavefarm_batch_runs", "Runs of a batch by status",
                                      labels=[*labels, "status"])
        self.state = GaugeMetricFamily("wavefarm_batch_state",
                                       "1 for the batch's current state (running, paused, escalated, done)",
                                       labels=[*labels, "state"])
        self.escalations = GaugeMetricFamily("wavefarm_batch_escalations",
                                             "Open escalations of a batch: steps held until a person resumes it",
                                             labels=labels)
        self.eta = GaugeMetricFamily("wavefarm_batch_eta_seconds",
                                     "Seconds until every run of the batch has ended at the last minute's rate "
                                     "(absent when nothing ended in the last minute, or the batch is paused)", labels=labels)

    def add(self, b: views.BatchGauge) -> None:
        ids = [str(b.batch_id), b.workflow_name]
        counts = {RunStatus.RUNNING.value: b.runs - b.ended, "completed": b.completed, "failed": b.failed,
                  "cancelled": b.cancelled}
        for status in RunStatus:
            self.runs.add_metric([*ids, status.value], counts[status.value])
        state = state_of(running=b.runs - b.ended, paused=b.paused, escalated=b.escalations > 0)
        for name in BATCH_STATES:
            self.state.add_metric([*ids, name], 1 if name == state else 0)
        self.escalations.add_metric(ids, b.escalations)
        eta = held_eta(pace_of(b).eta_s, state=state)
        if eta is not None:
            self.eta.add_metric(ids, eta)

    def all(self) -> list[GaugeMetricFamily]:
        return [self.runs, self.state, self.escalations, self.eta]
