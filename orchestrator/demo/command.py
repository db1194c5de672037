"""The `orchestrator demo` command: sets up the database, the broker and the model
server, starts the farm, submits the example and watches it to its end, prints the
results, and stops everything it started, on success, on error and on Ctrl-C alike."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from common.redact import redact
from common.settings import get_settings
from common.supervisor import ProcessDied, Supervisor
from orchestrator.demo.console import DemoError, err, say
from orchestrator.demo.example import Example, choose_example, first_rows, load_workflow
from orchestrator.demo.farm import start_farm
from orchestrator.demo.progress import watch
from orchestrator.demo.results import print_next, print_results, print_saved
from orchestrator.demo.server import find_model_server

# The built-in model runs on the CPU, one call at a time: a posting takes it a minute or
# two (about a dozen calls), so by default the demo gives it the first few rows only.
BUILTIN_LIMIT = 6


def demo(
    ollama_url: Annotated[Optional[str], typer.Option("--ollama-url", help="An Ollama server to use (default: the one on this machine, if any).")] = None,
    openai_url: Annotated[Optional[str], typer.Option("--openai-url", help="An OpenAI-compatible server to use instead (vLLM, llama.cpp).")] = None,
    workflow: Annotated[Optional[Path], typer.Option("--workflow", help="Workflow file (default: the example).")] = None,
    batch: Annotated[Optional[Path], typer.Option("--batch", help="CSV file to submit (default: the sample postings).")] = None,
    scripts_dir: Annotated[Optional[Path], typer.Option("--scripts-dir", help="Scripts of the workflow (default: the example's).")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="Column that identifies a row (default: the example's id column; a given --batch: the whole row).")] = None,
    use_env: Annotated[bool, typer.Option("--use-env", help="Use WAVEFARM_DATABASE_URL and WAVEFARM_BROKER_URL where set, instead of the embedded ones.")] = False,
    keep_db: Annotated[bool, typer.Option("--keep-db", help="Leave the embedded Postgres running afterwards (for status, show, export).")] = False,
    stop_db: Annotated[bool, typer.Option("--stop-db", help="Stop an embedded Postgres left running by --keep-db, and exit.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", min=0, help=f"Submit the first N rows only (default: all; {BUILTIN_LIMIT} on the built-in CPU model; 0: all).")] = None,
) -> None:
    """Run the example job end to end on this machine, with nothing to set up: an
    embedded Postgres, a local broker, the farm's processes, a model server."""
    from common.embedded_address import data_dir
    from orchestrator.embedded_postgres import EmbeddedPostgres

    data = data_dir()
    if stop_db:
        stopped = EmbeddedPostgres(data, say=say).stop()
        err.print("the embedded Postgres is stopped" if stopped else "the embedded Postgres was not running")
        return
    example = choose_example(workflow, batch, scripts_dir, key)
    outcome: dict = {}
    code = 0
    with ExitStack() as stack:
        try:
            with _terminate_as_interrupt():
                _run(example, ollama_url, openai_url, use_env, keep_db, data, stack, outcome, limit)
        except KeyboardInterrupt:
            err.print(Text("interrupted: stopping the farm", style="yellow"))
            code = 130
        except ProcessDied as exc:
            err.print(Text.assemble(("error:", "red"), f" {exc}"))
            code = 1
        finally:
            with _no_interrupts():
                stack.close()
    if "batch_id" in outcome and code == 0:
        print_next(outcome, data, keep_db)
    if code:
        raise typer.Exit(code)


def _run(example: Example, ollama_url: str | None, openai_url: str | None, use_env: bool, keep_db: bool,
         data: Path, stack: ExitStack, outcome: dict, limit: int | None) -> None:
    from common.local_broker import local_broker_url
    from orchestrator import batches, catalog
    from orchestrator.pace import batch_pace
    from orchestrator.reconnect import Reconnecting
    from orchestrator.db.migrate import upgrade
    from orchestrator.embedded_postgres import EmbeddedPostgres

    data.mkdir(parents=True, exist_ok=True)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)

    server = find_model_server(ollama_url, openai_url, data, stack)
    err.print(f"model server: {redact(server.url)} ({server.where}), serving "
              f"{', '.join(server.models) or 'no model'}", highlight=False)
    if not server.models:
        raise DemoError(f"the model server at {redact(server.url)} has no model: "
                        "pull one (`ollama pull gemma3:270m`) and try again")

    settings = get_settings()
    db_url = settings.database_url.get_secret_value() if use_env and settings.database_url else None
    broker_url = settings.broker_url.get_secret_value() if use_env and settings.broker_url else None
    if db_url is None:
        pg = EmbeddedPostgres(data, say=say)
        stack.callback(pg.release, keep_running=keep_db)
        db_url = pg.start()
        outcome["embedded_url"] = db_url
    if broker_url is None:
        broker_url = local_broker_url(data / "broker")
    err.print(f"database: {redact(db_url)}\nbroker: {redact(broker_url)}", highlight=False)

    # The progress display below rides out a restart of the database (an operator's, or
    # a failover when WAVEFARM_DATABASE_URL names a real one).
    watching = Reconnecting.to(db_url, say=lambda text: err.print(text, soft_wrap=True))
    stack.callback(watching.close)
    db = watching.store
    for m in upgrade(db.conn):
        say(f"applied migration {m.version:04d} {m.name}")

    wf = load_workflow(example, server.models)
    missing = sorted({s.actor for s in wf.steps if s.kind == "ai"} - set(server.models))
    if missing:
        raise DemoError(f"the workflow {example.workflow.name} needs model(s) {', '.join(missing)}, which "
                        f"{redact(server.url)} does not serve (it has {', '.join(server.models)}): "
                        f"pull them (`ollama pull {missing[0]}`) or give a workflow with a models: mapping")
    stored = catalog.store(db, wf, example.workflow.read_text(encoding="utf-8"))
    err.print(f"workflow {stored.name} v{stored.version} from {example.workflow}", highlight=False)

    if limit is None and server.builtin:
        limit = BUILTIN_LIMIT
        err.print(f"the built-in model answers one call at a time on the CPU (a minute or two per posting): "
                  f"submitting the first {limit} rows (--limit 0 for all of them)", highlight=False)
    source = first_rows(example.batch, limit, data / "samples") if limit else example.batch
    submitted = batches.submit(db, source, stored.name, key_column=example.key)
    outcome["batch_id"] = submitted.batch_id
    err.print(f"batch {submitted.batch_id}: {submitted.runs_created} run(s) created from {source.name}"
              + (f", {submitted.runs_existing} submitted before" if submitted.runs_existing else "")
              + (f", {len(submitted.rejected)} row(s) rejected" if submitted.rejected else ""), highlight=False)

    p = batch_pace(db, submitted.batch_id)
    if p.runs and p.ended >= p.runs:
        err.print("every run of this batch ended in an earlier demo: here are its results", highlight=False)
    else:
        farm = Supervisor(logs, say=lambda text: err.print(text, highlight=False))
        stack.callback(_stop_farm, farm)
        start_farm(farm, example, server, db_url, broker_url)
        err.print(f"started serve, script-worker and gpu-worker (logs in {logs})", highlight=False)
        started = time.monotonic()
        watch(watching, submitted.batch_id, farm)
        outcome["elapsed_s"] = time.monotonic() - started
        _stop_farm(farm)
    print_results(watching.store, submitted.batch_id, example.key, outcome)
    print_saved(watching.store, submitted.batch_id, example)


def _stop_farm(farm: Supervisor) -> None:
    if farm.processes:
        err.print("stopping the farm's processes")
        farm.stop_all()


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a closed terminal, a test) unwinds like Ctrl-C, so every cleanup runs."""
    def raise_interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _no_interrupts() -> Iterator[None]:
    """While cleaning up, a second Ctrl-C must not leave processes behind."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
