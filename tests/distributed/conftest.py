"""Fixtures of the distributed tests: a broker namespace, a farm, two GPU hosts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.distributed.farm import Farm, broker
from tests.model_server import ModelServer

GEMMA, QWEN = "gemma3:1b", "qwen2.5:7b"


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
