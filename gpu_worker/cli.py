"""`gpu-worker`: the Celery worker that sits next to a model server (Ollama, or an
OpenAI-compatible server such as vLLM or llama.cpp's). It needs the broker only:
no database credentials on GPU hosts."""

from __future__ import annotations

import logging
import re
from enum import Enum
from typing import Annotated, Optional

import typer

from common import worker_names
from common.celery_app import make_app
from common.cli import run_app
from common.leases import claim
from common.logs import setup_logging
from common.settings import get_settings
from common.worker_runtime import run_worker
from gpu_worker.backends.base import ModelBackend, normalize_base_url, server_label
from gpu_worker.backends.ollama import OllamaBackend
from gpu_worker.residency import DEFAULT_KEEP_ALIVE, MAX_LOADED, Residency, max_loaded_default

log = logging.getLogger(__name__)


class Residency_(str, Enum):
    on = "on"
    off = "off"


app = typer.Typer(add_completion=False)
# A Go duration, as Ollama reads a keep_alive string ("30m", "1h30m"; negative: forever).
_DURATION = re.compile(r"-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")


def make_backend(ollama_url: str | None, openai_url: str | None, *, pool_size: int, worker: str,
                 api_key: str | None = None) -> tuple[ModelBackend, str]:
    if openai_url:
        from gpu_worker.backends.openai import OpenAIBackend

        return OpenAIBackend(openai_url, pool_size=pool_size, worker=worker, api_key=api_key), server_label(openai_url)
    url = ollama_url or get_settings().ollama_url
    return OllamaBackend(url, pool_size=pool_size, worker=worker), server_label(url)


@app.command()
def run(
    ollama_url: Annotated[Optional[str], typer.Option("--ollama-url", help="Ollama next to this worker (default: WAVEFARM_OLLAMA_URL).")] = None,
    openai_url: Annotated[Optional[str], typer.Option("--openai-url", help="An OpenAI-compatible server instead (vLLM, llama.cpp).", envvar="WAVEFARM_OPENAI_URL")] = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="WAVEFARM_OPENAI_API_KEY", help="Bearer token for --openai-url. Prefer setting WAVEFARM_OPENAI_API_KEY: a command line is visible to every user of the host in ps.", show_default=False)] = None,
    models: Annotated[str, typer.Option("--models", help="Comma-separated models, or auto: whatever the server has.")] = "auto",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Parallel calls: match the server's parallel slots (OLLAMA_NUM_PARALLEL).")] = 1,
    name: Annotated[Optional[str], typer.Option("--name", help="Worker name, one live worker's at a time (default: gpu@MACHINE:PORT after the server, or gpu@MACHINE:SERVER:PORT).")] = None,
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="Serve Prometheus metrics on this port.")] = None,
    probe_interval: Annotated[float, typer.Option("--probe-interval", help="Seconds between asking the server what it has.")] = 5.0,
    check: Annotated[bool, typer.Option("--check", help="List what the server has and exit.")] = False,
    residency: Annotated[Residency_, typer.Option("--residency", help="on: consume the models serve places on this host, keep them loaded while placed, unload them when placed elsewhere. off: consume every model the server has (Ollama swaps them as calls come).")] = Residency_.on,
    max_loaded: Annotated[Optional[int], typer.Option("--max-loaded", min=1, max=MAX_LOADED, help="Models the server holds at once (default: OLLAMA_MAX_LOADED_MODELS in this environment, else 1).", show_default=False)] = None,
    keep_alive: Annotated[str, typer.Option("--keep-alive", help="How long a placed model stays loaded after its last call (an Ollama duration; renewed by every call).")] = DEFAULT_KEEP_ALIVE,
) -> None:
    settings = get_settings()
    setup_logging(json_lines=settings.log_json)
    if not _DURATION.fullmatch(keep_alive.strip()):
        raise typer.BadParameter(f"{keep_alive[:40]!r} is not a duration: say e.g. 30m, 1h, 300s, or -1m for as long as the server runs",
                                 param_hint="--keep-alive")
    keep_alive = keep_alive.strip()
    server_url = normalize_base_url(openai_url or ollama_url or settings.ollama_url)
    wanted = None if models.strip() == "auto" else [m.strip() for m in models.split(",") if m.strip()]
    if check:
        backend, server = make_backend(ollama_url, openai_url, pool_size=1, worker="gpu-worker --check",
                                       api_key=api_key)
        available = backend.list_models()
        typer.echo(f"models on {server}: {', '.join(available) or 'none'}")
        missing = sorted(set(wanted or []) - set(available))
        if missing:
            typer.echo(f"not on the server (would not be consumed until they are): {', '.join(missing)}", err=True)
        return

    from gpu_worker.worker import GpuWorker

    celery_app = make_app(name="wavefarm-gpu")
    worker_name, lease = claim(celery_app, name, worker_names.candidates(worker_names.GPU, server_url=server_url))
    # +1: the readiness probe shares the pool with the calls.
    backend, server = make_backend(ollama_url, openai_url, pool_size=concurrency + 1, worker=worker_name,
                                   api_key=api_key)
    placing = residency is Residency_.on and not openai_url  # an OpenAI-compatible server holds what it was started with
    held, warning = max_loaded_default(max_loaded)
    if placing and warning:
        log.warning("%s", warning)
    worker = GpuWorker(celery_app, backend, server=server, wanted=wanted, concurrency=concurrency,
                       name=worker_name, probe_interval_s=probe_interval,
                       residency=Residency(enabled=placing, max_loaded=held, machine=worker_names.machine(),
                                           server=server, keep_alive=keep_alive))
    worker.watch.start()
    try:
        run_worker(celery_app, worker.runtime, lease, pool_size=worker.pool_size, metrics_port=metrics_port)
    finally:
        worker.watch.stop()


def main() -> None:
    run_app(app)
