"""`orchestrator demo` as a newcomer runs it: no Postgres, no broker, no WAVEFARM_*
settings, an empty home directory. The demo starts an embedded Postgres and the farm's
processes itself, and must leave nothing running when it is done."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from common.supervisor import Process, Supervisor
from orchestrator.demo.console import DemoError
from orchestrator.demo.server import choose_models
from tests.acceptance.newcomer import BIN, run_demo, wait_none_left


# -- choosing models ------------------------------------------------------------------------
def test_choose_models_prefers_the_served_model_of_the_same_name_else_the_first():
    served = ["gemma3:1b", "qwen2.5:7b"]
    aliases = {"summariser": "gemma3:1b", "grader": "gemma2", "editor": "qwen2.5:7b"}
    assert choose_models(aliases, served) == {"summariser": "gemma3:1b", "grader": "gemma3:1b",
                                              "editor": "qwen2.5:7b"}


def test_choose_models_reads_ollama_names_without_a_tag_as_latest():
    assert choose_models({"writer": "llama3"}, ["phi3:mini", "llama3:latest"]) == {"writer": "llama3:latest"}
    assert choose_models({"writer": "llama3:latest"}, ["phi3:mini", "llama3"]) == {"writer": "llama3"}


def test_choose_models_takes_a_list_of_aliases_as_model_names():
    assert choose_models(["qwen2.5:7b", "phi3"], ["gemma3:270m", "qwen2.5:7b"]) == {
        "qwen2.5:7b": "qwen2.5:7b", "phi3": "gemma3:270m"}


def test_choose_models_needs_a_served_model():
    with pytest.raises(DemoError, match="no model"):
        choose_models({"grader": "gemma2"}, [])


# -- the whole demo ---------------------------------------------------------------------------
def demo(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run_demo(BIN, env, cwd, *args)


def test_demo_runs_the_example_from_nothing_and_leaves_nothing_running(newcomer, tmp_path, model_server,
                                                                       stop_db_after):
    home, env = newcomer
    data = home / ".local" / "share" / "wavefarm"
    first = demo(env, tmp_path, "--ollama-url", model_server.url)
    assert first.returncode == 0
    assert "creating the embedded Postgres" in first.stderr
    ended = re.search(r"all (\d+) runs ended in", first.stderr)
    assert ended and int(ended.group(1)) > 0
    assert "runs: running 0 " in first.stdout                      # every run ended
    assert "interactions by model" in first.stdout and "results (the first" in first.stdout
    assert re.search(r"orchestrator show \d+", first.stdout)
    # What the example's scripts saved: a posting with its score, a rejected row with its reason.
    assert "what the scripts saved" in first.stdout
    assert "rejected: company is empty" in first.stdout and re.search(r"\b\d+ (GENUINE|BORDERLINE|LIKELY_INTERN)", first.stdout)
    password = (data / "postgres.pass").read_text().strip().rsplit(":", 1)[1]
    assert password not in first.stdout + first.stderr
    assert (data / "logs" / "serve.log").is_file() and (data / "logs" / "gpu-worker.log").is_file()
    assert wait_none_left(home) == []

    # A demo that crashed leaves a postmaster.pid behind, naming a pid that is now
    # another process: the next start must not be blocked by it.
    pgdata = data / "postgres"
    impostor = subprocess.Popen(["sleep", "300"])
    try:
        (pgdata / "postmaster.pid").write_text(
            f"{impostor.pid}\n{pgdata}\n{int(time.time())}\n5\n\n127.0.0.1\n  0  0\nready   \n")
        second = demo(env, tmp_path, "--ollama-url", model_server.url, "--keep-db")
    finally:
        impostor.kill()
        impostor.wait()
    assert second.returncode == 0
    assert "creating the embedded Postgres" not in second.stderr  # the data directory is reused
    assert "stale postmaster.pid" in second.stderr
    assert "ended in an earlier demo" in second.stderr            # the same rows are not run twice
    assert "runs: running 0 " in second.stdout
    # The printed commands need no setting: they use the embedded Postgres (--keep-db: the running one).
    assert "orchestrator status --batch 1" in second.stdout
    status = subprocess.run([str(BIN / "orchestrator"), "status", "--batch", "1"], cwd=tmp_path, text=True,
                            capture_output=True, env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "runs: running 0 " in status.stdout

    # A server already running is reused, and stopped by its last user.
    third = demo(env, tmp_path, "--ollama-url", model_server.url)
    assert third.returncode == 0
    assert "reusing the embedded Postgres" in third.stderr
    assert wait_none_left(home) == []
    # With the server stopped, a command starts it for itself and stops it again.
    show = subprocess.run([str(BIN / "orchestrator"), "show", "1"], cwd=tmp_path, text=True,
                          capture_output=True, env=env, timeout=120)
    assert show.returncode == 0 and "intake" in show.stdout, show.stderr
    assert wait_none_left(home) == []
    assert "not running" in demo(env, tmp_path, "--stop-db").stderr


@pytest.fixture
def background(tmp_path):
    """What a test leaves running in the background is stopped when it ends, whatever happened."""
    with Supervisor(tmp_path / "logs") as supervisor:
        yield supervisor


def start_demo(background: Supervisor, env: dict[str, str], cwd: Path, *args: str) -> Process:
    """A demo in the background, returned once its farm's processes are started."""
    demo = background.start("demo", [str(BIN / "orchestrator"), "demo", *args], env=env, cwd=cwd)
    until = time.monotonic() + 120
    while "started serve" not in demo.log.read_text() and demo.alive() and time.monotonic() < until:
        time.sleep(0.2)
    assert demo.alive(), demo.log.read_text()
    return demo


def test_ctrl_c_stops_the_farm_and_the_database(newcomer, tmp_path, model_server, stop_db_after, background):
    home, env = newcomer
    demo = start_demo(background, env, tmp_path, "--ollama-url", model_server.url)
    time.sleep(2)
    demo.popen.send_signal(signal.SIGINT)
    assert demo.popen.wait(timeout=90) == 130, demo.log.read_text()
    assert "interrupted: stopping the farm" in demo.log.read_text()
    assert wait_none_left(home) == []


def test_a_worker_that_dies_is_reported_with_its_log_and_the_rest_is_stopped(newcomer, tmp_path, model_server,
                                                                              stop_db_after, background):
    home, env = newcomer
    demo = start_demo(background, env, tmp_path, "--ollama-url", model_server.url)
    worker = next(c for c in psutil.Process(demo.pid).children() if "gpu-worker" in " ".join(c.cmdline()))
    worker.kill()
    assert demo.popen.wait(timeout=90) == 1, demo.log.read_text()
    text = demo.log.read_text()
    assert re.search(r"gpu-worker stopped unexpectedly \(exit -9\); the end of .*gpu-worker\.log", text), text
    assert "  | " in text  # the tail of its log
    assert wait_none_left(home) == []
