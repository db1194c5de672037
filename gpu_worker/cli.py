"""`gpu-worker`: the Celery worker that sits next to a model server.

The Celery side (per-model queues, readiness gate, circuit breaker) is the next
milestone; until then this command checks a model server the way the worker will
(it lists the models the server has), so a GPU host can be verified today.
"""

from __future__ import annotations

from typing import Annotated

import typer

from common.cli import run_app
from gpu_worker.backends.ollama import OllamaBackend

app = typer.Typer(add_completion=False)


@app.command()
def run(
    ollama_url: Annotated[str, typer.Option("--ollama-url", help="The model server next to this worker.")] = "http://127.0.0.1:11434",
    models: Annotated[str, typer.Option("--models", help="Comma-separated models, or auto.")] = "auto",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 1,
    check: Annotated[bool, typer.Option("--check", help="List what the server has and exit.")] = False,
) -> None:
    backend = OllamaBackend(ollama_url)
    available = backend.list_models()
    wanted = available if models == "auto" else [m.strip() for m in models.split(",") if m.strip()]
    missing = sorted(set(wanted) - set(available))
    typer.echo(f"models on the server: {', '.join(available) or 'none'}")
    if missing:
        typer.echo(f"not on the server (would not be consumed): {', '.join(missing)}", err=True)
    if not check:
        typer.echo("distributed execution is not available yet: use `orchestrator submit --local` "
                   "or `orchestrator serve`, which execute with this same backend", err=True)
        raise typer.Exit(2)


def main() -> None:
    run_app(app)
