"""Admission control, fair shares, priorities, cancellation and crash safety of the
dispatcher, against real Postgres and a real RabbitMQ vhost (no worker processes:
what reaches the broker is read back from the queues)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection

from common.celery_app import make_app
from common.messages import WorkerStatus
from orchestrator import batches, catalog, overview, workers
from orchestrator.controls import cancel_batch
from orchestrator.db.store import Store
from orchestrator.dispatch import Dispatcher
from orchestrator.workers import STALE_S
from orchestrator.workflow import load_text
from tests.distributed.farm import broker, postings

ONE_STEP = """
name: one_step
steps:
  - name: ask
    model: "m:1"
    prompt: "{{ input.title }}"
"""
QUEUE = "ai.m-1"


@pytest.fixture
def amqp_url():
    with broker("amqp") as url:
        yield url


@pytest.fixture
def app(amqp_url):
    return make_app(amqp_url, batched_publish=True)  # as serve makes it


def submit(conn, path: Path, rows: int, *, priority: int | None = None) -> int:
    """A batch of `rows` postings no other batch of the test has (rows are told apart by file name)."""
    catalog.store(Store(conn), load_text(ONE_STEP), ONE_STEP)
    first = 1000 * (ord(path.stem[0]) - ord("a"))
    return batches.submit(Store(conn), postings(path, rows, first), "one_step", priority=priority).batch_id


def heartbeat(conn, name: str, queues: list[str], concurrency: int) -> None:
    workers.record(Store(conn), [WorkerStatus(name=name, kind="ai", queues=queues, concurrency=concurrency)])


def queued(url: str, queue: str) -> int:
    with Connection(url) as c:
        return c.default_channel.queue_declare(queue, passive=True).message_count


def dispatched_per_batch(conn) -> dict[int, int]:
    rows = conn.execute("SELECT batch_id, count(*) AS n FROM interactions WHERE status = 'dispatched' GROUP BY 1")
    return {r["batch_id"]: r["n"] for r in rows}


def test_a_queue_gets_twice_its_live_slots_and_no_more(conn, app, amqp_url, tmp_path):
    batch = submit(conn, tmp_path / "a.csv", 50)
    heartbeat(conn, "gpu-1", [QUEUE], 2)
    d = Dispatcher(app, slots_ttl_s=0)
    assert d.dispatch(Store(conn)).sent == 4
    assert d.dispatch(Store(conn)).sent == 0  # the window is full until results come back
    assert queued(amqp_url, QUEUE) == 4
    assert dispatched_per_batch(conn) == {batch: 4}
    heartbeat(conn, "gpu-2", [QUEUE], 3)  # a second host joins: the window grows
    assert d.dispatch(Store(conn)).sent == 6


def test_work_for_a_queue_nobody_consumes_stays_pending_and_status_says_so(conn, app, tmp_path):
    submit(conn, tmp_path / "a.csv", 5)
    heartbeat(conn, "gpu-1", ["ai.other-model"], 4)
    assert Dispatcher(app, slots_ttl_s=0).dispatch(Store(conn)).sent == 0
    farm = overview.farm_status(Store(conn), stale_s=STALE_S)
    (q,) = [q for q in farm["queues"] if q["queue"] == QUEUE]
    assert q["pending"] == 5 and q["workers"] == 0 and q["problem"] == "no live worker consumes this queue"


def test_a_silent_worker_stops_counting(conn, app, tmp_path):
    submit(conn, tmp_path / "a.csv", 5)
    heartbeat(conn, "gpu-1", [QUEUE], 2)
    conn.execute("UPDATE workers SET last_seen = now() - interval '5 minutes'")
    assert Dispatcher(app, slots_ttl_s=0).dispatch(Store(conn)).sent == 0


def test_two_batches_share_the_window_and_priority_goes_first(conn, app, tmp_path):
    first = submit(conn, tmp_path / "a.csv", 50)
    second = submit(conn, tmp_path / "b.csv", 50)
    heartbeat(conn, "gpu-1", [QUEUE], 4)
    d = Dispatcher(app, slots_ttl_s=0)
    assert d.dispatch(Store(conn)).sent == 8
    assert dispatched_per_batch(conn) == {first: 4, second: 4}  # not first come, first served

    urgent = submit(conn, tmp_path / "c.csv", 50, priority=5)
    heartbeat(conn, "gpu-2", [QUEUE], 4)  # 8 more slots: all to the urgent batch
    assert d.dispatch(Store(conn)).sent == 8
    assert dispatched_per_batch(conn) == {first: 4, second: 4, urgent: 8}


def test_a_cancelled_batch_gets_no_more_slots(conn, app, tmp_path):
    first = submit(conn, tmp_path / "a.csv", 50)
    second = submit(conn, tmp_path / "b.csv", 50)
    heartbeat(conn, "gpu-1", [QUEUE], 2)
    d = Dispatcher(app, slots_ttl_s=0)
    d.dispatch(Store(conn))
    cancelled = cancel_batch(Store(conn), first)
    assert (cancelled.runs, cancelled.interactions) == (50, 50)
    conn.execute("UPDATE interactions SET status = 'completed' WHERE status = 'dispatched'")  # results came back
    d.dispatch(Store(conn))
    assert dispatched_per_batch(conn) == {second: 4}
    runs = overview.batch_status(Store(conn), first)["runs"]
    assert runs["cancelled"] == 50 and runs["running"] == 0


def test_a_broker_that_is_down_leaves_the_work_pending(conn, tmp_path):
    batch = submit(conn, tmp_path / "a.csv", 5)
    heartbeat(conn, "gpu-1", [QUEUE], 2)
    down = make_app("amqp://guest:guest@127.0.0.1:1//", batched_publish=True)
    down.conf.broker_connection_timeout = 1
    with pytest.raises(Exception):
        Dispatcher(down, slots_ttl_s=0).dispatch(Store(conn))
    counts = conn.execute("SELECT status, count(*) AS n FROM interactions WHERE batch_id = %s GROUP BY 1",
                          (batch,)).fetchall()
    assert counts == [{"status": "pending", "n": 5}]


def serve_turn(db_url: str, app) -> None:
    """One turn of serve's loop with nothing to apply: heartbeats none, then dispatch."""
    from orchestrator.db import open_pool
    from orchestrator.service import Service

    pool = open_pool(db_url, size=2)
    try:
        service = Service(pool, app)
        service.apply_and_dispatch([])
        service._release()
    finally:
        pool.close()


def test_a_batch_whose_work_the_database_refuses_to_claim_does_not_stop_the_others(conn, db_url, app, tmp_path):
    healthy = submit(conn, tmp_path / "a.csv", 5)
    broken = submit(conn, tmp_path / "b.csv", 5)
    heartbeat(conn, "gpu-1", [QUEUE], 4)
    # Any row of `broken` that a claim would update is refused, as a constraint or a
    # value the server cannot compute would refuse it.
    conn.execute(f"""
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.batch_id = {broken} AND NEW.status = 'dispatched' THEN
            RAISE EXCEPTION 'interval out of range'; END IF; RETURN NEW; END $$;
        CREATE TRIGGER refuse BEFORE UPDATE ON interactions FOR EACH ROW EXECUTE FUNCTION refuse();""")
    serve_turn(db_url, app)
    assert dispatched_per_batch(conn) == {healthy: 5}  # the healthy batch went out in the same turn


def test_an_interaction_no_task_can_be_made_of_fails_alone_with_the_reason(conn, db_url, app, amqp_url, tmp_path):
    batch = submit(conn, tmp_path / "a.csv", 3)
    heartbeat(conn, "gpu-1", [QUEUE], 4)
    # A row stored by an older version, or by hand: its input lacks the prompt.
    (bad,) = conn.execute("UPDATE interactions SET input = '{}' WHERE id = (SELECT min(id) FROM interactions "
                          "WHERE batch_id = %s) RETURNING id", (batch,)).fetchall()
    serve_turn(db_url, app)
    row = conn.execute("SELECT status, failure_class, failure_message FROM interactions WHERE id = %s",
                       (bad["id"],)).fetchone()
    assert (row["status"], row["failure_class"]) == ("failed", "undeliverable")
    assert "no task message can be made of it: KeyError" in row["failure_message"]
    run = conn.execute("SELECT r.status, r.end_reason FROM runs r JOIN interactions i ON i.run_id = r.id "
                       "WHERE i.id = %s", (bad["id"],)).fetchone()
    assert run["status"] == "failed" and "undeliverable" in run["end_reason"]
    assert dispatched_per_batch(conn) == {batch: 2} and queued(amqp_url, QUEUE) == 2


def test_what_the_cache_answers_needs_no_host_and_placement_does_not_wait_for_it(conn, app, tmp_path):
    """Residency: the model's host is placed elsewhere (it consumes nothing), yet the work
    the cache answers is answered, and placement's backlog leaves it out."""
    from orchestrator.residency import _Backlog

    def cached(name: str) -> str:
        text = ONE_STEP.replace("name: one_step", f"name: {name}\ndefaults: {{cache: true}}")
        catalog.store(Store(conn), load_text(text), text)
        return name

    first = batches.submit(Store(conn), postings(tmp_path / "a.csv", 3), cached("first")).batch_id
    conn.execute("UPDATE interactions SET status = 'completed', output = '\"an answer\"', cache_digest = 'd1' "
                 "WHERE batch_id = %s", (first,))
    second = batches.submit(Store(conn), postings(tmp_path / "b.csv", 3), cached("second")).batch_id
    workers.record(Store(conn), [WorkerStatus(name="gpu-1", kind="ai", queues=[], concurrency=2, models=["m:1"],
                                              digests={"m:1": "d1"}, max_loaded=1, placed=[])])
    backlog = Store(conn).all("model_backlog", {"digests": ["d1"]}, _Backlog)
    assert [(b.batch_id, b.waiting) for b in backlog] == [(second, 0)]
    turn = Dispatcher(app, slots_ttl_s=0).dispatch(Store(conn))
    assert turn.sent == 0
    assert sorted(r.cached_from for r in turn.cached) == [r["id"] for r in conn.execute(
        "SELECT id FROM interactions WHERE batch_id = %s ORDER BY id", (first,))]
    # What the cache does not answer (other prompts) waits for a host like any other work.
    third = batches.submit(Store(conn), postings(tmp_path / "c.csv", 2, 50), cached("third")).batch_id
    backlog = Store(conn).all("model_backlog", {"digests": ["d1"]}, _Backlog)
    assert (third, 2) in [(b.batch_id, b.waiting) for b in backlog]
