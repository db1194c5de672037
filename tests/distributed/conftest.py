"""Fixtures of the distributed tests: a broker namespace, a farm, two GPU hosts, and the
oracle a farm's batch must match."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_worker.backends.ollama import OllamaBackend
from orchestrator import batches, catalog
from orchestrator.db import connect
from orchestrator.db.store import Store
from orchestrator.executor import LocalExecutor
from orchestrator.workflow import load_file
from tests.conftest import copy_of
from tests.distributed.farm import SCRIPTS, WORKFLOW, Farm, broker, completions_per_interaction, outcomes, postings
from tests.model_server import ModelServer

GEMMA, QWEN = "gemma3:1b", "qwen2.5:7b"
ROWS = 60


@pytest.fixture(params=["amqp"])
def broker_url(request) -> Iterator[str]:
    with broker(request.param) as url:
        yield url


@pytest.fixture
def farm(db_url, broker_url, tmp_path) -> Iterator[Farm]:
    f = Farm(db_url, broker_url, tmp_path)
    try:
        yield f
    finally:
        f.stop_all()


@pytest.fixture
def hosts() -> Iterator[tuple[ModelServer, ModelServer]]:
    """Two GPU hosts serving different models, with a GPU's pace."""
    with ModelServer(models=[GEMMA], latency=0.02, slots=4) as a, ModelServer(models=[QWEN], latency=0.02, slots=4) as b:
        yield a, b


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory) -> Path:
    return postings(tmp_path_factory.mktemp("farm") / "postings.csv", ROWS)


@pytest.fixture(scope="module")
def oracle(template_db, csv_path) -> dict:
    """The batch run in-process by the local executor: the outcome every farm run must reproduce."""
    with copy_of(template_db) as url, ModelServer(models=[GEMMA, QWEN], slots=8) as server:
        conn = connect(url)
        try:
            wf = load_file(WORKFLOW, SCRIPTS)
            db = Store(conn)
            catalog.store(db, wf, WORKFLOW.read_text())
            batch_id = batches.submit(db, csv_path, wf.name).batch_id
            LocalExecutor(db, ai=OllamaBackend(server.url), scripts_dir=SCRIPTS, concurrency=8).run(batch_id)
            result = outcomes(conn, batch_id)
        finally:
            conn.close()
    statuses = {status for status, _ in result.values()}
    assert "completed" in statuses and "failed" in statuses, "the oracle batch should take both endings"
    return result


def assert_matches_oracle(farm: Farm, batch_id: int, oracle: dict) -> None:
    got = outcomes(farm.db, batch_id)
    assert set(got) == set(oracle)
    wrong = {k: (got[k], oracle[k]) for k in oracle if got[k] != oracle[k]}
    assert not wrong, f"{len(wrong)} run(s) differ from the oracle, e.g. {next(iter(wrong.items()))}"
    doubled = {i: n for i, n in completions_per_interaction(farm.db, batch_id).items() if n != 1}
    assert not doubled, f"interactions recorded completed more than once: {doubled}"
