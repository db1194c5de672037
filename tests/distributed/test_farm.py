"""The farm end to end: per-model routing across hosts, and recovery from the failures
a fleet meets (a worker or the orchestrator killed, a host failing calls or down, a
duplicate result, the database or the broker restarted). Each batch must end exactly as the same batch run by the local
executor (the oracle): the fake model server answers as a function of the prompt,
so any lost, doubled or misapplied result shows up as a different outcome."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import requests

from common.celery_app import make_app
from common.messages import TaskResult
from common.reporting import publish_result
from orchestrator.db import connect
from orchestrator.db.migrate import upgrade
from tests.distributed.conftest import GEMMA, QWEN, assert_matches_oracle
from tests.distributed.farm import WORKFLOW, Farm, postings
from tests.model_server import ModelServer
from tests.net import free_port
from tests.private_services import PrivatePostgres, PrivateRabbitMQ


def metrics(port: int) -> dict[str, float]:
    """One Prometheus scrape: 'name{labels}' -> value."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


@pytest.mark.parametrize("broker_url", ["amqp", "redis"], indirect=True)
def test_each_model_goes_to_the_host_that_has_it(farm, hosts, csv_path, oracle):
    a, b = hosts
    serve_metrics, gpu_metrics = free_port(), free_port()
    farm.serve(metrics_port=serve_metrics)
    farm.gpu("gpu-a", a.url, metrics_port=gpu_metrics)
    farm.gpu("gpu-b", b.url)
    farm.scripts()
    farm.wait_workers("gpu-a", "gpu-b", "scripts")
    batch_id = farm.submit(csv_path)
    farm.wait_batch(batch_id)

    # What Prometheus scrapes says the same.
    served = metrics(serve_metrics)
    assert served['wavefarm_results_total{outcome="completed"}'] == farm.completed_count(batch_id)
    assert served['wavefarm_queue_slots{queue="ai.gemma3-1b"}'] == 4
    gpu = metrics(gpu_metrics)
    assert gpu['wavefarm_worker_tasks_total{model="gemma3:1b",outcome="completed"}'] == a.served[GEMMA]
    assert gpu['wavefarm_tokens_total{kind="completion",model="gemma3:1b"}'] > 0
    assert gpu['wavefarm_circuit_open{server="' + a.url.removeprefix("http://") + '"}'] == 0

    assert_matches_oracle(farm, batch_id, oracle)
    # A host was never sent a model it lacks.
    assert set(a.requests) == {GEMMA} and set(b.requests) == {QWEN}
    workers = {r["name"]: r for r in farm.db.execute("SELECT * FROM workers")}
    assert workers["gpu-a"]["queues"] == ["ai.gemma3-1b"] and workers["gpu-b"]["queues"] == ["ai.qwen2.5-7b"]
    # A host never ran more calls at once than its slots.
    assert a.max_concurrent[GEMMA] <= 4 and b.max_concurrent[QWEN] <= 4
    # The broker's password never reaches a log line.
    for name in ("serve", "gpu-a", "gpu-b", "scripts"):
        assert ":guest@" not in farm.log(name), f"{name} logged the broker password"


def test_a_gpu_worker_killed_mid_batch_loses_nothing(farm, hosts, csv_path, oracle):
    a, b = hosts
    farm.start_standard(a.url, b.url)
    batch_id = farm.submit(csv_path)
    farm.wait_for("the batch to be under way", lambda: farm.completed_count(batch_id) >= 40)
    farm.kill("gpu-b", signal.SIGKILL)  # mid-call: its unacknowledged messages go back to the queue
    farm.gpu("gpu-b2", b.url)
    farm.wait_batch(batch_id)
    assert_matches_oracle(farm, batch_id, oracle)


def test_the_orchestrator_killed_and_restarted_mid_batch_finishes_it(farm, hosts, csv_path, oracle):
    a, b = hosts
    farm.start_standard(a.url, b.url)
    batch_id = farm.submit(csv_path)
    farm.wait_for("the batch to be under way", lambda: farm.completed_count(batch_id) >= 40)
    farm.kill("serve", signal.SIGKILL)  # mid-transaction, maybe; with results unacknowledged, surely
    farm.serve("serve-2")
    farm.wait_batch(batch_id)
    assert_matches_oracle(farm, batch_id, oracle)


def test_a_host_failing_one_call_in_ten_still_gives_every_right_answer(farm, hosts, csv_path, oracle):
    a, b = hosts
    a.set_fault(GEMMA, "error", 0.1)
    b.set_fault(QWEN, "error", 0.1)
    farm.start_standard(a.url, b.url)
    batch_id = farm.submit(csv_path)
    farm.wait_batch(batch_id)
    assert a.faults[GEMMA] + b.faults[QWEN] > 0
    assert_matches_oracle(farm, batch_id, oracle)
    retried = farm.db.execute("SELECT count(*) AS n FROM events WHERE kind = 'retried' AND batch_id = %s",
                              (batch_id,)).fetchone()["n"]
    assert retried >= a.faults[GEMMA] + b.faults[QWEN]


def test_a_host_that_goes_down_opens_its_circuit_and_burns_no_retries(farm, csv_path, oracle):
    with ModelServer(models=[GEMMA, QWEN], latency=0.02, slots=4) as good, \
         ModelServer(models=[GEMMA, QWEN], latency=0.02, slots=4) as doomed:
        farm.start_standard(good.url, doomed.url)
        batch_id = farm.submit(csv_path)
        farm.wait_for("the doomed host to work", lambda: doomed.served[GEMMA] > 5)
        doomed.stop()
        farm.wait_for("its circuit to open", lambda: farm.db.execute(
            "SELECT circuit = 'open' AND queues = '{}' AS open FROM workers WHERE name = 'gpu-b'").fetchone()["open"])
        farm.wait_batch(batch_id)
    assert_matches_oracle(farm, batch_id, oracle)
    burnt = farm.db.execute("SELECT count(*) AS n FROM interactions WHERE batch_id = %s AND attempt > 1",
                            (batch_id,)).fetchone()["n"]
    assert burnt == 0, f"{burnt} interaction(s) used a retry on a host that was down"


def test_a_duplicate_result_is_applied_once(farm, hosts, csv_path, oracle):
    a, b = hosts
    farm.start_standard(a.url, b.url)
    batch_id = farm.submit(csv_path)
    farm.wait_batch(batch_id)
    row = farm.db.execute("SELECT id, attempt, output FROM interactions WHERE batch_id = %s AND step = 'triage' "
                          "ORDER BY id LIMIT 1", (batch_id,)).fetchone()
    app = make_app(farm.broker_url)
    for _ in range(2):  # the broker delivered it twice, with a different output even
        publish_result(app, TaskResult(interaction_id=row["id"], attempt=row["attempt"], output="[QUICK] late"))
    farm.wait_for("the duplicates to be seen", lambda: farm.db.execute(
        "SELECT count(*) AS n FROM events WHERE kind = 'result_ignored' AND interaction_id = %s",
        (row["id"],)).fetchone()["n"] == 2)
    assert farm.db.execute("SELECT output FROM interactions WHERE id = %s", (row["id"],)).fetchone()["output"] == row["output"]
    assert_matches_oracle(farm, batch_id, oracle)


def with_default_timeout(tmp_path: Path) -> Path:
    """The test workflow with the default step timeout (300 s), as a user's would have:
    its dispatch deadline (610 s) is far beyond any test's patience."""
    text = WORKFLOW.read_text()
    short = "defaults: {timeout: 8, retries: 5}"
    assert short in text
    path = tmp_path / WORKFLOW.name
    path.write_text(text.replace(short, "defaults: {retries: 5}"))
    return path


def assert_rode_it_out(farm: Farm, batch_id: int, oracle: dict) -> None:
    """The batch ended long before a dispatch deadline could pass, as it would have
    without the restart, and every process of the farm is still up."""
    farm.wait_batch(batch_id, timeout=120)
    assert_matches_oracle(farm, batch_id, oracle)
    lost = farm.db.execute("SELECT count(*) AS n FROM events WHERE batch_id = %s "
                           "AND detail->>'failure_class' = 'worker_lost'", (batch_id,)).fetchone()["n"]
    assert lost == 0, f"{lost} interaction(s) reported worker_lost: they waited for the deadline"
    assert all(p.poll() is None for p in farm.procs.values()), {n: p.poll() for n, p in farm.procs.items()}


# The restarts below are of a Postgres or a RabbitMQ of the test's own
# (tests/private_services.py): nothing else on the machine sees them.
def test_a_database_restarted_mid_batch_loses_nothing(broker_url, hosts, tmp_path, csv_path, oracle):
    a, b = hosts
    with PrivatePostgres.running() as pg:
        conn = connect(pg.url)
        upgrade(conn)
        conn.close()
        farm = Farm(pg.url, broker_url, tmp_path)
        try:
            farm.start_standard(a.url, b.url)
            batch_id = farm.submit(csv_path, with_default_timeout(tmp_path))
            farm.wait_for("the batch to be under way", lambda: farm.completed_count(batch_id) >= 40)
            pg.restart()  # fast shutdown: serve's sessions end mid-turn, maybe mid-transaction
            assert_rode_it_out(farm, batch_id, oracle)
        finally:
            farm.stop_all()


def test_a_broker_restarted_twice_mid_batch_costs_seconds_not_the_dispatch_deadline(db_url, tmp_path, csv_path,
                                                                                    oracle):
    # Restarted as an operator does (stop_app, start_app) while the GPU workers are
    # mid-call: every message they hold goes back to its queue and each of their calls
    # in flight publishes its result after the broker is back.
    with PrivateRabbitMQ.running() as rabbit, \
         ModelServer(models=[GEMMA], latency=0.3, slots=4) as a, ModelServer(models=[QWEN], latency=0.3, slots=4) as b:
        farm = Farm(db_url, rabbit.url, tmp_path)
        try:
            farm.start_standard(a.url, b.url)
            batch_id = farm.submit(csv_path, with_default_timeout(tmp_path))
            restarts = (20, 200)  # early (fan-out) and late (reviews, fan-in): two moments of a timing-dependent bug
            for under_way in restarts:
                farm.wait_for(f"{under_way} interactions done", lambda: farm.completed_count(batch_id) >= under_way)
                rabbit.restart_app()
            assert_rode_it_out(farm, batch_id, oracle)
            # No worker went quiet on its new connection, holding its messages until the
            # connection was dropped for missed heartbeats (by the broker, or by the
            # worker's own check) or read a garbled frame: what a connection used by two
            # threads at once does (common/celery_app.py, prefetch count reduction).
            dropped = [line for line in rabbit.server_log().splitlines() if "missed heartbeats" in line]
            assert not dropped, dropped
            for name in ("gpu-a", "gpu-b", "scripts"):
                log = farm.log(name)
                assert "heartbeats missed" not in log and "UnexpectedFrame" not in log, log[-5000:]
        finally:
            farm.stop_all()


def test_scripts_that_crash_hang_or_print_text_fail_clearly_and_the_batch_goes_on(farm, hosts, tmp_path):
    a, _ = hosts
    unit_scripts = Path(__file__).resolve().parent.parent / "unit" / "scripts"
    farm.serve()
    farm.gpu("gpu-a", a.url)
    farm.scripts(directory=unit_scripts)
    farm.wait_workers("gpu-a", "scripts")
    batch_id = farm.submit(postings(tmp_path / "three.csv", 3), Path(__file__).parent / "workflows" / "bad_scripts.yaml",
                           scripts_dir=unit_scripts)
    farm.wait_batch(batch_id, timeout=120)
    failures = {(r["step"], r["failure_class"]): r for r in farm.db.execute(
        "SELECT step, failure_class, failure_message, failure_detail FROM interactions "
        "WHERE batch_id = %s AND status = 'failed'", (batch_id,))}
    assert set(failures) == {("crash", "script_error"), ("hang", "timeout"), ("chatty", "invalid_output")}
    crash = failures[("crash", "script_error")]
    assert crash["failure_detail"]["exit_code"] == 3
    assert "archive unreachable: giving up" in crash["failure_detail"]["stderr_tail"]
    assert "Loading model" in failures[("chatty", "invalid_output")]["failure_message"]
    runs = farm.db.execute("SELECT status, end_reason FROM runs WHERE batch_id = %s", (batch_id,)).fetchall()
    assert len(runs) == 3 and all(r["status"] == "failed" for r in runs)
    assert all("step crash failed" in r["end_reason"] and "step hang failed" in r["end_reason"] for r in runs)


def test_two_orchestrators_at_once_corrupt_nothing(farm, hosts, csv_path, oracle):
    a, b = hosts
    farm.start_standard(a.url, b.url, serves=("serve-1", "serve-2"))
    batch_id = farm.submit(csv_path)
    farm.wait_batch(batch_id)
    assert_matches_oracle(farm, batch_id, oracle)
    logs = farm.log("serve-1") + farm.log("serve-2")
    assert "interaction" in farm.log("serve-1") and "interaction" in farm.log("serve-2"), "both applied results"
    # Neither lost a result to the other (a result overtaking its dispatch's commit)
    # nor deadlocked with it (overlapping batches of results).
    assert "ignored" not in logs and "deadline passed" not in logs and "Deadlock" not in logs


def test_a_host_speaking_the_openai_api_serves_beside_an_ollama_host(farm, hosts, csv_path, oracle):
    a, b = hosts
    farm.serve()
    farm.gpu("gpu-a", a.url)                # Ollama's /api/chat
    farm.gpu("gpu-b", b.url, api="openai")  # /v1/chat/completions, as vLLM or llama.cpp's server
    farm.scripts()
    farm.wait_workers("gpu-a", "gpu-b", "scripts")
    batch_id = farm.submit(csv_path)
    farm.wait_batch(batch_id)
    assert_matches_oracle(farm, batch_id, oracle)
    assert set(b.requests) == {QWEN}
