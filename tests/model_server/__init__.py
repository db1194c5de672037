"""A fake model server (Ollama's API and the OpenAI-compatible one) for tests and demos:
`ModelServer`, or `python -m tests.model_server`."""

from tests.model_server.server import FAULT_KINDS, FaultKind, ModelServer

__all__ = ["FAULT_KINDS", "FaultKind", "ModelServer"]
