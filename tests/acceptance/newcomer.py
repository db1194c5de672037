"""A newcomer's machine for `orchestrator demo`: an empty home, no wavefarm settings, a
model server speaking Ollama's API; and whether anything of the demo is left running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.model_server import ModelServer

BIN = Path(sys.executable).parent


@pytest.fixture
def newcomer(tmp_path) -> tuple[Path, dict[str, str]]:
    """An empty home and an environment with no wavefarm settings and no XDG overrides."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAVEFARM_", "XDG_", "PG"))}
    env["HOME"] = str(home)
    return home, env


@pytest.fixture
def model_server():
    with ModelServer(models=["gemma3:1b", "qwen2.5:7b"], latency=0.01, slots=4) as server:
        yield server


@pytest.fixture
def stop_db_after(newcomer, tmp_path):
    """Whatever happened in the test, no embedded Postgres of it outlives it."""
    yield
    subprocess.run([str(BIN / "orchestrator"), "demo", "--stop-db"], env=newcomer[1], cwd=tmp_path,
                   capture_output=True, timeout=120)


def run_demo(bin_dir: Path, env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`orchestrator demo ARGS` of the installation in `bin_dir`, to its end."""
    proc = subprocess.run([str(bin_dir / "orchestrator"), "demo", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=280)
    print(proc.stderr[-6000:], proc.stdout[-3000:], sep="\n")  # shown when the test fails
    return proc


def left_running(home: Path) -> list[str]:
    """Processes of this demo still alive: children inherit HOME, postgres names its data directory."""
    found = []
    for proc in psutil.process_iter(["pid", "status", "cmdline"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.pid == os.getpid():
                continue
            if str(home) in cmdline or proc.environ().get("HOME") == str(home):
                found.append(f"{proc.pid}: {cmdline}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_none_left(home: Path, timeout: float = 10.0) -> list[str]:
    until = time.monotonic() + timeout
    while (left := left_running(home)) and time.monotonic() < until:
        time.sleep(0.2)
    return left
