"""`orchestrator demo`: the main job in one command on a machine with nothing but Python.

It sets up what the farm needs and nobody installed: an embedded Postgres in the user's
data directory (common/embedded_postgres.py), the filesystem broker next to it
(common/celery_app.py), and a model server (one given, a local Ollama, or the built-in
small model). Then it runs the farm as production does, as separate processes:
`orchestrator serve`, a `script-worker` and a `gpu-worker`, each logging to a file in
the data directory. It loads the example workflow, submits the sample postings, shows
progress until every run has ended, prints the results and where to look next, and
stops everything it started, on success, on error and on Ctrl-C alike.
docs/embedded.md tells the whole story.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, Literal, Optional

import psycopg
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from common.errors import WavefarmError
from common.settings import get_settings, redact_url

if TYPE_CHECKING:
    from orchestrator.reconnect import Reconnecting

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DEFAULT_OLLAMA = "http://localhost:11434"
GRACE_S = 15.0       # a child's time to stop after SIGTERM before SIGKILL
POLL_S = 0.5
STALL_S = 60.0     # no change for this long: say what the farm knows
RESULT_ROWS = 10
# The built-in model runs on the CPU, one call at a time: a posting takes it a minute or
# two (about a dozen calls), so by default the demo gives it the first few rows only.
BUILTIN_LIMIT = 6
# Script steps are a Python subprocess each (most of a script's time is starting up):
# more of them at once than cores still pays, as they also wait on the database.
SCRIPT_SLOTS = min(8, max(4, os.cpu_count() or 1))

err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
out = Console(width=None if sys.stdout.isatty() else 200)


class DemoError(WavefarmError):
    """Something the demo needs is missing or broke; the message says what to do."""


# -- what to run --------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    workflow: Path
    batch: Path
    scripts_dir: Path
    key: str | None


def default_example() -> Example:
    """examples/postings/: the job-posting pipeline, its scripts and sample postings."""
    folder = EXAMPLES / "postings"
    return Example(folder / "workflow.yaml", folder / "postings.csv", folder / "scripts", "source_id")


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


# -- the model server ---------------------------------------------------------------------
@dataclass(frozen=True)
class ModelServer:
    api: Literal["ollama", "openai"]
    url: str
    models: list[str]
    where: str  # how it was found, for the user
    builtin: bool = False  # the small CPU model of gpu_worker.local_model: one call at a time, slow


def _list_models(api: str, url: str) -> list[str]:
    from gpu_worker.cli import make_backend

    backend, _ = make_backend(url if api == "ollama" else None, url if api == "openai" else None,
                              pool_size=1, worker="demo", api_key=os.environ.get("WAVEFARM_OPENAI_API_KEY"))
    with backend:
        return backend.list_models()


def find_model_server(ollama_url: str | None, openai_url: str | None, data: Path,
                      stack: ExitStack) -> ModelServer:
    from gpu_worker.backends.base import BackendError

    if ollama_url or openai_url:
        api, url = ("openai", openai_url) if openai_url else ("ollama", ollama_url)
        try:
            return ModelServer(api, url, _list_models(api, url), "given")
        except BackendError as exc:
            raise DemoError(f"the model server at {redact_url(url)} does not answer: {exc}") from None
    try:
        return ModelServer("ollama", DEFAULT_OLLAMA, _list_models("ollama", DEFAULT_OLLAMA), "Ollama on this machine")
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
        return ModelServer("openai", url, _list_models("openai", url), f"built-in {local_model.MODEL_NAME}",
                           builtin=True)
    raise DemoError(
        "no model server found: the demo needs one of\n"
        f"  - Ollama: install it (https://ollama.com/download), run `ollama serve` and `ollama pull gemma3:270m`, "
        f"then `orchestrator demo` again (it looks at {DEFAULT_OLLAMA});\n"
        "  - a server you already run: `orchestrator demo --ollama-url URL`, or `--openai-url URL` for an "
        "OpenAI-compatible one (vLLM, llama.cpp's llama-server);\n"
        "  - the built-in small model (gemma3:270m on the CPU, slow but real): "
        "`pip install 'wavefarm[local-model]'`, then `orchestrator demo` again.")


# -- the farm's processes -------------------------------------------------------------------
class ChildDied(DemoError):
    pass


class Children:
    """The farm's processes: each in its own session (Ctrl-C reaches only the demo, which
    stops them in order), each logging to its own file."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> None:
        path = self.logs / f"{name}.log"
        with path.open("ab") as log:
            log.write(f"\n---- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv[:2])}\n".encode())
            log.flush()
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                env=env or self.env, start_new_session=True)

    def check(self) -> None:
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                raise ChildDied(f"{name} stopped unexpectedly (exit {code}); the end of {self.log(name)}:\n"
                                f"{self.tail(name)}")

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def tail(self, name: str, lines: int = 25) -> str:
        try:
            text = self.log(name).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(f"  | {line}" for line in text[-lines:])

    def stop_all(self) -> None:
        """SIGTERM to every process group, then SIGKILL to what is still there after GRACE_S."""
        live = {n: p for n, p in self.procs.items() if p.poll() is None}
        for proc in live.values():
            _signal_group(proc, signal.SIGTERM)
        until = time.monotonic() + GRACE_S
        for name, proc in live.items():
            try:
                proc.wait(timeout=max(0.1, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                err.print(f"{name} did not stop in {GRACE_S:.0f}s: killing it", highlight=False)
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        # What a child started (a script mid-run) goes with its group.
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGKILL)
        self.procs.clear()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _command(name: str, module: str) -> list[str]:
    """The installed console script, or the same entry point through this interpreter."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", f"import {module} as m; m.main()"]


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


# -- the command ----------------------------------------------------------------------------
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
    from common import embedded_postgres as embedded

    data = embedded.data_dir()
    if stop_db:
        stopped = embedded.EmbeddedPostgres(data, say=_say).stop()
        err.print("the embedded Postgres is stopped" if stopped else "the embedded Postgres was not running")
        return
    example = _example(workflow, batch, scripts_dir, key)
    outcome: dict = {}
    code = 0
    with ExitStack() as stack:
        try:
            with _terminate_as_interrupt():
                _run(example, ollama_url, openai_url, use_env, keep_db, data, stack, outcome, limit)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted: stopping the farm[/yellow]")
            code = 130
        except ChildDied as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            code = 1
        finally:
            with _no_interrupts():
                stack.close()
    if "batch_id" in outcome and code == 0:
        _print_next(outcome, data, keep_db)
    if code:
        raise typer.Exit(code)


def _say(text: str) -> None:
    err.print(f"[dim]{text}[/dim]", highlight=False)


def _example(workflow: Path | None, batch: Path | None, scripts_dir: Path | None, key: str | None) -> Example:
    base = default_example()
    custom = workflow is not None
    example = Example(
        workflow=(workflow or base.workflow).resolve(),
        batch=(batch or base.batch).resolve(),
        scripts_dir=(scripts_dir or base.scripts_dir).resolve(),
        key=key if key is not None else (None if custom or batch is not None else base.key),
    )
    for what, path in (("workflow", example.workflow), ("batch", example.batch)):
        if not path.is_file():
            raise DemoError(f"the {what} file {path} does not exist")
    if not example.scripts_dir.is_dir():
        raise DemoError(f"the scripts directory {example.scripts_dir} does not exist")
    return example


def _run(example: Example, ollama_url: str | None, openai_url: str | None, use_env: bool, keep_db: bool,
         data: Path, stack: ExitStack, outcome: dict, limit: int | None) -> None:
    from common.local_broker import local_broker_url
    from common import embedded_postgres as embedded
    from orchestrator import batches, catalog, reports
    from orchestrator.db import connect
    from orchestrator.db.migrate import upgrade
    from orchestrator.reconnect import Reconnecting

    data.mkdir(parents=True, exist_ok=True)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)

    server = find_model_server(ollama_url, openai_url, data, stack)
    err.print(f"model server: {redact_url(server.url)} ({server.where}), serving "
              f"{', '.join(server.models) or 'no model'}", highlight=False)
    if not server.models:
        raise DemoError(f"the model server at {redact_url(server.url)} has no model: "
                        "pull one (`ollama pull gemma3:270m`) and try again")

    settings = get_settings()
    db_url = settings.database_url.get_secret_value() if use_env and settings.database_url else None
    broker_url = settings.broker_url.get_secret_value() if use_env and settings.broker_url else None
    if db_url is None:
        pg = embedded.EmbeddedPostgres(data, say=_say)
        stack.callback(_release, pg, keep_db)
        db_url = pg.start()
        outcome["embedded_url"] = db_url
    if broker_url is None:
        broker_url = local_broker_url(data / "broker")
    err.print(f"database: {redact_url(db_url)}\nbroker: {redact_url(broker_url)}", highlight=False)

    # The progress display below rides out a restart of the database (an operator's, or
    # a failover when WAVEFARM_DATABASE_URL names a real one).
    db = Reconnecting(connect(db_url), url=db_url,
                      say=lambda text: err.print(text, highlight=False, markup=False, soft_wrap=True))
    stack.callback(db.close)
    conn = db.conn
    for m in upgrade(conn):
        _say(f"applied migration {m.version:04d} {m.name}")

    wf = _load_workflow(example, server.models)
    missing = sorted({s.actor for s in wf.steps if s.kind == "ai"} - set(server.models))
    if missing:
        raise DemoError(f"the workflow {example.workflow.name} needs model(s) {', '.join(missing)}, which "
                        f"{redact_url(server.url)} does not serve (it has {', '.join(server.models)}): "
                        f"pull them (`ollama pull {missing[0]}`) or give a workflow with a models: mapping")
    stored = catalog.store(conn, wf, example.workflow.read_text(encoding="utf-8"))
    err.print(f"workflow {stored.name} v{stored.version} from {example.workflow}", highlight=False)

    if limit is None and server.builtin:
        limit = BUILTIN_LIMIT
        err.print(f"the built-in model answers one call at a time on the CPU (a minute or two per posting): "
                  f"submitting the first {limit} rows (--limit 0 for all of them)", highlight=False)
    source = _first_rows(example.batch, limit, data / "samples") if limit else example.batch
    report = batches.submit(conn, source, stored.name, key_column=example.key)
    outcome["batch_id"] = report.batch_id
    err.print(f"batch {report.batch_id}: {report.runs_created} run(s) created from {source.name}"
              + (f", {report.runs_existing} submitted before" if report.runs_existing else "")
              + (f", {len(report.rejected)} row(s) rejected" if report.rejected else ""), highlight=False)

    p = reports.batch_progress(conn, report.batch_id)
    if p["runs"] and p["ended"] >= p["runs"]:
        err.print("every run of this batch ended in an earlier demo: here are its results", highlight=False)
    else:
        _farm(db, report.batch_id, example, server, db_url, broker_url, logs, stack, outcome)
    _print_results(db.conn, report.batch_id, example.key, outcome)
    _print_report(db.conn, report.batch_id, example)


def _farm(db: Reconnecting, batch_id: int, example: Example, server: ModelServer, db_url: str, broker_url: str,
          logs: Path, stack: ExitStack, outcome: dict) -> None:
    """Start serve and the workers as production runs them, and watch the batch to its end."""
    # The farm's own URLs, whatever the shell says; other settings (an API key) pass on.
    env = {k: v for k, v in os.environ.items() if k not in ("WAVEFARM_DATABASE_URL", "WAVEFARM_BROKER_URL")}
    env.update(WAVEFARM_BROKER_URL=broker_url, PYTHONUNBUFFERED="1")
    children = Children(logs, env)
    stack.callback(_stop_children, children)
    children.start("serve", [*_command("orchestrator", "orchestrator.cli"), "serve"],
                   env={**env, "WAVEFARM_DATABASE_URL": db_url})
    # Scripts that write to the database get its URL (SPEC: script contract).
    children.start("script-worker", [*_command("script-worker", "script_worker.cli"),
                                     "--scripts-dir", str(example.scripts_dir), "--name", "demo-scripts",
                                     "--concurrency", str(SCRIPT_SLOTS)],
                   env={**env, "WAVEFARM_DATABASE_URL": db_url})
    # A GPU host has the broker only, never the database.
    children.start("gpu-worker", [*_command("gpu-worker", "gpu_worker.cli"), f"--{server.api}-url", server.url,
                                  "--models", "auto", "--name", "demo-gpu",
                                  "--concurrency", "1" if server.builtin else "4",
                                  "--probe-interval", "2"])
    err.print(f"started serve, script-worker and gpu-worker (logs in {logs})", highlight=False)

    started = time.monotonic()
    _watch(db, batch_id, children)
    outcome["elapsed_s"] = time.monotonic() - started
    _stop_children(children)


def _load_workflow(example: Example, served: list[str]):
    """The workflow with each of its model aliases pointed at a model the server has."""
    from orchestrator.workflow import load_file

    wf = load_file(example.workflow, example.scripts_dir)
    aliases = wf.models
    if not aliases:
        return wf
    chosen = choose_models(aliases, served)
    for alias, model in chosen.items():
        if model != aliases[alias]:
            _say(f"model alias {alias}: {aliases[alias]} is not served, using {model}")
    return load_file(example.workflow, example.scripts_dir, chosen)


def _release(pg, keep_db: bool) -> None:
    pg.release(keep_running=keep_db)


def _stop_children(children: Children) -> None:
    if children.procs:
        err.print("stopping the farm's processes")
        children.stop_all()


# -- progress -------------------------------------------------------------------------------
def _watch(db: Reconnecting, batch_id: int, children: Children) -> None:
    """A progress bar of runs ended, and per model what is done, in flight and waiting."""
    from orchestrator import reports
    from orchestrator.workers import STALE_S

    progress = Progress(TextColumn("[bold]runs ended"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("[green]{task.fields[ok]} completed[/green]  [red]{task.fields[failed]} failed"),
                        TimeElapsedColumn(), console=err)
    task = progress.add_task("", total=None, ok=0, failed=0)
    models = Text()
    last_change, last_state, warned = time.monotonic(), None, False
    with _line_end_after(), Live(Group(progress, models), console=err, refresh_per_second=4):
        while True:
            p, per_model = db.run(lambda conn: (reports.batch_progress(conn, batch_id),
                                                reports.batch_status(conn, batch_id)["models"]))
            progress.update(task, total=p["runs"], completed=p["ended"], ok=p["completed"], failed=p["failed"])
            models.truncate(0)
            models.append(_model_lines(per_model))
            if p["ended"] >= p["runs"]:
                break
            children.check()
            state = (p["ended"], tuple(tuple(m.values()) for m in per_model))
            if state != last_state:
                last_change, last_state = time.monotonic(), state
            elif not warned and time.monotonic() - last_change > STALL_S:
                warned = True  # say once why nothing moves, if the farm knows
                for q in db.run(lambda conn: reports.farm_status(conn, stale_s=STALE_S))["queues"]:
                    if q["problem"]:
                        err.print(f"[yellow]no progress for {STALL_S:.0f}s:[/yellow] queue {q['queue']}: "
                                  f"{q['problem']} (logs in {children.logs})", highlight=False)
            time.sleep(POLL_S)


@contextmanager
def _line_end_after() -> Iterator[None]:
    try:
        yield
    finally:
        if not err.is_terminal:
            err.line()  # off a terminal, the last frame is printed without its line end


def _model_lines(models: list[dict]) -> str:
    lines = []
    for m in models:
        done = m.get("completed", 0) + m.get("failed", 0)
        lines.append(f"  {m['model']}: {done} done, {m.get('dispatched', 0)} in flight, "
                     f"{m.get('pending', 0)} waiting")
    return "\n".join(lines)


def _print_results(conn, batch_id: int, key: str | None, outcome: dict) -> None:
    from orchestrator import reports
    from orchestrator.cli import _print_batch_status

    data = reports.batch_status(conn, batch_id)
    runs = data["runs"]
    ended = sum(runs.values()) - runs.get("running", 0)
    took = f" in {outcome['elapsed_s']:.1f}s" if "elapsed_s" in outcome else ""
    err.print(f"\nall {ended} runs ended{took}", highlight=False)
    _print_batch_status(data)
    steps = reports.batch_steps(conn, batch_id)
    records = reports.export_batch(conn, batch_id)
    try:
        sample = list(islice(records, RESULT_ROWS))
        # A failed run tells the most in `orchestrator show`: the first one, if any.
        failed = next((r for r in chain(sample, islice(records, 10_000)) if r["status"] == "failed"), None)
    finally:
        records.close()
    table = Table(title=f"results (the first {len(sample)} of {ended}; all of them: orchestrator export)")
    for column in ("run", key or "line", "status", "last output / why it ended"):
        table.add_column(column, overflow="fold")
    for r in sample:
        last = next((r["outputs"][s] for s in reversed(steps) if s in r["outputs"]), None)
        shown = _short(r["end_reason"] if r["status"] != "completed" and r["end_reason"] else last, 160)
        table.add_row(str(r["run_id"]), str(r["row"].get(key) if key else r["line"]), r["status"], shown)
    out.print(table)
    outcome["show_run"] = (failed or sample[0])["run_id"] if sample else None
    outcome["show_why"] = ("a failed run: its interactions and why it ended" if failed
                           else "one run's chain of interactions")


def _first_rows(batch: Path, limit: int, folder: Path) -> Path:
    """The first `limit` records of a CSV file (records, not lines: a field may hold
    line breaks), as a file of their own."""
    folder.mkdir(parents=True, exist_ok=True)
    sample = folder / f"{batch.stem}-first-{limit}.csv"
    with batch.open(newline="", encoding="utf-8-sig") as f, sample.open("w", newline="", encoding="utf-8") as out:
        reader, writer = csv.reader(f), csv.writer(out, lineterminator="\n")
        for row in islice(reader, limit + 1):  # the header and `limit` records
            writer.writerow(row)
    return sample


def _print_report(conn, batch_id: int, example: Example) -> None:
    """The example's own view of its results: `report.sql` beside the workflow, if any
    (the postings example shows what it saved to the postings table)."""
    query = example.workflow.parent / "report.sql"
    if not query.is_file():
        return
    try:
        rows = conn.execute(query.read_text(encoding="utf-8"), {"batch_id": batch_id}).fetchall()
    except psycopg.Error as exc:
        conn.rollback()
        err.print(f"[yellow]{query.name} did not run: {exc.diag.message_primary or exc}[/yellow]", highlight=False)
        return
    if not rows:
        return
    table = Table(title=f"what the scripts saved ({query.relative_to(REPO) if query.is_relative_to(REPO) else query})")
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows[:RESULT_ROWS * 3]:
        table.add_row(*("" if v is None else _short(v, 70) for v in row.values()))
    out.print(table)


def _short(value: object, limit: int = 90) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _print_next(outcome: dict, data: Path, keep_db: bool) -> None:
    batch_id = outcome["batch_id"]
    lines = ["", "[bold]where to look next[/bold]"]
    # Without WAVEFARM_DATABASE_URL every command uses the embedded Postgres (starting it
    # if needed); a shell that sets it must point it here to see the demo's data.
    prefix = ""
    if "embedded_url" in outcome and get_settings().database_url is not None:
        prefix = f"WAVEFARM_DATABASE_URL='{outcome['embedded_url']}' "
    if outcome.get("show_run") is not None:
        lines.append(f"  {prefix}orchestrator show {outcome['show_run']}    # {outcome['show_why']}")
    lines += [f"  {prefix}orchestrator status --batch {batch_id}",
              f"  {prefix}orchestrator export --batch {batch_id} --format csv -o results.csv",
              f"  logs of serve and the workers: {data / 'logs'}"]
    if "embedded_url" in outcome:
        if keep_db:
            lines.append("  the embedded Postgres is still running (`orchestrator demo --stop-db` stops it)")
        else:
            lines.append("  these commands start the embedded Postgres for themselves (`--keep-db` leaves it "
                         "running between them)")
    out.print("\n".join(lines), highlight=False)
