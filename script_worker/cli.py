"""`script-worker`: runs script actors for the farm (a Celery worker on a CPU host).

`--try SCRIPT --input JSON` runs one script once through the exact contract the
worker applies, which is how a script actor is tested by hand before a batch.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from common import embedded_address
from common.cli import run_app
from common.errors import ConfigError
from common.logs import setup_logging
from common.messages import ScriptTask
from common.settings import get_settings
from script_worker.runner import run_script

app = typer.Typer(add_completion=False)


@app.command()
def run(
    scripts_dir: Annotated[Optional[Path], typer.Option("--scripts-dir", help="The only directory scripts run from (default: WAVEFARM_SCRIPTS_DIR).")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Scripts run at once.")] = 2,
    name: Annotated[Optional[str], typer.Option("--name", help="Worker name, one live worker's at a time (default: script@MACHINE, then script-2@MACHINE, ...).")] = None,
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="Serve Prometheus metrics on this port.")] = None,
    script: Annotated[Optional[str], typer.Option("--try", help="Run this script once with --input, print the result, exit.")] = None,
    input_json: Annotated[str, typer.Option("--input", help="With --try: the JSON object given on stdin.")] = "{}",
    timeout: Annotated[float, typer.Option("--timeout", help="With --try: seconds before the script is killed.")] = 60.0,
) -> None:
    settings = get_settings()
    directory = scripts_dir or settings.scripts_dir
    if directory is None:
        raise ConfigError("no scripts directory: give --scripts-dir or set WAVEFARM_SCRIPTS_DIR")
    if not directory.is_dir():
        raise ConfigError(f"the scripts directory {directory} does not exist")
    directory = directory.resolve()
    # Scripts that save to the database get a URL (SPEC: script contract), nothing else of
    # ours: WAVEFARM_SCRIPTS_DATABASE_URL, else the configured database, else the embedded
    # Postgres's while it runs (the zero-setup mode on one machine).
    own = settings.database_url.get_secret_value() if settings.database_url else None
    db_url, privileged = settings.database_url_for_scripts(own or embedded_address.running_url())
    env = {"WAVEFARM_DATABASE_URL": db_url} if db_url else {}
    note = ("scripts get the orchestrator's own database URL, with all its privileges over the farm's tables: "
            "set WAVEFARM_SCRIPTS_DATABASE_URL to a role that may write only yours (deploy/scripts-role.sql)"
            if privileged and own is not None else None)
    if script is not None:
        if note:
            typer.echo(f"note: {note}", err=True)
        _try(directory, script, input_json, timeout, env)
        return

    from common import worker_names
    from common.celery_app import make_app
    from common.leases import claim
    from common.worker_runtime import run_worker
    from script_worker.worker import ScriptWorker

    setup_logging(json_lines=settings.log_json)
    if note:
        logging.getLogger(__name__).warning("%s", note)  # once, at start-up
    celery_app = make_app(name="wavefarm-script")
    worker_name, lease = claim(celery_app, name, worker_names.candidates(worker_names.SCRIPT))
    worker = ScriptWorker(celery_app, directory, concurrency=concurrency, name=worker_name, env=env)
    run_worker(celery_app, worker.runtime, lease, metrics_port=metrics_port)


def _try(directory: Path, script: str, input_json: str, timeout: float, env: dict[str, str]) -> None:
    try:
        data = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--input is not JSON: {exc}") from None
    task = ScriptTask(interaction_id=0, attempt=1, run_id=0, batch_id=0, step="try",
                      timeout_s=timeout, script=script, input=data)
    result = run_script(task, directory, env=env, worker="script-worker")
    print(result.model_dump_json(indent=2))
    sys.exit(0 if result.ok else 1)


def main() -> None:
    run_app(app)
