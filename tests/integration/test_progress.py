"""Progress read from the database: `status --json`'s rate, ETA and progress block, the
watch snapshot of an escalated batch, and the batch and circuit gauges Prometheus scrapes."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import batches, catalog, overview
from orchestrator.db import open_pool
from orchestrator.db.store import Store
from orchestrator.metrics import FarmCollector
from orchestrator.progress import snapshot
from orchestrator.workflow import load_text
from tests.integration.helpers import write_csv

TWO_STEPS = """
name: two_steps
steps:
  - name: first
    script: echo.py
    input: {x: "{{ input.x }}"}
    next:
      - {when: "*", to: second}
  - name: second
    model: "m:1"
    prompt: "second {{ input.x }}"
"""


@pytest.fixture
def batch_id(conn, tmp_path) -> int:
    """Ten runs waiting at their first step; the batch made two hours ago (a full minute
    of rate window)."""
    store = Store(conn)
    catalog.store(store, load_text(TWO_STEPS), TWO_STEPS)
    csv_path = write_csv(tmp_path / "rows.csv", ["x"], [[str(i)] for i in range(10)])
    made = batches.submit(store, csv_path, "two_steps").batch_id
    conn.execute("UPDATE batches SET created_at = now() - interval '2 hours' WHERE id = %s", (made,))
    return made


def end_runs(conn, batch_id: int, n: int, *, ago: str, status: str = "completed") -> None:
    conn.execute("UPDATE runs SET status = %s, ended_at = now() - %s::interval, end_reason = 'test'"
                 " WHERE id IN (SELECT id FROM runs WHERE batch_id = %s AND status = 'running' ORDER BY id LIMIT %s)",
                 (status, ago, batch_id, n))


def test_status_gives_the_rate_over_the_last_minute_and_an_eta(conn, batch_id):
    fresh = overview.batch_status(Store(conn), batch_id)
    assert fresh["progress"] == {"ended": 0, "total": 10}
    assert fresh["rate_per_min"] == 0 and fresh["eta_s"] is None      # nothing ended: no guess
    assert fresh["state"] == "running" and fresh["runs"]["running"] == 10   # the old keys stay

    end_runs(conn, batch_id, 1, ago="5 minutes")    # long ago: not in the rate
    end_runs(conn, batch_id, 3, ago="10 seconds", status="failed")
    status = overview.batch_status(Store(conn), batch_id)
    assert status["progress"] == {"ended": 4, "total": 10}
    assert status["rate_per_min"] == 3.0
    assert status["eta_s"] == 120            # 6 left at 3 a minute

    Store(conn).pause_batch(batch_id, "user")      # waits for a resume: no ETA
    paused = overview.batch_status(Store(conn), batch_id)
    assert paused["state"] == "paused" and paused["rate_per_min"] == 3.0 and paused["eta_s"] is None

    end_runs(conn, batch_id, 6, ago="1 second")
    done = overview.batch_status(Store(conn), batch_id)
    assert done["state"] == "done" and done["eta_s"] == 0


def test_the_snapshot_counts_steps_models_outcomes_and_failures(conn, batch_id):
    conn.execute("UPDATE interactions SET status = 'dispatched' WHERE id IN"
                 " (SELECT id FROM interactions WHERE batch_id = %s ORDER BY id LIMIT 2)", (batch_id,))
    conn.execute("UPDATE interactions SET status = 'failed', failure_class = 'script_error',"
                 " failure_message = 'exit 3' WHERE id IN (SELECT id FROM interactions WHERE batch_id = %s"
                 " AND status = 'pending' ORDER BY id LIMIT 3)", (batch_id,))
    end_runs(conn, batch_id, 3, ago="2 seconds", status="failed")
    snap = snapshot(Store(conn), batch_id)
    assert snap.state == "running" and not snap.stuck
    assert snap.progress.ended == 3 and snap.progress.failed == 3 and snap.progress.total == 10
    [first] = snap.steps
    assert (first.step, first.done, first.in_flight, first.waiting) == ("first", 3, 2, 5)
    assert snap.models == []                  # no AI step has run yet
    assert snap.failures == {"script_error": 3}
    assert snap.eta_s == 140                  # 7 left at 3 a minute


def test_an_escalated_batch_with_only_held_work_left_is_stuck(conn, batch_id):
    store = Store(conn)
    store.escalate(batch_id, "first", "script_error", "10 attempts in a row failed", [])
    snap = snapshot(store, batch_id)
    assert snap.state == "escalated" and "step first: 10 attempts" in snap.reason
    assert snap.stuck                         # pending work of the held step waits for a person
    assert snap.eta_s is None
    conn.execute("UPDATE interactions SET status = 'dispatched' WHERE id IN"
                 " (SELECT id FROM interactions WHERE batch_id = %s ORDER BY id LIMIT 1)", (batch_id,))
    assert not snapshot(store, batch_id).stuck  # a call in flight may still end something
    store.pause_batch(batch_id, "user")
    paused = snapshot(store, batch_id)
    assert paused.state == "paused" and not paused.stuck


def scrape(collector: FarmCollector) -> dict[tuple[str, frozenset], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        text = generate_latest(registry).decode()
    finally:
        registry.unregister(collector)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def labels(**kv: str) -> frozenset:
    return frozenset(kv.items())


def test_the_collector_exposes_batch_state_runs_escalations_eta_and_open_circuits(conn, db_url, batch_id):
    conn.execute("INSERT INTO workers (name, kind, queues, concurrency, server, circuit)"
                 " VALUES ('gpu@a:11434', 'ai', '{ai.m-1}', 2, 'http://a:11434', 'open'),"
                 "        ('gpu@b:11434', 'ai', '{ai.m-1}', 2, 'http://b:11434', 'closed')")
    end_runs(conn, batch_id, 4, ago="10 seconds")
    b = str(batch_id)
    pool = open_pool(db_url, size=1)
    try:
        collector = FarmCollector(pool)
        first = scrape(collector)
        assert first[("wavefarm_batch_state", labels(batch=b, workflow="two_steps", state="running"))] == 1
        assert first[("wavefarm_batch_state", labels(batch=b, workflow="two_steps", state="done"))] == 0
        assert first[("wavefarm_batch_runs", labels(batch=b, workflow="two_steps", status="running"))] == 6
        assert first[("wavefarm_batch_runs", labels(batch=b, workflow="two_steps", status="completed"))] == 4
        assert first[("wavefarm_batch_escalations", labels(batch=b, workflow="two_steps"))] == 0
        assert first[("wavefarm_batch_eta_seconds", labels(batch=b, workflow="two_steps"))] == 90
        assert first[("wavefarm_worker_circuit_open", labels(worker="gpu@a:11434", server="http://a:11434"))] == 1
        assert first[("wavefarm_worker_circuit_open", labels(worker="gpu@b:11434", server="http://b:11434"))] == 0

        Store(conn).escalate(batch_id, "first", "script_error", "always fails", [])
        escalated = scrape(collector)
        assert escalated[("wavefarm_batch_state", labels(batch=b, workflow="two_steps", state="escalated"))] == 1
        assert escalated[("wavefarm_batch_escalations", labels(batch=b, workflow="two_steps"))] == 1

        # Once it ended, the batch keeps its series (done) for the hour after a scrape saw it running.
        end_runs(conn, batch_id, 6, ago="20 minutes")
        done = scrape(collector)
        assert done[("wavefarm_batch_state", labels(batch=b, workflow="two_steps", state="done"))] == 1
        assert done[("wavefarm_batch_eta_seconds", labels(batch=b, workflow="two_steps"))] == 0
        # A finished batch no scrape saw running, made long ago, has no series at all.
        assert not any(k[0].startswith("wavefarm_batch") for k in scrape(FarmCollector(pool)))
    finally:
        pool.close()
