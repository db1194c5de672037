"""`script-worker`: runs script actors for the farm.

The Celery consumer is the next milestone. Today the command runs one script
through the exact contract the worker applies (JSON on stdin, one JSON object
on stdout), which is how a script actor is tested by hand before a batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from common.cli import run_app
from common.messages import ScriptTask
from script_worker.runner import run_script

app = typer.Typer(add_completion=False)


@app.command()
def run(
    scripts_dir: Annotated[Path, typer.Option("--scripts-dir", help="The only directory scripts run from.")],
    script: Annotated[str, typer.Option("--try", help="Run this script once with --input and print the result.")],
    input_json: Annotated[str, typer.Option("--input", help="The JSON object given on stdin.")] = "{}",
    timeout: Annotated[float, typer.Option("--timeout")] = 60.0,
) -> None:
    try:
        data = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--input is not JSON: {exc}") from None
    task = ScriptTask(interaction_id=0, attempt=1, run_id=0, batch_id=0, step="try",
                      timeout_s=timeout, script=script, input=data)
    result = run_script(task, scripts_dir.resolve(), worker="script-worker")
    print(result.model_dump_json(indent=2))
    sys.exit(0 if result.ok else 1)


def main() -> None:
    run_app(app)
