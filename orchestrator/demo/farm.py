"""The demo's farm: `orchestrator serve`, a script worker and a GPU worker, started as
production starts them, as separate processes under common/supervisor.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from common.supervisor import Supervisor
from orchestrator.demo.example import Example
from orchestrator.demo.server import ModelServer

# Script steps are a Python subprocess each (most of a script's time is starting up):
# more of them at once than cores still pays, as they also wait on the database.
SCRIPT_SLOTS = min(8, max(4, os.cpu_count() or 1))


def start_farm(supervisor: Supervisor, example: Example, server: ModelServer, db_url: str,
               broker_url: str) -> None:
    # The farm's own URLs, whatever the shell says; other settings (an API key) pass on.
    env = {k: v for k, v in os.environ.items() if k not in ("WAVEFARM_DATABASE_URL", "WAVEFARM_BROKER_URL")}
    env.update(WAVEFARM_BROKER_URL=broker_url, PYTHONUNBUFFERED="1")
    supervisor.start("serve", [*_command("orchestrator", "orchestrator.cli"), "serve"],
                     env={**env, "WAVEFARM_DATABASE_URL": db_url})
    # Scripts that write to the database get its URL (SPEC: script contract).
    supervisor.start("script-worker", [*_command("script-worker", "script_worker.cli"),
                                       "--scripts-dir", str(example.scripts_dir), "--name", "demo-scripts",
                                       "--concurrency", str(SCRIPT_SLOTS)],
                     env={**env, "WAVEFARM_DATABASE_URL": db_url})
    # A GPU host has the broker only, never the database.
    supervisor.start("gpu-worker", [*_command("gpu-worker", "gpu_worker.cli"), f"--{server.api}-url", server.url,
                                    "--models", "auto", "--name", "demo-gpu",
                                    "--concurrency", "1" if server.builtin else "4",
                                    "--probe-interval", "2",
                                    # One host: nothing to place, and the demo knows not how
                                    # many models the user's Ollama holds.
                                    "--residency", "off"], env=env)


def _command(name: str, module: str) -> list[str]:
    """The installed console script, or the same entry point through this interpreter."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", f"import {module} as m; m.main()"]
