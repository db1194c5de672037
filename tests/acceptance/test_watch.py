"""`orchestrator status --batch ID --watch` as a user drives it: JSON lines to the end of
a batch run by `submit --local`, the exit code, a plain line off a terminal, an
escalated batch that waits for a person, and a paused batch watched on through a lost
connection."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psycopg

from orchestrator.db import connect
from orchestrator.db.store import Store
from tests.acceptance.test_cli import BIN, cli

SCRIPTS = Path(__file__).resolve().parents[1] / "unit" / "scripts"

WORKFLOW = """
name: {name}
defaults: {{retries: 0}}
steps:
  - name: first
    script: echo.py
    input: {{x: "{{{{ input.x }}}}"}}
    next:
      - {{when: "*", to: second}}
  - name: second
    script: {second}
    input: {{x: "{{{{ input.x }}}}"}}
"""


def workflow(tmp_path: Path, name: str, second: str = "echo.py") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(WORKFLOW.format(name=name, second=second))
    return path


def rows(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"rows{n}.csv"
    path.write_text("x\n" + "".join(f"{i}\n" for i in range(n)))
    return path


def submit(db_url: str, tmp_path: Path, wf: Path, n: int, *extra: str) -> tuple[int, subprocess.CompletedProcess]:
    proc = cli(db_url, "submit", "--batch", str(rows(tmp_path, n)), "--workflow", str(wf), "--scripts-dir",
               str(SCRIPTS), "--json", *extra, check=False)
    return json.loads(proc.stdout.strip().splitlines()[-1])["batch_id"], proc


def watch_json(db_url: str, batch_id: int) -> tuple[list[dict], subprocess.CompletedProcess]:
    proc = cli(db_url, "status", "--batch", str(batch_id), "--watch", "--json", check=False, timeout=120)
    return [json.loads(line) for line in proc.stdout.splitlines()], proc


def test_watching_a_batch_to_its_end_gives_json_lines_and_exit_zero(db_url, tmp_path):
    batch_id, ran = submit(db_url, tmp_path, workflow(tmp_path, "echoes"), 6, "--local")
    assert ran.returncode == 0, ran.stderr
    # With --json the progress comes as JSON lines on stdout, then the batch's id, last.
    *progress, final = [json.loads(line) for line in ran.stdout.splitlines()]
    assert final == {"batch_id": batch_id}
    assert progress and progress[-1]["state"] == "done" and progress[-1]["progress"]["ended"] == 6

    lines, proc = watch_json(db_url, batch_id)
    assert proc.returncode == 0, proc.stderr
    last = lines[-1]
    assert last["state"] == "done" and last["eta_s"] == 0 and last["rate_per_min"] > 0
    assert last["progress"]["ended"] == last["progress"]["total"] == 6
    assert {s["step"]: s["done"] for s in last["steps"]} == {"first": 6, "second": 6}

    status = json.loads(cli(db_url, "status", "--batch", str(batch_id), "--json").stdout)
    assert status["progress"] == {"ended": 6, "total": 6} and status["eta_s"] == 0 and status["rate_per_min"] > 0
    assert status["runs"]["completed"] == 6    # the keys users read already stay

    plain = cli(db_url, "status", "--batch", str(batch_id), "--watch")   # not a terminal: a plain line
    assert plain.stdout.strip().splitlines()[-1].startswith(f"batch {batch_id} done: 6/6 runs ended")


def test_a_batch_with_failed_runs_ends_the_watch_with_exit_one_and_the_failures(db_url, tmp_path):
    batch_id, ran = submit(db_url, tmp_path, workflow(tmp_path, "crashes", second="crash.py"), 3, "--local")
    assert ran.returncode == 1
    lines, proc = watch_json(db_url, batch_id)
    assert proc.returncode == 1
    assert lines[-1]["state"] == "done" and lines[-1]["progress"]["failed"] == 3
    assert lines[-1]["failures"] == {"script_error": 3}


def test_a_step_that_always_fails_is_escalated_and_submit_local_says_so_and_exits_one(db_url, tmp_path):
    # The escalation rule (10 attempts in a row with one step fault) holds `second`: what
    # is left waits for a person, and the command says so instead of waiting forever.
    batch_id, ran = submit(db_url, tmp_path, workflow(tmp_path, "always", second="crash.py"), 30, "--local")
    assert ran.returncode == 1
    assert f"batch {batch_id} is escalated and nothing of it can move until a person acts" in ran.stderr
    lines, proc = watch_json(db_url, batch_id)
    assert proc.returncode == 1 and f"orchestrator resume --batch {batch_id}" in proc.stderr
    last = lines[-1]
    assert last["state"] == "escalated" and last["stuck"] and last["eta_s"] is None
    assert 0 < last["progress"]["ended"] < 30 and last["failures"]["script_error"] >= 10


def test_watching_an_escalated_batch_that_waits_for_a_person_exits_one_and_says_so(db_url, tmp_path):
    batch_id, _ = submit(db_url, tmp_path, workflow(tmp_path, "held"), 2)   # no worker: all waits
    conn = connect(db_url)
    try:
        Store(conn).escalate(batch_id, "first", "script_error", "10 attempts in a row failed", [])
    finally:
        conn.close()
    lines, proc = watch_json(db_url, batch_id)
    assert proc.returncode == 1
    assert lines[-1]["state"] == "escalated" and lines[-1]["stuck"] is True
    assert f"batch {batch_id} is escalated" in proc.stderr and f"orchestrator resume --batch {batch_id}" in proc.stderr


def test_a_paused_batch_is_watched_on_through_a_lost_connection_until_it_ends(db_url, tmp_path):
    batch_id, _ = submit(db_url, tmp_path, workflow(tmp_path, "paused"), 2)
    cli(db_url, "pause", "--batch", str(batch_id))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVEFARM_")} | {"WAVEFARM_DATABASE_URL": db_url}
    watcher = subprocess.Popen([str(BIN / "orchestrator"), "status", "--batch", str(batch_id), "--watch", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = json.loads(watcher.stdout.readline())       # flushed at once
        assert first["state"] == "paused" and first["reason"]
        assert watcher.poll() is None                       # paused: still watching
        with psycopg.connect(db_url, autocommit=True) as admin:   # as a database restart would
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        json.loads(watcher.stdout.readline())               # watching on, on a new connection
        cli(db_url, "cancel", "--batch", str(batch_id))
        rest, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    last = json.loads(rest.strip().splitlines()[-1])
    assert last["state"] == "done" and last["progress"]["cancelled"] == 2
    assert watcher.returncode == 0                          # cancelled, not failed: no run failed
    assert "lost the database" in err and "the database is back" in err
