"""Flower, as deploy/ runs it, sees the farm: the workers, the per-model queues, and the
tasks (workers start without task events; Flower turns them on, its default)."""

from __future__ import annotations

import pytest
import requests

from common.queues import AI_TASK, SCRIPT_TASK
from tests.distributed.farm import BIN, listening, postings
from tests.net import free_port


def test_flower_lists_the_workers_the_model_queues_and_the_tasks(farm, hosts, broker_url, tmp_path):
    if not listening(15672):  # Flower reads queue lengths through it (.ci/run enables it)
        pytest.skip("RabbitMQ's management API is not on 127.0.0.1:15672: rabbitmq-plugins enable rabbitmq_management")
    a, b = hosts
    # Residency off: every worker consumes its models' queues from the start, so Flower has
    # them to show before any work (with it on, a host consumes a model once there is work).
    farm.start_standard(a.url, b.url, residency="off")
    port = free_port()
    vhost = broker_url.rsplit("/", 1)[1]
    farm.start("flower", [str(BIN / "celery"), "--broker", broker_url, "flower", f"--port={port}",
                          "--address=127.0.0.1", "--basic-auth=admin:flower-test-pw",
                          f"--broker-api=http://guest:guest@127.0.0.1:15672/api/{vhost}"], farm.env())
    api = f"http://127.0.0.1:{port}/api"
    auth = ("admin", "flower-test-pw")

    def get(path: str):
        try:
            r = requests.get(api + path, auth=auth, timeout=10)
        except requests.ConnectionError:
            return None
        return r.json() if r.ok else None

    farm.wait_for("flower to answer", lambda: get("/workers") is not None)
    assert requests.get(api + "/workers", timeout=10).status_code == 401  # as deployed: no API without auth

    def queues_of_workers() -> dict | None:
        workers = get("/workers?refresh=1") or {}
        found = {name.split("@", 1)[-1]: sorted(q["name"] for q in info.get("active_queues") or [])
                 for name, info in workers.items()}
        return found if {"gpu-a", "gpu-b", "scripts"} <= set(found) else None

    found = farm.wait_for("flower to see the workers", queues_of_workers, timeout=60, every=1)
    assert found["gpu-a"] == ["ai.gemma3-1b"] and found["gpu-b"] == ["ai.qwen2.5-7b"] and found["scripts"] == ["script"]

    def queue_names() -> set | None:
        # RabbitMQ's management API lists a new queue only after its next stats
        # collection (every 5 s): an empty answer at first is not an answer yet.
        lengths = get("/queues/length") or {}
        names = {q["name"] for q in lengths.get("active_queues") or []}
        return names if {"ai.gemma3-1b", "ai.qwen2.5-7b", "script"} <= names else None

    assert farm.wait_for("flower to report the model queues' lengths", queue_names, timeout=60, every=1)

    # The workers started without task events: Flower turns them on, and then sees every task.
    farm.wait_for("flower to turn the workers' task events on", lambda: all(
        "Events of group {task} enabled by remote" in farm.log(name) for name in ("gpu-a", "gpu-b", "scripts")))
    farm.submit(postings(tmp_path / "postings.csv", 20))

    def task_names() -> set | None:
        names = {task.get("name") for task in (get("/tasks") or {}).values()}
        return names if {AI_TASK, SCRIPT_TASK} <= names else None

    assert farm.wait_for("flower to see the farm's tasks", task_names, timeout=60, every=1)
