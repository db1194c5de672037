"""`orchestrator`: the command line. Thin: each command opens the database, calls one
module, and shows what came back as a table or as JSON."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import Progress, TextColumn
from rich.table import Table
from rich.text import Text

from common.cli import run_app
from common.errors import WavefarmError
from common.logs import setup_logging
from common.redact import redact
from common.settings import get_settings
from orchestrator import embedded_postgres, overview
from orchestrator.db import connect
from orchestrator.db.migrate import upgrade
from orchestrator.db.store import Store
from orchestrator.reconnect import Reconnecting

if TYPE_CHECKING:
    from orchestrator.batches import Submission
    from orchestrator.progress import Snapshot

# Workflow files, CSV files and templates (pyyaml, Jinja2, jsonschema) are imported by the
# commands that read them, not by `status` and `show`: each command starts in a fraction
# of the time.

app = typer.Typer(help="wavefarm orchestrator: workflows, batches, runs.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
workflow_app = typer.Typer(help="Workflow files.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(workflow_app, name="workflow")
prices_app = typer.Typer(help="What the models cost: prices per million tokens and per hour.", no_args_is_help=True)
cache_app = typer.Typer(help="The interaction cache: answers given once, reused.", no_args_is_help=True)
app.add_typer(prices_app, name="prices")
app.add_typer(cache_app, name="cache")

# When piped (to a file, a test, grep) rich would assume 80 columns and cut cells
# short; a wide console keeps every name and id whole. Nothing printed is read as rich
# markup: a model's answer, a script's stderr, a CSV value or a YAML key holding
# "[/INST]" or "[link=...]" is text like any other. What the code styles, it styles
# with Text spans (`styled`).
out = Console(width=None if sys.stdout.isatty() else 200, markup=False, highlight=False)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200, markup=False, highlight=False)


# What the database's columns hold: a value past them is refused where it is typed.
ID_MAX = 2**63 - 1                        # bigint ids
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1  # integer priority


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line of plain text, with (text, style) parts styled: never parsed as markup."""
    return Text.assemble(*parts)


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
def database() -> Iterator[Store]:
    conn = connect(_database_url())
    try:
        yield Store(conn)
    finally:
        conn.close()


def _database_url() -> str:
    return embedded_postgres.configured_or_embedded_url(say=lambda text: err.print(text, highlight=False))


def _reconnecting(db: Store) -> Reconnecting:
    """The store of a command that stays on the database: a restart is waited for."""
    return Reconnecting(db, url=_database_url(), say=_say_line)


def _say_line(text: str) -> None:
    """One line on stderr, unwrapped whatever its length (a URL), taken as plain text."""
    err.print(text, highlight=False, markup=False, soft_wrap=True)


def _scripts_dir(option: Path | None) -> Path | None:
    return option or get_settings().scripts_dir


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema (idempotent)."""
    with database() as db:
        applied = upgrade(db.conn)
    if applied:
        for m in applied:
            out.print(f"applied migration {m.version:04d} {m.name}")
    else:
        out.print("schema is up to date")


CreditLimit = Annotated[Optional[str], typer.Option(
    "--credit-limit", metavar="AMOUNT",
    help="Pause the batch when what it spent reaches AMOUNT (the currency of orchestrator prices).")]
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
    from orchestrator.workflow import validate_text

    problems = validate_text(text, str(file), _scripts_dir(scripts_dir), _model_overrides(model))
    if problems:
        err.print(styled((f"{file}: {len(problems)} problem(s)", "red")))
        for p in problems:
            err.print(f"  {p.located(str(file))}")
        raise typer.Exit(1)
    out.print(f"{file}: valid")


@workflow_app.command("load")
def workflow_load(file: Path, scripts_dir: ScriptsDir = None, model: ModelOption = None) -> None:
    """Validate, then store as a new version when it changed."""
    from orchestrator import catalog
    from orchestrator.workflow import load_file

    workflow = load_file(file, _scripts_dir(scripts_dir), _model_overrides(model))
    with database() as db:
        stored = catalog.store(db, workflow, _read_text(file))
        state = "stored as" if stored.created else "unchanged, still"
        out.print(f"workflow {stored.name}: {state} version {stored.version}", highlight=False)
        _warn_unserved(db, workflow)


def _warn_unserved(db: Store, workflow) -> None:
    """Say which of the workflow's models (and scripts) no live worker serves now: their
    work would wait, in silence but for `status`, until one starts."""
    from orchestrator.workers import STALE_S

    missing = overview.unserved(db, workflow, stale_s=STALE_S)
    for _, model, queue in (m for m in missing if m[0] == "ai"):
        err.print(f"warning: no live gpu-worker serves model {model} (queue {queue}): its steps will wait until "
                  "one does (gpu-worker --ollama-url URL, on a host that has the model)", markup=False,
                  highlight=False)
    scripts = [actor for kind, actor, _ in missing if kind == "script"]
    if scripts:
        err.print(f"warning: no live script-worker is running: the script steps ({', '.join(scripts)}) will wait "
                  "until one does (script-worker --scripts-dir DIR)", markup=False, highlight=False)


@workflow_app.command("list")
def workflow_list() -> None:
    """Loaded workflows and their latest versions."""
    with database() as db:
        rows = db.list_workflows()
    table = _table("name", "version", "steps", "loaded at")
    for r in rows:
        table.add_row(r.name, str(r.version), str(r.steps), r.created_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@prices_app.command("set")
def prices_set(
    model: Annotated[str, typer.Argument(help="The model, as workflows name it (gemma2 is gemma2:latest).")],
    input_per_1m: Annotated[Optional[str], typer.Option("--input-per-1m", metavar="AMOUNT",
                                                        help="Per million prompt tokens.")] = None,
    output_per_1m: Annotated[Optional[str], typer.Option("--output-per-1m", metavar="AMOUNT",
                                                         help="Per million output tokens.")] = None,
    per_hour: Annotated[Optional[str], typer.Option("--per-hour", metavar="AMOUNT",
                                                    help="Per hour of one slot's call time.")] = None,
) -> None:
    """Set a model's prices from now on (what is not given stays as it was). Attempts
    recorded before keep the cost of the prices in force then."""
    from orchestrator import prices

    try:
        amounts = {field: prices.parse_amount(text, prices.FIELDS[field]) for field, text in
                   (("input_per_1m", input_per_1m), ("output_per_1m", output_per_1m), ("per_hour", per_hour))}
        prices.check_model(model)
        if all(v is None for v in amounts.values()):
            raise prices.PriceError("give at least one of --input-per-1m, --output-per-1m, --per-hour")
    except prices.PriceError as exc:
        raise typer.BadParameter(exc.reason, param_hint=exc.option) from None
    with database() as db:
        price = prices.set_price(db, model, **amounts)
    out.print(f"{price.model}: {_price_text(price)}", markup=False, highlight=False)


def _price_text(price) -> str:
    from orchestrator.prices import plain

    parts = [(price.input_per_1m, "per 1M input tokens"), (price.output_per_1m, "per 1M output tokens"),
             (price.per_hour, "per hour")]
    return ", ".join(f"{plain(v, exact=True)} {what}" for v, what in parts if v is not None) or "no price"


@prices_app.command("list")
def prices_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Each model's prices in force, and since when."""
    from orchestrator import prices

    with database() as db:
        rows = prices.in_force(db)
    if as_json:
        print(json.dumps([{"model": p.model, "input_per_1m": prices.number(p.input_per_1m),
                           "output_per_1m": prices.number(p.output_per_1m), "per_hour": prices.number(p.per_hour),
                           "set_at": p.set_at.isoformat()} for p in rows], ensure_ascii=False))
        return
    if not rows:
        out.print("no prices set: every model costs 0 (orchestrator prices set MODEL --input-per-1m X ...)")
        return
    table = _table("model", "input per 1M", "output per 1M", "per hour", "set at")
    for p in rows:
        table.add_row(p.model, prices.plain(p.input_per_1m, exact=True), prices.plain(p.output_per_1m, exact=True),
                      prices.plain(p.per_hour, exact=True),
                      p.set_at.strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)


@cache_app.command("stats")
def cache_stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The cache per model: entries, hits, oldest entry, last hit, tokens and cost saved."""
    from orchestrator import cache
    from orchestrator.prices import number, plain

    with database() as db:
        rows = cache.stats(db)
    if as_json:
        print(json.dumps([{"model": r.model, "entries": r.entries, "hits": r.hits,
                           "oldest": r.oldest.isoformat() if r.oldest else None,
                           "last_hit": r.last_hit.isoformat() if r.last_hit else None,
                           "saved_prompt_tokens": r.saved_prompt_tokens, "saved_output_tokens": r.saved_output_tokens,
                           "saved_cost": number(r.saved_cost)} for r in rows], ensure_ascii=False))
        return
    if not rows:
        out.print("the cache is empty (a step with `cache: true` fills it)")
        return
    table = _table("model", "entries", "hits", "oldest entry", "last hit", "tokens saved", "cost saved")
    for r in rows:
        table.add_row(r.model, f"{r.entries:,}", f"{r.hits:,}", r.oldest.strftime("%Y-%m-%d %H:%M") if r.oldest else "",
                      r.last_hit.strftime("%Y-%m-%d %H:%M") if r.last_hit else "never",
                      f"{r.saved_prompt_tokens + r.saved_output_tokens:,}", plain(r.saved_cost))
    out.print(table)


@cache_app.command("clear")
def cache_clear(
    model: Annotated[Optional[str], typer.Option("--model", help="Only this model's answers (gemma2 is gemma2:latest).")] = None,
    older_than: Annotated[Optional[float], typer.Option("--older-than", metavar="DAYS", min=0.0, max=36500.0,
                                                        help="Only entries made more than DAYS days ago.")] = None,
) -> None:
    """Forget cached answers: later calls of the same prompts are made again. The
    interactions that gave or reused them keep their outputs."""
    from orchestrator import cache
    from orchestrator.prices import PriceError, check_model

    if model is not None:
        try:
            check_model(model)
        except PriceError as exc:
            raise typer.BadParameter(exc.reason, param_hint="--model") from None
    if older_than is not None and older_than != older_than:  # NaN passes typer's range check
        raise typer.BadParameter("a number of days", param_hint="--older-than")
    with database() as db:
        forgotten = cache.clear(db, model=model, older_than_days=older_than)
    scope = (f" of {model}" if model else "") + (f" older than {older_than:g} day(s)" if older_than is not None else "")
    out.print(f"forgot {forgotten} cache entr{'y' if forgotten == 1 else 'ies'}{scope}; the outputs of interactions "
              "stay", markup=False, highlight=False)


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
    as_json: Annotated[bool, typer.Option("--json", help="Print {\"batch_id\": ...} as the last line (with --wait or --local, after the progress as JSON lines).")] = False,
    priority: Annotated[Optional[int], typer.Option("--priority", min=PRIORITY_MIN, max=PRIORITY_MAX, help="Higher goes first; equal priorities share the farm (orchestrator priority changes it).")] = None,
    model: ModelOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be created, and show the first row's rendered first step; store nothing.")] = False,
    credit_limit: CreditLimit = None,
) -> None:
    """Submit a CSV file as a batch. Re-submitting the same file creates no duplicate runs."""
    from orchestrator import batches, catalog

    limit = _amount(credit_limit)

    if dry_run:
        _submit_dry_run(batch, workflow, key, _scripts_dir(scripts_dir), _model_overrides(model), as_json)
        return
    with database() as db:
        name = _workflow_name(db, workflow, _scripts_dir(scripts_dir), _model_overrides(model))
        with Progress(TextColumn("reading {task.description}"), TextColumn("{task.completed} rows"),
                      console=err, transient=True, disable=not sys.stderr.isatty()) as progress:
            task = progress.add_task(batch.name)
            submission = batches.submit(db, batch, name, key_column=key, priority=priority, credit_limit=limit,
                                        on_rows=lambda n: progress.update(task, completed=n))
        _print_submission(submission)
        if not local:
            _warn_unserved(db, catalog.by_id(db, overview.require_batch(db, submission.batch_id).workflow_id))
        ok = True
        if local or wait:
            # From here on the command watches the batch: a database restart is waited for.
            watching = _reconnecting(db)
            try:
                if local:
                    ok = _run_local(watching, submission.batch_id, ollama_url, _scripts_dir(scripts_dir),
                                    concurrency, as_json)
                else:
                    ok = _wait(watching, submission.batch_id, as_json)
            finally:
                watching.close()  # the connection it ends with may be a new one
    if as_json:
        print(json.dumps({"batch_id": submission.batch_id}))
    else:
        out.print(f"batch {submission.batch_id}")
    if (wait or local) and not ok:
        raise typer.Exit(1)


def _amount(text: str | None, option: str = "--credit-limit") -> Decimal | None:
    from orchestrator.budget import MAX_CREDIT
    from orchestrator.prices import PriceError, parse_amount

    try:
        return parse_amount(text, option, maximum=MAX_CREDIT)
    except PriceError as exc:
        raise typer.BadParameter(exc.reason, param_hint=option) from None


def _workflow_name(db: Store, workflow: str, scripts_dir: Path | None, models: dict[str, str]) -> str:
    from orchestrator import catalog
    from orchestrator.workflow import load_file

    path = Path(workflow)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        stored = catalog.store(db, load_file(path, scripts_dir, models), _read_text(path))
        return stored.name
    if models:
        raise typer.BadParameter("--model needs --workflow to name a workflow file", param_hint="--model")
    return workflow


def _print_submission(submission: Submission) -> None:
    s = submission.summary
    verb = "new batch" if submission.new_batch else "existing batch"
    err.print(
        f"{verb} {submission.batch_id} for workflow {submission.workflow} v{submission.workflow_version}: "
        f"{submission.runs_created} run(s) created, {submission.runs_existing} already submitted, "
        f"{s.bad} row(s) rejected, {s.empty} empty row(s) skipped",
        highlight=False,
    )
    if submission.runs_again:
        err.print(f"  {submission.runs_again} of the new runs are rows an earlier version of {submission.workflow} "
                  f"ran: they run again on v{submission.workflow_version}")
    for bad in submission.rejected[:20]:
        err.print(styled("  ", (f"line {bad.line}", "yellow"), f": {bad.reason}"))
    if len(submission.rejected) > 20:
        err.print(f"  ... and {len(submission.rejected) - 20} more (orchestrator status --batch {submission.batch_id})")


def _wait(db: Reconnecting, batch_id: int, as_json: bool) -> bool:
    """submit --wait: the batch's progress on stderr until it ends (with --json, as JSON
    lines on stdout, before the last line with the batch's id)."""
    from orchestrator import watch

    return _follow(db, batch_id, watch.view_for(err, as_json=as_json))


def _follow(db: Reconnecting, batch_id: int, view) -> bool:
    """Show the batch until it ends or waits for a person; whether every run completed.
    Ctrl-C stops the watching, not the batch."""
    from orchestrator import watch

    try:
        last = watch.follow(db, batch_id, view)
    except KeyboardInterrupt:
        view.close()
        err.print(f"stopped watching; batch {batch_id} goes on (orchestrator status --batch {batch_id} --watch)")
        raise typer.Exit(130) from None
    view.close()
    return _verdict(last)


def _verdict(last: Snapshot) -> bool:
    from orchestrator import watch

    ok, message = watch.verdict(last)
    if message:
        err.print(styled(("error:", "red"), " ", message), soft_wrap=True)
    return ok


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
        script_env={"WAVEFARM_DATABASE_URL": settings.database_url_for_scripts(_database_url())[0]},
    )


def _run_local(db: Reconnecting, batch_id: int, ollama_url: str | None,
               scripts_dir: Path | None, concurrency: int, as_json: bool) -> bool:
    from orchestrator import watch

    executor = _local_executor(db, ollama_url, scripts_dir, concurrency, "local")
    view = watch.view_for(err, as_json=as_json)
    try:
        # The executor ends when nothing of the batch can move: every run ended, or what is
        # left waits for a person (an escalation).
        executor.run(batch_id, on_tick=watch.Throttled(db, batch_id, view))
        last = watch.read(db, batch_id)
        view.show(last)
    finally:
        view.close()
    return _verdict(last)


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
    err.print(f"serving: results from {redact(settings.require_broker_url())}, Ctrl-C to stop", highlight=False)
    try:
        Service(pool, celery_app, batch_size=batch_size, window_factor=window_factor).run(stop)
    finally:
        pool.close()
    err.print("stopped; work in flight is taken back by the sweeper after its deadline")


def _serve_local(ollama_url: str | None, scripts_dir: Path | None, concurrency: int) -> None:
    with database() as db:
        executor = _local_executor(_reconnecting(db), ollama_url, scripts_dir, concurrency, "serve")
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
    watching: Annotated[bool, typer.Option("--watch", help="With --batch: follow it live until it ends (exit 0 if "
                                                          "every run completed, 1 otherwise).")] = False,
) -> None:
    """Runs and interactions by status, per batch, per step and per model."""
    from orchestrator.workers import STALE_S

    if watching:
        if batch is None:
            raise typer.BadParameter("--watch follows one batch: give --batch ID", param_hint="--watch")
        _watch_batch(batch, as_json)
        return
    with database() as db:
        if batch is not None:
            data = overview.batch_status(db, batch)
        else:
            data = {"batches": overview.list_batches(db), **overview.farm_status(db, stale_s=STALE_S)}
    if as_json:
        print(json.dumps(data, default=str, indent=2))
        return
    if batch is None:
        _print_farm_status(data)
        return
    _print_batch_status(data)


def _watch_batch(batch_id: int, as_json: bool) -> None:
    """status --watch: the live display on stdout (or JSON lines) until the batch ends."""
    from orchestrator import watch

    with database() as db:
        overview.require_batch(db, batch_id)  # no such batch: said at once, exit 2
        watching = _reconnecting(db)
        view = watch.view_for(out, as_json=as_json)
        if isinstance(view, watch.LiveView):
            watching.say = lambda text: out.print(text, soft_wrap=True)  # above the display, not through it
        try:
            ok = _follow(watching, batch_id, view)
        finally:
            watching.close()
    if not ok:
        raise typer.Exit(1)


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
                out.print(styled((q["queue"], "red"), f": {q['problem']} ({', '.join(q['actors'])}): "
                                                      f"{q['pending']} waiting"))
            elif q["placing"]:
                out.print(styled((q["queue"], "yellow"), f": no host consumes it now; placement gives it one "
                                                         f"({q['pending']} waiting)"))
    if data["hosts"]:
        table = _table("host", "holds", "loaded", "placed", "consuming", title="GPU hosts")
        for h in data["hosts"]:
            placed = "not placed by serve" if h["max_loaded"] is None else (
                "no word yet" if h["placed"] is None else ", ".join(h["placed"]) or "nothing (no work)")
            table.add_row(f"{h['machine']} {h['server']}", str(h["max_loaded"] or "-"), ", ".join(h["resident"]),
                          placed, ", ".join(h["queues"]))
        out.print(table)
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
    out.print(styled((f"batch {b['id']}", "bold"), f"  {b['workflow']} v{b['workflow_version']}  from {b['source']}  "
                                                   f"({b['rows_good']} rows, {b['rows_rejected']} rejected)"))
    state_style = {"running": "green", "paused": "yellow", "escalated": "red", "done": "bold"}[data["state"]]
    out.print(styled("state: ", (data["state"], state_style), f" ({data['reason']})" if data["reason"] else ""))
    for e in data["escalations"]:
        out.print(styled("  ", (f"escalated: step {e['step']}", "red"), f": {e['reason']} "
                         f"(orchestrator resume --batch {b['id']} once it is fixed)"))
    c = data["cost"]
    if c["budget_exceeded"]:
        from orchestrator.cost import resume_hint
        from orchestrator.prices import plain

        out.print(styled(("budget_exceeded", "bold red"), f": the batch reached its credit limit (spent "
                         f"{plain(c['spent'])} of {plain(c['credit_limit'], exact=True)}) and is paused; to go on: ",
                         (resume_hint(b["id"]), "bold")))
    out.print("runs: " + "  ".join(f"{k} {v}" for k, v in runs.items()))
    if data["state"] != "done":
        from orchestrator.pace import duration

        out.print(f"progress: {data['progress']['ended']}/{data['progress']['total']} runs ended, "
                  f"{data['rate_per_min']:g}/min over the last minute, ETA {duration(data['eta_s'])}; "
                  f"{_forecast_text(data['forecast'])}")
    if set(data["outcomes"]) - {"completed"}:
        out.print("outcomes: " + "  ".join(f"{k} {v}" for k, v in data["outcomes"].items()), highlight=False)
    cols = overview.STATUSES
    table = _table("step", "actor", *cols, title="interactions by step")
    for s in data["steps"]:
        table.add_row(s["step"], s["actor"], *(str(s[c]) for c in cols))
    out.print(table)
    if data["models"]:
        table = _table("model", *cols, title="interactions by model")
        for m in data["models"]:
            table.add_row(m["model"], *(str(m[c]) for c in cols))
        out.print(table)
    _print_cost(data["cost"])
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
        out.print(styled(("rejected rows", "bold")))
        for r in data["rejects"]:
            out.print(f"  line {r['line']}: {r['reason']}", highlight=False)


def _forecast_text(f: dict) -> str:
    """Spent so far and what the rest will cost at this rate (status, and the watch's pace line)."""
    from orchestrator.prices import plain

    if f["to_go"] is None:
        return f"spent {plain(f['spent'])}, the rest's cost unknown (no run ended yet)"
    return f"spent {plain(f['spent'])}, the rest ~{plain(f['to_go'])} at this rate (total ~{plain(f['total'])})"


_COST_COLUMNS = ("attempts", "prompt tokens", "output tokens", "model time", "cost", "cache hits", "tokens saved",
                 "cost saved")


def _cost_cells(r: dict) -> list[str]:
    from orchestrator.prices import plain

    cost = plain(r["cost"]) + (" (no price: costs 0)" if r["unpriced"] else "")
    return [f"{r['attempts']:,}", f"{r['prompt_tokens']:,}", f"{r['output_tokens']:,}", f"{r['model_s']:.1f}s", cost,
            f"{r['cache_hits']:,}", f"{r['saved_prompt_tokens'] + r['saved_output_tokens']:,}", plain(r["saved_cost"])]


def _print_cost(c: dict) -> None:
    """The cost section of `status --batch`: per model, per step, the total, the credit."""
    from orchestrator.prices import plain

    if c["models"]:
        table = _table("model", *_COST_COLUMNS, title="cost by model")
        for m in c["models"]:
            table.add_row(m["model"], *_cost_cells(m))
        out.print(table)
    if c["steps"]:
        table = _table("step", "model", *_COST_COLUMNS, title="cost by step")
        for s in c["steps"]:
            table.add_row(s["step"], ", ".join(s["models"]) or "(script)", *_cost_cells(s))
        out.print(table)
    t = c["total"]
    per_run = plain(c["cost_per_completed_run"]) if c["cost_per_completed_run"] is not None else "unknown"
    out.print(styled(("cost: ", "bold"), f"{plain(t['cost'])} in all over {t['attempts']:,} attempt(s) "
                     f"({t['prompt_tokens']:,} prompt + {t['output_tokens']:,} output tokens, model time "
                     f"{t['model_s']:.1f}s); {per_run} per completed run ({c['completed_runs']:,} completed)"))
    if t["cache_hits"]:
        out.print(f"cache: {t['cache_hits']:,} hit(s) saved {t['saved_prompt_tokens'] + t['saved_output_tokens']:,} "
                  f"tokens and {plain(t['saved_cost'])}", highlight=False)
    if t["unpriced"]:
        names = [m["model"] for m in c["models"] if m["unpriced"]]
        out.print(styled(("no price: ", "yellow"), f"{', '.join(names)} had no price when "
                         f"{t['unpriced_attempts']:,} attempt(s) were recorded: they cost 0 "
                         "(orchestrator prices set MODEL --input-per-1m X --output-per-1m Y)"))
    if c["credit_limit"] is not None:
        left = c["left"]
        said = f"{plain(left)} left" if left >= 0 else f"over by {plain(-left)}"
        out.print(styled(("credit: ", "bold"), f"limit {plain(c['credit_limit'], exact=True)}, spent {plain(c['spent'])}, {said}"))


@app.command()
def cancel(
    batch: Annotated[Optional[int], typer.Option("--batch", help="Stop a whole batch.")] = None,
    run: Annotated[Optional[list[int]], typer.Option("--run", min=1, max=ID_MAX, help="Stop one run (repeatable).")] = None,
) -> None:
    """Stop a batch, or some of its runs: their waiting and in-flight work is cancelled,
    their running runs end cancelled; a result that arrives later is recorded as ignored."""
    from orchestrator import controls

    if (batch is None) == (not run):
        raise typer.BadParameter("give --batch ID, or --run ID (one or more), not both")
    with database() as db:
        cancelled = controls.cancel_batch(db, batch) if batch is not None else controls.cancel_runs(db, run)
        _tell_workers(db)
    what = f"batch {batch}" if batch is not None else f"run(s) {', '.join(map(str, run))}"
    out.print(f"{what}: {cancelled.runs} run(s) and {cancelled.interactions} interaction(s) cancelled")


def _tell_workers(db: Store) -> None:
    """Tell the workers what is held now and wait until they heard it: when a command
    that holds returns, no held call starts. Where the broker cannot be reached, serve
    tells them when it can (the database has the change already)."""
    from common.celery_app import make_app
    from orchestrator.holds import tell_now

    try:
        answered, live = tell_now(db, make_app(get_settings().require_broker_url()))
    except Exception as exc:  # the broker is away: serve repeats the word every few seconds
        err.print(f"note: the workers could not be told at once ({type(exc).__name__}); serve tells them when "
                  "the broker is back", highlight=False)
        return
    if answered < live:
        err.print(f"note: {answered} of {live} live worker(s) answered; serve tells the others within seconds",
                  highlight=False)


@app.command()
def pause(batch: Annotated[int, typer.Option("--batch", help="The batch to pause.")]) -> None:
    """No call of the batch starts until it is resumed: work the workers hold is handed
    back unstarted; calls already running finish and are recorded, their children wait."""
    from orchestrator import controls

    with database() as db:
        paused = controls.pause(db, batch)
        _tell_workers(db)
    out.print(f"batch {batch}: paused" if paused else f"batch {batch} was paused already")


@app.command()
def resume(batch: Annotated[int, typer.Option("--batch", help="The batch to go on with.")],
           credit_limit: CreditLimit = None) -> None:
    """Go on with a paused batch, and release the steps an escalation held. A batch that
    stopped at its credit limit goes on only with a higher one (--credit-limit)."""
    from orchestrator import controls

    limit = _amount(credit_limit)
    with database() as db:
        resumed, steps = controls.resume(db, batch, credit_limit=limit)
        _tell_workers(db)
    said = [f"batch {batch}: " + ("resumed" if resumed else "was not paused")]
    if limit is not None:
        said.append(f"credit limit {limit}")
    if steps:
        said.append(f"escalated step(s) released: {', '.join(steps)}")
    out.print("; ".join(said))


@app.command()
def priority(
    batch: Annotated[int, typer.Option("--batch", help="The batch.")],
    level: Annotated[int, typer.Argument(min=PRIORITY_MIN, max=PRIORITY_MAX,
                                         help="Higher goes first; equal priorities share the farm.")],
) -> None:
    """Give a batch another priority: the dispatcher follows it at its next turn."""
    from orchestrator import controls

    with database() as db:
        controls.set_priority(db, batch, level)
    out.print(f"batch {batch}: priority {level}")


@app.command()
def retry(
    batch: Annotated[int, typer.Option("--batch", help="The batch.")],
    failed: Annotated[bool, typer.Option("--failed", help="Only runs that ended failed or cancelled.")] = False,
    from_step: Annotated[Optional[str], typer.Option(
        "--from-step", help="Run this step again, and every step after it; reuse the others' outputs.")] = None,
    run: Annotated[Optional[list[int]], typer.Option("--run", min=1, max=ID_MAX, help="Only this run (repeatable).")] = None,
    workflow_version: Annotated[Optional[str], typer.Option(
        "--workflow-version", help="Move the runs to this version of their workflow first: N or latest.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what it would do; change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Runs that ended failed or cancelled go on from where they stopped (a failed
    interaction gets a new attempt, a run that ended otherwise a new visit of the step
    where it ended); with --from-step, the selected runs run that step and every step
    after it again. Prompts are rendered again, so a fixed workflow takes effect. One
    transaction: all of it or nothing."""
    from orchestrator import rerun

    version: rerun.Version | None = None
    if workflow_version is not None:
        if workflow_version != "latest" and not (workflow_version.isdigit() and int(workflow_version) > 0):
            raise typer.BadParameter("a version number (1, 2, ...) or latest", param_hint="--workflow-version")
        version = "latest" if workflow_version == "latest" else int(workflow_version)
    request = rerun.RetryRequest(batch, failed=failed, from_step=from_step, run_ids=tuple(run) if run else None,
                                 version=version)
    with database() as db:
        plan = rerun.retry(db, request, dry_run=dry_run)
        if plan.done:
            _tell_workers(db)
    if as_json:
        print(json.dumps(plan.as_dict()))
        return
    _print_retry(plan)


def _print_retry(plan) -> None:
    head = "would retry" if not plan.done else "retried"
    touched = sum(plan.runs.values())
    out.print(styled((f"batch {plan.batch_id}: {head} {touched} run(s)", "bold"), f" ({plan.mode}"
                     + (f", moved to version {plan.moved_to}" if plan.moved_to else "") + ")"), markup=False, highlight=False)
    if plan.runs:
        out.print("  runs, by how they were: " + ", ".join(f"{n} {s}" for s, n in sorted(plan.runs.items())),
                  markup=False, highlight=False)
    out.print(f"  interactions: {plan.new_attempts} new attempt(s), {plan.new_visits} new visit(s); "
              f"{plan.superseded} superseded (kept in the history)"
              + (f", {plan.cancelled} of them cancelled while waiting or running" if plan.cancelled else ""),
              markup=False, highlight=False)
    if plan.moved_on:
        out.print(f"  moved: {plan.moved_on} running run(s) that had not reached the step yet go on on version "
                  f"{plan.moved_to}", markup=False, highlight=False)
    for why, n in sorted(plan.skipped.items()):
        out.print(f"  skipped: {n} run(s) {why}", markup=False, highlight=False)
    if plan.ended_again:
        out.print(f"  {plan.ended_again} run(s) ended again at once: their new work could not start "
                  "(orchestrator failures --batch to see why)", markup=False, highlight=False)
    if plan.escalations_lifted:
        out.print(f"  escalation lifted: step(s) {', '.join(plan.escalations_lifted)}", markup=False, highlight=False)
    for notice in plan.notices[:10]:
        err.print(f"note: {notice}", markup=False, highlight=False)
    if len(plan.notices) > 10:
        err.print(f"note: ... and {len(plan.notices) - 10} more", markup=False, highlight=False)


@app.command()
def show(run_id: int, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The chain of interactions of one run, in order, and the decisions taken."""
    with database() as db:
        story = overview.run_story(db, run_id)
    if as_json:
        print(json.dumps(story, default=str, indent=2))
        return
    from orchestrator.prices import plain

    run = story["run"]
    out.print(styled((f"run {run['id']}", "bold"), f"  batch {run['batch_id']}  {run['workflow_name']} "
                     f"v{run['workflow_version']}  line {run['line']} of {run['source_name']}  ",
                     (run["status"], "bold"), f" ({run['outcome']})" if run["outcome"] else ""))
    if run["end_reason"]:
        out.print(f"end: {run['end_reason']}", highlight=False)
    table = _table("#", "id", "step", "actor", "status", "attempt", "parents", "in", "out", "duration", "worker",
                   "cost")
    for n, i in enumerate(story["interactions"], 1):
        status_text = i["status"] + (f" ({i['failure_class']})" if i["failure_class"] else "") + (
            ", superseded" if i["superseded"] else "")
        duration = f"{i['duration_s']:.2f}s" if i["duration_s"] is not None else ""
        table.add_row(str(n), str(i["id"]), i["step"] + (f" #{i['visit']}" if i["visit"] > 1 else ""), i["actor"],
                      status_text, f"{i['attempt']}/{i['max_attempts']}", ",".join(map(str, i["parent_ids"])),
                      f"{i['input_chars']:,}", f"{i['output_chars']:,}" if i["output_chars"] is not None else "",
                      duration, ("cache" if i["cached_from"] is not None else i["worker"] or ""),
                      plain(i["cost"]))
    out.print(table)
    decisions = [e for e in story["events"] if e["kind"] in ("branch_taken", "no_branch_matched", "loop_bound_reached",
                                                              "loop_exit", "retried", "not_retried",
                                                              "result_ignored")]
    for e in decisions:
        out.print(f"  {e['at']:%H:%M:%S} {e['kind']}: {json.dumps(e['detail'])}", highlight=False)
    for i in story["interactions"]:
        if i["failure_message"]:
            out.print(styled("  ", (i["step"], "red"), f": {i['failure_message']}"))
    for i in story["interactions"]:
        if i["cached_from"] is not None:
            where = (f" of run {i['cached_from_run']} in batch {i['cached_from_batch']}"
                     if i["cached_from_run"] is not None else " (its batch has been purged)")
            out.print(styled("  ", (i["step"], "cyan"), f": answered from the cache: the output of interaction "
                             f"{i['cached_from']}{where}; no call made"))
    if story["attempts"]:
        _print_attempts(story["attempts"])


def _print_attempts(attempts: list[dict]) -> None:
    """show: every attempt with its usage and cost (retries and ignored ones too)."""
    from orchestrator.prices import plain

    table = _table("interaction", "attempt", "outcome", "worker", "model", "prompt tokens", "output tokens",
                   "call", "cost", title="attempts")
    for a in attempts:
        cost = plain(a["cost"]) if a["cost"] is not None else ("no price: 0" if a["model"] else "")
        table.add_row(str(a["interaction_id"]), str(a["attempt"]), a["outcome"], a["worker"] or "", a["model"] or "",
                      "" if a["prompt_tokens"] is None else f"{a['prompt_tokens']:,}",
                      "" if a["output_tokens"] is None else f"{a['output_tokens']:,}",
                      "" if a["call_s"] is None else f"{a['call_s']:.2f}s", cost)
    out.print(table)


@app.command()
def export(
    batch: Annotated[int, typer.Option("--batch")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write, whole or not at all (default: stdout).")] = None,
    allow_formulas: Annotated[bool, typer.Option("--allow-formulas", help="CSV: write cells that start with = + - @ as they are, not as text (only for readers that are not spreadsheets).")] = False,
    with_cost: Annotated[bool, typer.Option("--cost", help="Add each run's cost and tokens (cost, prompt_tokens, output_tokens).")] = False,
) -> None:
    """The results of a batch: one record per run with the latest output of every step."""
    from orchestrator import export as exporter

    if fmt not in ("jsonl", "csv"):
        raise WavefarmError(f"--format must be jsonl or csv, not {fmt!r}")
    with database() as db:
        steps = overview.batch_steps(db, batch)  # no such batch: said before any file is touched
        with exporter.destination(output) as stream:
            exporter.write(overview.export_batch(db, batch, with_cost=with_cost), steps, fmt, stream, allow_formulas=allow_formulas)


def _submit_dry_run(path: Path, workflow: str, key: str | None, scripts_dir: Path | None,
                    models: dict[str, str], as_json: bool) -> None:
    """`submit --dry-run`: orchestrator/dry_run.py; a workflow file is read, not stored."""
    from dataclasses import asdict

    from orchestrator import dry_run
    from orchestrator.triage import printable
    from orchestrator.workflow import load_file

    source = Path(workflow)
    if source.suffix in {".yaml", ".yml"} and source.is_file():
        target = load_file(source, scripts_dir, models)
    elif models:
        raise typer.BadParameter("--model needs --workflow to name a workflow file", param_hint="--model")
    else:
        target = workflow
    with database() as db:
        plan = dry_run.plan(db, path, target, key_column=key)
    if as_json:
        print(json.dumps(asdict(plan), default=str, ensure_ascii=False))
        return
    version = f"v{plan.workflow_version}" + ("" if plan.workflow_stored else " (not stored yet: submit would store it)")
    batch = f"would add to existing batch {plan.batch_id}" if plan.batch_id is not None else "would be a new batch"
    out.print(styled(("dry run", "bold"), f": nothing stored. {path.name} for workflow {plan.workflow} {version} "
                     f"{batch}:"))
    out.print(f"  {plan.runs_new} new run(s) ({plan.runs_again} of them rows an earlier version ran), "
              f"{plan.runs_existing} already submitted, {len(plan.rejected)} row(s) rejected, "
              f"{plan.rows_empty} empty row(s) skipped")
    for bad in plan.rejected[:20]:
        out.print(styled("  ", (f"line {bad.line}", "yellow"), f": {printable(bad.reason)}"))
    if len(plan.rejected) > 20:
        out.print(f"  ... and {len(plan.rejected) - 20} more (--json lists them all)")
    if plan.born_failed:
        first = plan.born_failed_first
        out.print(styled("  ", (f"{plan.born_failed} new run(s) would fail at once", "red"),
                         f": step {first['step']} does not render (first at line {first['line']}: "
                         f"{printable(first['message'])})"))
    if plan.first_row is not None:
        row = plan.first_row
        out.print(styled(("first row", "bold"), f" (line {row['line']}" + (", already submitted)" if row["exists"] else ")")))
        for step in row["steps"]:
            out.print(styled("  ", (f"step {step.step}", "bold"), f" ({step.kind} {step.actor}): {step.status}"))
            if step.failure:
                out.print(styled("    ", ("cannot render: ", "red"), printable(step.failure)))
            elif step.kind == "ai":
                if step.input.get("system"):
                    out.print(styled("    ", ("system: ", "dim"), printable(step.input["system"])))
                out.print(styled("    ", ("prompt: ", "dim"), printable(step.input["prompt"])))
            else:
                out.print(styled("    ", ("input: ", "dim"), json.dumps(step.input["input"], ensure_ascii=False)))


@app.command()
def failures(
    batch: Annotated[int, typer.Option("--batch", help="The batch to look into.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv: one row per example (of a group, an escalation, a rejected row).")] = None,
) -> None:
    """What went wrong in a batch: open escalations, failed attempts by step and class with
    examples, runs the engine ended, rejected rows, lifted escalations."""
    from dataclasses import asdict

    from orchestrator import triage

    if fmt not in (None, "csv"):
        raise WavefarmError(f"--format must be csv, not {fmt!r} (or --json for JSON)")
    with database() as db:
        report = triage.failures(db, batch, rejects_limit=None if as_json or fmt else 20)
    if fmt == "csv":
        triage.write_csv(report, sys.stdout)
    elif as_json:
        print(json.dumps(asdict(report), ensure_ascii=False))
    else:
        for line in triage.lines(report):
            out.print(line, soft_wrap=True)


@app.command()
def purge(
    batch: Annotated[int, typer.Option("--batch", help="The finished batch to delete.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask (required when not on a terminal).")] = False,
) -> None:
    """Delete a finished batch for good: its runs, interactions, attempts, events, rejected
    rows and escalations. A batch with runs still running is refused."""
    from orchestrator import retention

    with database() as db:
        counts = retention.preview(db, batch)
        if not yes:
            if not sys.stdin.isatty():
                raise WavefarmError(f"purge deletes batch {batch} for good ({counts.said()}): "
                                    "add --yes to confirm (there is no terminal to ask on)")
            if not typer.confirm(f"delete batch {batch} for good: {counts.said()}?", default=False, err=True):
                err.print("nothing deleted")
                raise typer.Exit(1)
        deleted = retention.purge(db, batch)
    out.print(f"batch {batch} purged: {deleted.said()} deleted")


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
