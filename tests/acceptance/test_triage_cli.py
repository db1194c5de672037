"""`orchestrator failures`, `purge` and `submit --dry-run` as a user drives them: real
processes, real Postgres, real script subprocesses (script steps only: no model)."""

from __future__ import annotations

import csv
import io
import json

import psycopg
import pytest

from tests.acceptance.test_cli import cli

HOSTILE = "[bold]boom[/bold] \x1b[2J [link=http://evil.example]click[/link]"
WORKFLOW = """name: triage_cli
steps:
  - name: check
    script: check.py
    input: {x: "{{ input.x }}"}
"""
CHECK = f"""import json, sys
x = json.load(sys.stdin)["x"]
if x.startswith("bad"):
    sys.stderr.write({HOSTILE!r} + " " + x + "\\n")
    sys.exit(3)
json.dump({{"ok": x}}, sys.stdout)
"""


@pytest.fixture
def farm(db_url, tmp_path) -> dict:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "check.py").write_text(CHECK)
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "rows.csv").write_text("x\ngood1\nbad1\nbad2\ngood2\n=1+1,extra\n")
    cli(db_url, "db", "upgrade")
    return {"db": db_url, "scripts": str(scripts), "workflow": str(tmp_path / "wf.yaml"), "rows": str(tmp_path / "rows.csv")}


def submit(farm: dict, *extra: str, check: bool = True):
    return cli(farm["db"], "submit", "--batch", farm["rows"], "--workflow", farm["workflow"], "--key", "x",
               "--scripts-dir", farm["scripts"], *extra, check=check)


def every_table(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def test_failures_of_a_batch_in_text_json_and_csv(farm):
    ran = submit(farm, "--local", "--json", check=False)
    assert ran.returncode == 1, ran.stderr  # two runs failed
    batch = json.loads(ran.stdout.strip().splitlines()[-1])["batch_id"]

    text = cli(farm["db"], "failures", "--batch", str(batch)).stdout
    assert "check script_error: 2 attempt(s) in 2 run(s), 2 given up" in text
    assert "[bold]boom[/bold] \\x1b[2J [link=http://evil.example]click[/link]" in text  # as text
    assert "\x1b" not in text  # no escape reached the terminal: no clearing, no hyperlink
    assert "rejected rows: 1" in text and "line 6: 2 fields, header has 1" in text

    data = json.loads(cli(farm["db"], "failures", "--batch", str(batch), "--json").stdout)
    (group,) = data["failures"]
    assert (group["step"], group["failure_class"], group["count"]) == ("check", "script_error", 2)
    assert sorted(x["message"][-4:] for x in group["examples"]) == ["bad1", "bad2"]
    assert data["rejects"] == [{"line": 6, "reason": "2 fields, header has 1", "raw": "=1+1,extra"}]

    rows = list(csv.DictReader(io.StringIO(cli(farm["db"], "failures", "--batch", str(batch), "--format", "csv").stdout)))
    assert [r["section"] for r in rows] == ["failure", "failure", "reject"]
    assert rows[-1]["example"] == "'=1+1,extra"  # a spreadsheet shows it, does not compute it


def test_failures_of_a_batch_that_does_not_exist(farm):
    proc = cli(farm["db"], "failures", "--batch", "999", check=False)
    assert proc.returncode == 2 and "no batch 999" in proc.stderr and "Traceback" not in proc.stderr


def test_dry_run_shows_the_first_rendered_step_and_stores_nothing(farm):
    before = every_table(farm["db"])
    shown = submit(farm, "--dry-run")
    assert every_table(farm["db"]) == before  # not even the workflow file was stored
    assert "dry run" in shown.stdout and "4 new run(s)" in shown.stdout and "1 row(s) rejected" in shown.stdout
    assert 'input: {"x": "good1"}' in shown.stdout
    data = json.loads(submit(farm, "--dry-run", "--json").stdout)
    assert (data["runs_new"], data["workflow_version"], data["workflow_stored"]) == (4, 1, False)
    assert data["first_row"]["steps"][0]["input"] == {"input": {"x": "good1"}}
    assert every_table(farm["db"]) == before


def test_purge_asks_for_yes_refuses_a_running_batch_and_deletes_a_finished_one(farm, tmp_path):
    batch = json.loads(submit(farm, "--json").stdout.strip().splitlines()[-1])["batch_id"]  # no serve: it runs on
    running = cli(farm["db"], "purge", "--batch", str(batch), "--yes", check=False)
    assert running.returncode == 2
    assert "4 run(s) still running" in running.stderr and f"orchestrator cancel --batch {batch}" in running.stderr

    cli(farm["db"], "cancel", "--batch", str(batch), check=False)  # no broker to tell: that is only a note
    unasked = cli(farm["db"], "purge", "--batch", str(batch), check=False)  # stdin is not a terminal
    assert unasked.returncode == 2 and "--yes" in unasked.stderr
    assert every_table(farm["db"])["runs"] == 4

    purged = cli(farm["db"], "purge", "--batch", str(batch), "--yes")
    assert f"batch {batch} purged: 4 run(s), 4 interaction(s)" in purged.stdout
    left = every_table(farm["db"])
    assert {t: n for t, n in left.items() if t not in ("workflows", "wavefarm_migrations") and n} == {}
    assert left["workflows"] == 1  # versions stay: other batches may pin them
