"""`orchestrator`: the command line. Thin: each command opens the database, calls one
module, and shows what came back as a table or as JSON."""

from __future__ import annotations

import csv
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import psycopg
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common import embedded_postgres
from common.cli import run_app
from common.errors import WavefarmError
from common.logs import setup_logging
from common.settings import get_settings, redact_url
from orchestrator import batches, catalog, reports
from orchestrator.db import connect
from orchestrator.db.migrate import upgrade
from orchestrator.reconnect import Reconnecting
from orchestrator.workflow import load_file, validate_text

app = typer.Typer(help="wavefarm orchestrator: workflows, batches, runs.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
workflow_app = typer.Typer(help="Workflow files.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(workflow_app, name="workflow")

# When piped (to a file, a test, grep) rich would assume 80 columns and cut cells
# short; a wide console keeps every name and id whole.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _table(*columns: str, title: str | None = None) -> Table:
    table = Table(title=title)
    for name in columns:
        table.add_column(name, overflow="fold")
    return table

ScriptsDir = Annotated[
    Optional[Path],
    typer.Option("--scripts-dir", help="Directory of script actors (default: WAVEFARM_SCRIPTS_DIR)."),
]


@contextmanager
def database() -> Iterator[psycopg.Connection]:
    conn = connect(_database_url())
    try:
        yield conn
    finally:
        conn.close()


def _database_url() -> str:
    return embedded_postgres.configured_or_embedded_url(say=lambda text: err.print(text, highlight=False))


def _reconnecting(conn: psycopg.Connection) -> Reconnecting:
    """The connection of a command that stays on the database: a restart is waited for."""
    return Reconnecting(conn, url=_database_url(), say=_say_line)


def _say_line(text: str) -> None:
    """One line on stderr, unwrapped whatever its length (a URL), taken as plain text."""
    err.print(text, highlight=False, markup=False, soft_wrap=True)


def _scripts_dir(option: Path | None) -> Path | None:
    return option or get_settings().scripts_dir


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema (idempotent)."""
    with database() as conn:
        applied = upgrade(conn)
    if applied:
        for m in applied:
            out.print(f"applied migration {m.version:04d} {m.name}")
    else:
        out.print("schema is up to date")


ModelOption = Annotated[Optional[list[str]], typer.Option(
    "--model", metavar="ALIAS=NAME",
    help="Set one of the file's model aliases, e.g. --model grader=qwen2.5:7b (repeatable).")]


def _model_overrides(options: list[str] | None) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for option in options or []:
        alias, sep, name = option.partition("=")
        if not sep or not alias.strip() or not name.strip():
            raise typer.BadParameter(f"{option!r}: write ALIAS=NAME, e.g. grader=qwen2.5:7b", param_hint="--model")
        overrides[alias.strip()] = name.strip()
    return overrides


@workflow_app.command("validate")
def workflow_validate(file: Path, scripts_dir: ScriptsDir = None, model: ModelOption = None) -> None:
    """Check a workflow file; list every problem with its place."""
    text = _read_text(file)
    problems = validate_text(text, str(file), _scripts_dir(scripts_dir), _model_overrides(model))
    if problems:
        err.print(f"[red]{file}: {len(problems)} problem(s)[/red]")
        for p in problems:
            err.print(f"  {p.located(str(file))}", markup=False, highlight=False)
        raise typer.Exit(1)
    out.print(f"{file}: valid")


@workflow_app.command("load")
def workflow_load(file: Path, scripts_dir: ScriptsDir = None, model: ModelOption = None) -> None:
    """Validate, then store as a new version when it changed."""
    workflow = load_file(file, _scripts_dir(scripts_dir), _model_overrides(model))
    with database() as conn:
        stored = catalog.store(conn, workflow, _read_text(file))
    state = "stored as" if stored.created else "unchanged, still"
    out.print(f"workflow {stored.name}: {state} version {stored.version}")


@workflow_app.command("list")
def workflow_list() -> None:
    """Loaded workflows and their latest versions."""
    from orchestrator.db import Q

    with database() as conn:
        rows = conn.execute(Q["list_workflows"]).fetchall()
    table = _table("name", "version", "steps", "loaded at")
    for r in rows:
        table.add_row(r["name"], str(r["version"]), str(r["steps"]), r["created_at"].strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@app.command()
def submit(
    batch: Annotated[Path, typer.Option("--batch", help="CSV file: one run per row.")],
    workflow: Annotated[str, typer.Option("--workflow", help="Workflow name (or a workflow file to load first).")],
    key: Annotated[Optional[str], typer.Option("--key", help="Column that identifies a row (default: the whole row).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until every run has ended.")] = False,
    local: Annotated[bool, typer.Option("--local", help="Execute here with the local executor (implies --wait).")] = False,
    ollama_url: Annotated[Optional[str], typer.Option("--ollama-url", help="Model server for --local.")] = None,
    scripts_dir: ScriptsDir = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print {\"batch_id\": ...} as the last line.")] = False,
    priority: Annotated[Optional[int], typer.Option("--priority", help="Higher goes first; equal priorities share the farm. Re-submit to change.")] = None,
    model: ModelOption = None,
) -> None:
    """Submit a CSV file as a batch. Re-submitting the same file creates no duplicate runs."""
    with database() as conn:
        name = _workflow_name(conn, workflow, _scripts_dir(scripts_dir), _model_overrides(model))
        with Progress(TextColumn("reading {task.description}"), TextColumn("{task.completed} rows"),
                      console=err, transient=True, disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task(batch.name)
            report = batches.submit(conn, batch, name, key_column=key, priority=priority,
                                    on_rows=lambda n: progress.update(task, completed=n))
        _print_submit(report)
        ok = True
        if local or wait:
            # From here on the command watches the batch: a database restart is waited for.
            db = _reconnecting(conn)
            try:
                if local:
                    ok = _run_local(db, report.batch_id, ollama_url, _scripts_dir(scripts_dir), concurrency)
                else:
                    ok = _wait(db, report.batch_id)
            finally:
                db.close()
    if as_json:
        print(json.dumps({"batch_id": report.batch_id}))
    else:
        out.print(f"batch {report.batch_id}")
    if (wait or local) and not ok:
        raise typer.Exit(1)


def _workflow_name(conn: psycopg.Connection, workflow: str, scripts_dir: Path | None,
                   models: dict[str, str]) -> str:
    path = Path(workflow)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        stored = catalog.store(conn, load_file(path, scripts_dir, models), _read_text(path))
        return stored.name
    if models:
        raise typer.BadParameter("--model needs --workflow to name a workflow file", param_hint="--model")
    return workflow


def _print_submit(report: batches.SubmitReport) -> None:
    s = report.summary
    verb = "new batch" if report.new_batch else "existing batch"
    err.print(
        f"{verb} {report.batch_id} for workflow {report.workflow} v{report.workflow_version}: "
        f"{report.runs_created} run(s) created, {report.runs_existing} already submitted, "
        f"{s.bad} row(s) rejected, {s.empty} empty row(s) skipped",
        highlight=False,
    )
    for bad in report.rejected[:20]:
        err.print(f"  [yellow]line {bad.line}[/yellow]: {bad.reason}", highlight=False)
    if len(report.rejected) > 20:
        err.print(f"  ... and {len(report.rejected) - 20} more (orchestrator status --batch {report.batch_id})")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]batch {task.fields[batch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("runs ended  [green]{task.fields[ok]} completed[/green]  [red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=err,
    )


def _show_progress(progress: Progress, task, db: Reconnecting, batch_id: int) -> dict[str, int]:
    p = db.run(lambda conn: reports.batch_progress(conn, batch_id))
    progress.update(task, total=p["runs"], completed=p["ended"], ok=p["completed"], failed=p["failed"])
    return p


def _all_completed(p: dict[str, int]) -> bool:
    return p["failed"] == 0 and p["completed"] == p["runs"]


def _wait(db: Reconnecting, batch_id: int) -> bool:
    with _progress() as progress:
        task = progress.add_task("", total=None, batch=batch_id, ok=0, failed=0)
        while True:
            p = _show_progress(progress, task, db, batch_id)
            if p["ended"] >= p["runs"]:
                return _all_completed(p)
            time.sleep(1.0)


def _local_executor(db: Reconnecting, ollama_url: str | None, scripts_dir: Path | None,
                    concurrency: int, worker: str):
    """The in-process executor of `submit --local` and `serve --local`."""
    from gpu_worker.backends.ollama import OllamaBackend
    from orchestrator.executor import LocalExecutor

    settings = get_settings()
    return LocalExecutor(
        db,
        ai=OllamaBackend(ollama_url or settings.ollama_url, pool_size=concurrency, worker=worker),
        scripts_dir=scripts_dir,
        concurrency=concurrency,
        # Scripts that write to the database get its URL (SPEC: script contract).
        script_env={"WAVEFARM_DATABASE_URL": _database_url()},
    )


def _run_local(db: Reconnecting, batch_id: int, ollama_url: str | None,
               scripts_dir: Path | None, concurrency: int) -> bool:
    executor = _local_executor(db, ollama_url, scripts_dir, concurrency, "local")
    last = [0.0]
    with _progress() as progress:
        task = progress.add_task("", total=None, batch=batch_id, ok=0, failed=0)

        def tick(_outcomes) -> None:
            if time.monotonic() - last[0] < 0.5:
                return
            last[0] = time.monotonic()
            _show_progress(progress, task, db, batch_id)

        executor.run(batch_id, on_tick=tick)
        p = _show_progress(progress, task, db, batch_id)
    return _all_completed(p)


@app.command()
def serve(
    local: Annotated[bool, typer.Option("--local", help="Execute in this process instead of through Celery workers.")] = False,
    ollama_url: Annotated[Optional[str], typer.Option("--ollama-url", help="With --local: the model server.")] = None,
    scripts_dir: ScriptsDir = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="With --local: parallel executions.")] = 4,
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="Serve Prometheus metrics on this port.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Results applied per transaction at most.")] = 200,
    window_factor: Annotated[float, typer.Option("--window-factor", min=1.0, help="Messages in flight per queue, as a multiple of its live slots. Raise it when calls are much shorter than a result's round trip (tiny models, cached answers).")] = 2.0,
) -> None:
    """Run the orchestrator daemon: records results, branches, dispatches, recovers.

    Reads results and worker heartbeats from the broker (WAVEFARM_BROKER_URL) and
    publishes work to per-model queues; with --local it executes in-process instead.
    """
    settings = get_settings()
    setup_logging(json_lines=settings.log_json)
    if local:
        _serve_local(ollama_url, _scripts_dir(scripts_dir), concurrency)
        return

    import signal
    import threading

    from prometheus_client import REGISTRY, start_http_server

    from common.celery_app import make_app
    from orchestrator.db import open_pool
    from orchestrator.metrics import FarmCollector
    from orchestrator.service import Service

    celery_app = make_app(settings.require_broker_url(), batched_publish=True)
    pool = open_pool(_database_url(), size=settings.db_pool_size)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if metrics_port:
        REGISTRY.register(FarmCollector(pool))
        start_http_server(metrics_port)
    err.print(f"serving: results from {redact_url(settings.require_broker_url())}, Ctrl-C to stop", highlight=False)
    try:
        Service(pool, celery_app, batch_size=batch_size, window_factor=window_factor).run(stop)
    finally:
        pool.close()
    err.print("stopped; work in flight is taken back by the sweeper after its deadline")


def _serve_local(ollama_url: str | None, scripts_dir: Path | None, concurrency: int) -> None:
    with database() as conn:
        executor = _local_executor(_reconnecting(conn), ollama_url, scripts_dir, concurrency, "serve")
        err.print("serving: executing pending interactions in this process (Ctrl-C to stop)")
        try:
            while True:
                executor.run(None)
                time.sleep(1.0)
        except KeyboardInterrupt:
            err.print("stopped; in-flight work is taken back by the sweeper after its deadline")


@app.command()
def status(
    batch: Annotated[Optional[int], typer.Option("--batch", help="One batch in detail.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Runs and interactions by status, per batch, per step and per model."""
    from orchestrator.workers import STALE_S

    with database() as conn:
        if batch is not None:
            data = reports.batch_status(conn, batch)
        else:
            data = {"batches": reports.list_batches(conn), **reports.farm_status(conn, stale_s=STALE_S)}
    if as_json:
        print(json.dumps(data, default=str, indent=2))
        return
    if batch is None:
        _print_farm_status(data)
        return
    _print_batch_status(data)


def _print_farm_status(data: dict) -> None:
    table = _table("batch", "workflow", "source", "runs", "running", "completed", "failed", "rejected rows")
    for b in data["batches"]:
        table.add_row(str(b["id"]), f"{b['workflow_name']} v{b['workflow_version']}", b["source_name"],
                      str(b["runs"]), str(b["running"]), str(b["completed"]), str(b["failed"]), str(b["rows_rejected"]))
    out.print(table)
    if data["queues"]:
        table = _table("queue", "waiting", "in flight", "slots", "workers", title="queues")
        for q in data["queues"]:
            table.add_row(q["queue"], str(q["pending"]), str(q["dispatched"]), str(q["slots"]), str(q["workers"]))
        out.print(table)
        for q in data["queues"]:
            if q["problem"]:
                out.print(f"[red]{q['queue']}[/red]: {q['problem']} ({', '.join(q['actors'])}): "
                          f"{q['pending']} waiting", highlight=False)
    if data["workers"]:
        table = _table("worker", "kind", "consuming", "slots", "server", "circuit", "last seen", title="workers")
        for w in data["workers"]:
            state = "" if w["live"] else (" (stopped)" if w["stopping"] else " (silent)")
            table.add_row(w["name"] + state, w["kind"], ", ".join(w["queues"]), str(w["concurrency"]),
                          w["server"] or "", w["circuit"], w["last_seen"].strftime("%H:%M:%S"))
        out.print(table)


def _print_batch_status(data: dict) -> None:
    b = data["batch"]
    runs = data["runs"]
    out.print(f"[bold]batch {b['id']}[/bold]  {b['workflow']} v{b['workflow_version']}  from {b['source']}  "
              f"({b['rows_good']} rows, {b['rows_rejected']} rejected)")
    out.print("runs: " + "  ".join(f"{k} {v}" for k, v in runs.items()))
    cols = reports.STATUSES
    table = _table("step", "actor", *cols, title="interactions by step")
    for s in data["steps"]:
        table.add_row(s["step"], s["actor"], *(str(s[c]) for c in cols))
    out.print(table)
    if data["models"]:
        table = _table("model", *cols, title="interactions by model")
        for m in data["models"]:
            table.add_row(m["model"], *(str(m[c]) for c in cols))
        out.print(table)
    if data["failures"]:
        table = _table("step", "failure", "count", "example", title="failures")
        for f in data["failures"]:
            table.add_row(f["step"], f["failure_class"], str(f["n"]), (f["example"] or "")[:100])
        out.print(table)
    if data["failed_runs"]:
        table = _table("runs", "why they failed", title="failed runs (orchestrator show RUN_ID for one)")
        for f in data["failed_runs"]:
            table.add_row(str(f["n"]), f["end_reason"] or "")
        out.print(table)
    if data["rejects"]:
        out.print("[bold]rejected rows[/bold]")
        for r in data["rejects"]:
            out.print(f"  line {r['line']}: {r['reason']}", highlight=False)


@app.command()
def cancel(batch: Annotated[int, typer.Option("--batch", help="The batch to stop.")]) -> None:
    """Stop a batch: its waiting and in-flight work is cancelled, its running runs end."""
    from orchestrator.states import cancel_batch

    with database() as conn:
        reports.require_batch(conn, batch)
        with conn.transaction(), conn.cursor() as cur:
            interactions, runs = cancel_batch(cur, batch)
    out.print(f"batch {batch}: {runs} run(s) and {interactions} interaction(s) cancelled")


@app.command()
def show(run_id: int, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The chain of interactions of one run, in order, and the decisions taken."""
    with database() as conn:
        story = reports.run_story(conn, run_id)
    if as_json:
        print(json.dumps(story, default=str, indent=2))
        return
    run = story["run"]
    out.print(f"[bold]run {run['id']}[/bold]  batch {run['batch_id']}  {run['workflow_name']} v{run['workflow_version']}"
              f"  line {run['line']} of {run['source_name']}  [bold]{run['status']}[/bold]")
    if run["end_reason"]:
        out.print(f"end: {run['end_reason']}", highlight=False)
    table = _table("#", "id", "step", "actor", "status", "attempt", "parents", "in", "out", "duration")
    for n, i in enumerate(story["interactions"], 1):
        status_text = i["status"] + (f" ({i['failure_class']})" if i["failure_class"] else "")
        duration = f"{i['duration_s']:.2f}s" if i["duration_s"] is not None else ""
        table.add_row(str(n), str(i["id"]), i["step"] + (f" #{i['visit']}" if i["visit"] > 1 else ""), i["actor"],
                      status_text, f"{i['attempt']}/{i['max_attempts']}", ",".join(map(str, i["parent_ids"])),
                      f"{i['input_chars']:,}", f"{i['output_chars']:,}" if i["output_chars"] is not None else "", duration)
    out.print(table)
    decisions = [e for e in story["events"] if e["kind"] in ("branch_taken", "no_branch_matched", "loop_bound_reached",
                                                              "loop_exit", "retried", "result_ignored")]
    for e in decisions:
        out.print(f"  {e['at']:%H:%M:%S} {e['kind']}: {json.dumps(e['detail'])}", highlight=False)
    for i in story["interactions"]:
        if i["failure_message"]:
            out.print(f"  [red]{i['step']}[/red]: {i['failure_message']}", highlight=False)


@app.command()
def export(
    batch: Annotated[int, typer.Option("--batch")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
) -> None:
    """The results of a batch: one record per run with the latest output of every step."""
    if fmt not in ("jsonl", "csv"):
        raise WavefarmError(f"--format must be jsonl or csv, not {fmt!r}")
    with database() as conn:
        stream = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
        try:
            records = reports.export_batch(conn, batch)
            if fmt == "jsonl":
                for record in records:
                    stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            else:
                _write_csv(stream, records, reports.batch_steps(conn, batch))
        finally:
            if output:
                stream.close()


def _write_csv(stream, records, steps: list[str]) -> None:
    writer = None
    for record in records:
        flat = {"run_id": record["run_id"], "status": record["status"], "end_reason": record["end_reason"]}
        flat.update(record["row"])
        for step in steps:
            value = record["outputs"].get(step)
            flat[f"output.{step}"] = value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if writer is None:
            writer = csv.DictWriter(stream, fieldnames=list(flat))
            writer.writeheader()
        writer.writerow(flat)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WavefarmError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise WavefarmError(f"{path} is not UTF-8 text") from None


from orchestrator import demo as _demo  # noqa: E402  (orchestrator/demo.py: the zero-setup demo)
app.command("demo")(_demo.demo)


def main() -> None:
    run_app(app, err)
