"""Fixtures of the unit tests."""

import pytest

from tests.model_server import ModelServer
from tests.unit.backends import MODEL


@pytest.fixture
def srv():
    """A fake model server with two models, for the backend tests."""
    with ModelServer(models=[MODEL, "qwen2.5:7b"], slots=4) as server:
        yield server
