"""The command line as a user drives it: real processes, real Postgres, a model
server speaking Ollama's HTTP API, real script subprocesses."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


BIN = Path(sys.executable).parent
# A small pipeline that uses every shape the engine knows (the flagship is examples/postings).
EXAMPLES = Path(__file__).resolve().parent / "pipeline"


def cli(db_url: str | None, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVEFARM_")}
    if db_url:
        env["WAVEFARM_DATABASE_URL"] = db_url
    proc = subprocess.run([str(BIN / "orchestrator"), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"orchestrator {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def postings(path: Path, n: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["posting_id", "title", "company", "description"])
        for i in range(n):
            w.writerow([str(1000 + i), f"Analyst {i}", f"Company {i % 17}",
                        f"We need an analyst, number {i}.\nSkills: SQL, Python, \"communication\"."])
    return path


def test_validate_accepts_the_example_and_refuses_a_broken_file(tmp_path):
    ok = cli(None, "workflow", "validate", str(EXAMPLES / "posting_pipeline.yaml"),
             "--scripts-dir", str(EXAMPLES / "scripts"))
    assert "valid" in ok.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text((EXAMPLES / "posting_pipeline.yaml").read_text().replace("to: record", "to: recrod"))
    bad = cli(None, "workflow", "validate", str(broken), check=False)
    assert bad.returncode == 1
    # FILE:LINE: path: message, naming the culprit
    assert re.search(rf"{re.escape(str(broken))}:\d+: steps\[\d\]\.next\[\d\]\.to: .*'recrod'", bad.stderr), bad.stderr


def test_without_a_database_setting_commands_use_the_embedded_postgres(tmp_path):
    # SPEC: WAVEFARM_DATABASE_URL unset means an embedded Postgres in the data directory.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVEFARM_")}
    env["WAVEFARM_DATA_DIR"] = str(tmp_path / "data")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "orchestrator"), *args], capture_output=True, text=True, env=env,
                              timeout=300)

    upgraded = run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "WAVEFARM_DATABASE_URL is not set: using the embedded Postgres" in upgraded.stderr
    status = run("status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["batches"] == []  # the same database, already migrated
    # The last command out stopped the server: nothing of it is left running.
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True, text=True)
    assert leftovers.stdout == ""


def test_unreachable_database_error_hides_the_password():
    proc = cli("postgresql://wavefarm:s3cret-pw@127.0.0.1:1/nowhere", "status", check=False)
    assert proc.returncode == 2
    assert "cannot connect to the database" in proc.stderr
    assert "s3cret-pw" not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_pipeline_runs_a_thousand_postings_and_tells_the_story(db_url, tmp_path):
    from tests.model_server import ModelServer

    csv_path = postings(tmp_path / "postings.csv", 1000)
    with ModelServer(models=["gemma3:1b", "qwen2.5:7b"], latency=0.0, slots=8) as server:
        loaded = cli(db_url, "workflow", "load", str(EXAMPLES / "posting_pipeline.yaml"))
        # No worker runs yet: the user hears it now, not after a silent wait.
        assert "warning: no live gpu-worker serves model gemma3:1b (queue ai.gemma3-1b)" in loaded.stderr
        assert "warning: no live script-worker is running" in loaded.stderr
        proc = cli(db_url, "submit", "--batch", str(csv_path), "--workflow", "posting_pipeline", "--local",
                   "--ollama-url", server.url, "--scripts-dir", str(EXAMPLES / "scripts"),
                   "--concurrency", "8", "--json", check=False)
    assert proc.returncode in (0, 1), proc.stderr
    batch_id = json.loads(proc.stdout.strip().splitlines()[-1])["batch_id"]

    status = json.loads(cli(db_url, "status", "--batch", str(batch_id), "--json").stdout)
    assert status["runs"]["running"] == 0
    assert status["runs"]["completed"] + status["runs"]["failed"] == 1000
    assert status["runs"]["completed"] > 500
    assert {m["model"] for m in status["models"]} == {"gemma3:1b", "qwen2.5:7b"}
    steps = {s["step"]: s for s in status["steps"]}
    assert steps["extract"]["completed"] == 1000 and steps["skills"]["completed"] == 1000
    assert steps["record"]["completed"] == status["runs"]["completed"]
    assert all(s["pending"] == 0 and s["dispatched"] == 0 for s in status["steps"])
    # status says why runs failed, grouped: here only the grade loop's bound can end one
    assert sum(f["n"] for f in status["failed_runs"]) == status["runs"]["failed"]
    assert all("loop bound reached" in f["end_reason"] for f in status["failed_runs"])
    # exit code 1 exactly when some run failed
    assert proc.returncode == (1 if status["runs"]["failed"] else 0)

    records = [json.loads(line) for line in cli(db_url, "export", "--batch", str(batch_id)).stdout.splitlines()]
    assert len(records) == 1000
    for r in records:
        if r["status"] == "completed":
            rec = r["outputs"]["record"]
            assert rec["posting_id"] == r["row"]["posting_id"] and rec["passed"] is True
            assert isinstance(rec["skill_keywords"], list)
        else:
            # every failure says why: here the only way to fail is the grade loop's bound
            assert "loop bound reached" in r["end_reason"], r["end_reason"]

    table = list(csv.DictReader(io.StringIO(cli(db_url, "export", "--batch", str(batch_id), "--format", "csv").stdout)))
    assert len(table) == 1000 and "output.record" in table[0] and "input.posting_id" in table[0]

    completed = next(r for r in records if r["status"] == "completed")
    story = cli(db_url, "show", str(completed["run_id"])).stdout
    for step in ("extract", "grade", "skills", "record", "gemma3:1b", "assemble_record.py", "completed", "branch_taken"):
        assert step in story
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        assert "loop bound reached" in cli(db_url, "show", str(failed[0]["run_id"])).stdout

    # Submitting the same file again adds nothing.
    again = cli(db_url, "submit", "--batch", str(csv_path), "--workflow", "posting_pipeline", "--json")
    assert json.loads(again.stdout.strip().splitlines()[-1])["batch_id"] == batch_id
    assert "0 run(s) created, 1000 already submitted" in again.stderr
    assert "no live gpu-worker serves model qwen2.5:7b" in again.stderr


HOSTILE_URLS = [
    ("WAVEFARM_DATABASE_URL", "postgresql://wf:pa#S3cr3tPw@127.0.0.1:1/x"),
    ("WAVEFARM_DATABASE_URL", "postgresql://wf:S3cr3tPw@127.0.0.1:99999999/x"),
    ("WAVEFARM_DATABASE_URL", "host=127.0.0.1 port=1 password=S3cr3tPw dbname=x"),
    ("WAVEFARM_DATABASE_URL", "postgresql://127.0.0.1:1/x?password=S3cr3tPw"),
    ("WAVEFARM_DATABASE_URL", "postgres://wf:S3cr3tPw@[::1:1/x"),
    ("WAVEFARM_BROKER_URL", "amqp://guest:pa#S3cr3tPw@127.0.0.1:1//"),
    ("WAVEFARM_BROKER_URL", "amqp://guest:S3cr3tPw@127.0.0.1:99999999//"),
    ("WAVEFARM_DB_POOL_SIZE", "S3cr3tPw"),
]


@pytest.mark.parametrize(("name", "value"), HOSTILE_URLS, ids=[f"{n}={v}" for n, v in HOSTILE_URLS])
def test_a_bad_setting_is_one_line_of_error_with_no_secret_and_no_traceback(db_url, name, value):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVEFARM_")}
    env.update({"WAVEFARM_DATABASE_URL": db_url, "WAVEFARM_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//", name: value})
    command = ["serve"] if name == "WAVEFARM_BROKER_URL" else ["status"]
    proc = subprocess.run([str(BIN / "orchestrator"), *command], capture_output=True, text=True, env=env, timeout=120)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2, said
    assert "S3cr3tPw" not in said and "Traceback" not in said
    assert said.startswith("error: ") and len(said.strip().splitlines()) <= 3, said


def test_exporting_a_batch_that_does_not_exist_leaves_the_file_alone(db_url, tmp_path):
    cli(db_url, "db", "upgrade")
    target = tmp_path / "results.csv"
    target.write_text("yesterday's results\n")
    proc = cli(db_url, "export", "--batch", "12345", "--format", "csv", "-o", str(target), check=False)
    assert proc.returncode == 2 and "no batch 12345" in proc.stderr and "Traceback" not in proc.stderr
    assert target.read_text() == "yesterday's results\n"
    folder = cli(db_url, "export", "--batch", "12345", "-o", str(tmp_path), check=False)
    assert folder.returncode == 2 and "Traceback" not in folder.stderr


MARKUP = "[/INST] boom [link=http://evil.example]click[/link] [bold]"


def test_text_from_outside_is_printed_as_text_not_read_as_markup(db_url, tmp_path):
    """A script's stderr, a CSV value, a model's answer may hold what rich would read as
    markup ([/INST] is ordinary for Llama-style models): status and show print it as it
    is, and neither crashes nor makes a hyperlink."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "markup.py").write_text(f"import sys\nsys.stdin.read()\nsys.stderr.write({MARKUP!r} + '\\n')\n"
                                       "sys.exit(3)\n")
    workflow = tmp_path / "markup.yaml"
    workflow.write_text("name: markup\nsteps:\n  - name: shout\n    script: markup.py\n"
                        "    input: {x: \"{{ input.x }}\"}\n")
    rows = tmp_path / "rows.csv"
    rows.write_text("x\n[bold]one\n[bold]one\n[/INST]two\n")
    cli(db_url, "db", "upgrade")
    submitted = cli(db_url, "submit", "--batch", str(rows), "--workflow", str(workflow), "--key", "x", "--local",
                    "--scripts-dir", str(scripts), "--json", check=False)
    assert submitted.returncode == 1, submitted.stderr  # the runs failed, as the script does
    assert "Traceback" not in submitted.stderr and "MarkupError" not in submitted.stderr
    assert "[bold]one" in submitted.stderr  # the rejected duplicate row, quoted as it is
    batch_id = json.loads(submitted.stdout.strip().splitlines()[-1])["batch_id"]

    status = cli(db_url, "status", "--batch", str(batch_id))
    assert "[/INST] boom [link=http://evil.example]click[/link]" in status.stdout
    records = [json.loads(line) for line in cli(db_url, "export", "--batch", str(batch_id)).stdout.splitlines()]
    shown = cli(db_url, "show", str(records[0]["run_id"]))
    assert "[/INST] boom [link=http://evil.example]click[/link]" in shown.stdout
    assert "\x1b]8;" not in shown.stdout + status.stdout  # no terminal hyperlink was made
