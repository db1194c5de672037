"""Workers started as SPEC.md shows them, with no --name, several of a kind on one
machine: each takes a name of its own and keeps it across a restart, on every broker
the farm runs on; a name that a live worker holds is refused."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from common import worker_names
from tests.distributed.conftest import assert_matches_oracle
from tests.distributed.farm import BIN, READY, SCRIPTS, Farm, close_connections


def live_workers(farm: Farm, since: float = 0.0) -> dict[str, list[str]]:
    """Name -> what each ready worker that sent a heartbeat after `since` (epoch seconds)
    serves: a script worker's queues, a GPU worker's models (it consumes their queues
    once serve places work for them on its host)."""
    rows = farm.db.execute(f"SELECT name, kind, queues, models FROM workers WHERE {READY} AND NOT stopping "
                           "AND last_seen > to_timestamp(%s)", (since,)).fetchall()
    return {r["name"]: r["queues"] if r["kind"] == "script" else r["models"] for r in rows}


def start_named(farm: Farm, name: str) -> subprocess.CompletedProcess:
    """A script worker started with --name NAME, run to its end (or killed after a minute)."""
    return subprocess.run([str(BIN / "script-worker"), "--scripts-dir", str(SCRIPTS), "--name", name],
                          env=farm.env(), capture_output=True, text=True, timeout=60)


def worker_count(farm: Farm) -> int:
    return farm.db.execute("SELECT count(*) AS n FROM workers").fetchone()["n"]


@pytest.mark.parametrize("broker_url", ["amqp", "redis", "filesystem"], indirect=True)
def test_two_workers_of_each_kind_on_one_machine_without_names_all_work(farm, hosts, csv_path, oracle):
    a, b = hosts  # one model server per GPU worker, as with one Ollama per GPU
    farm.serve()
    farm.gpu("gpu-a", a.url, named=False)
    farm.gpu("gpu-b", b.url, named=False)
    farm.scripts("scripts-1", named=False)
    farm.scripts("scripts-2", named=False)

    machine = worker_names.machine()
    expected = {f"gpu@{machine}:{a.port}": ["gemma3:1b"], f"gpu@{machine}:{b.port}": ["qwen2.5:7b"],
                f"script@{machine}": ["script"], f"script-2@{machine}": ["script"]}
    assert farm.wait_for("four workers under four names to consume", lambda: live_workers(farm) == expected or None)
    batch_id = farm.submit(csv_path)
    farm.wait_batch(batch_id)
    assert_matches_oracle(farm, batch_id, oracle)
    assert a.served and b.served

    # Killed (as a crash or the OOM killer would) and started again: the same name, the same row.
    farm.kill("scripts-1", signal.SIGKILL)
    restarted = time.time()
    farm.scripts("scripts-1", named=False)
    farm.wait_for("every worker to be back under its name",
                  lambda: live_workers(farm, since=restarted) == expected or None, timeout=60)
    assert worker_count(farm) == 4
    for name in ("gpu-a", "gpu-b", "scripts-1", "scripts-2"):
        log = farm.log(name)
        assert "RESOURCE_LOCKED" not in log and "RestartFreqExceeded" not in log, f"{name}: {log[-2000:]}"


def test_workers_keep_their_names_when_rabbitmq_drops_every_connection(farm, hosts, broker_url, csv_path, oracle):
    a, b = hosts
    farm.serve()
    farm.gpu("gpu-a", a.url, named=False)
    farm.gpu("gpu-b", b.url, named=False)
    farm.scripts("scripts-1", named=False)
    farm.scripts("scripts-2", named=False)
    names = farm.wait_for("four workers to consume", lambda: len(live := live_workers(farm)) == 4 and live)
    batch_id = farm.submit(csv_path)
    farm.wait_for("the batch to be under way", lambda: farm.completed_count(batch_id) >= 40)
    close_connections(broker_url.rsplit("/", 1)[1])  # the names' queues go with the connections
    dropped = time.time()
    farm.wait_batch(batch_id)
    assert_matches_oracle(farm, batch_id, oracle)
    farm.wait_for("every worker to be back under its name",
                  lambda: live_workers(farm, since=dropped) == names or None, timeout=60)
    assert worker_count(farm) == 4
    assert all(p.poll() is None for p in farm.procs.values()), {n: p.poll() for n, p in farm.procs.items()}
    # The names are held again: taking one is refused.
    assert start_named(farm, f"script@{worker_names.machine()}").returncode != 0
    for name in ("gpu-a", "gpu-b", "scripts-1", "scripts-2"):
        log = farm.log(name)
        assert log.count("cannot reach the broker to hold the worker name") <= 1, log[-3000:]
        assert "RESOURCE_LOCKED" not in log and "taken by another worker" not in log, log[-3000:]


@pytest.mark.parametrize("broker_url", ["amqp", "redis"], indirect=True)
def test_a_name_a_live_worker_holds_is_refused_and_that_worker_goes_on(farm, hosts, csv_path, oracle):
    a, b = hosts
    farm.start_standard(a.url, b.url)
    second = start_named(farm, "scripts")
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "'scripts' is taken" in lines[0] and "--name" in lines[0], second.stderr
    assert "Traceback" not in second.stdout + second.stderr

    batch_id = farm.submit(csv_path)
    farm.wait_batch(batch_id)
    assert_matches_oracle(farm, batch_id, oracle)
    assert farm.procs["scripts"].poll() is None
    assert worker_count(farm) == 3
