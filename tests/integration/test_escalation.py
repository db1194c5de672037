"""Escalation against Postgres and the local executor: a step that always fails the same
way is held after a handful of attempts (not one per row), the batch says so, and
`resume` after the fix lets the held work go on."""

from __future__ import annotations

from orchestrator import controls, overview
from orchestrator.db.store import Store
from tests.integration.test_engine import execute, scripts_dir, start  # noqa: F401 (a fixture)

BROKEN = """
name: broken
defaults: {retries: 0}
steps:
  - name: ask
    model: "m:1"
    prompt: "ask {{ input.x }}"
    next: [{when: "*", to: save}]
  - name: save
    script: save.py
    input: {answer: "{{ steps.ask.output }}"}
"""

FAILING = "import sys\nsys.stderr.write('cannot connect to the postings table\\n')\nsys.exit(3)\n"
FIXED = "import json, sys\njson.dump({'saved': json.load(sys.stdin)['answer']}, sys.stdout)\n"


def _attempts(conn, batch: int, step: str) -> int:
    return conn.execute("SELECT count(*) AS n FROM attempts a JOIN interactions i ON i.id = a.interaction_id"
                        " WHERE a.batch_id = %s AND i.step = %s", (batch, step)).fetchone()["n"]


def test_a_step_that_always_fails_is_held_after_ten_attempts_and_resume_lets_it_go_on(conn, tmp_path, scripts_dir):
    (scripts_dir / "save.py").write_text(FAILING)
    batch = start(conn, tmp_path, BROKEN, [[str(n)] for n in range(60)])
    execute(conn, scripts_dir, lambda t: f"answer {t.prompt}", batch)  # returns once nothing can move

    # Ten failed in a row, plus at most what was in the executor's window beside them (two
    # per slot, 4 slots) when the tenth was recorded: not sixty.
    tried = _attempts(conn, batch, "save")
    assert 10 <= tried <= 18
    status = overview.batch_status(Store(conn), batch)
    assert status["state"] == "escalated"
    (esc,) = status["escalations"]
    assert esc["step"] == "save" and esc["failure_class"] == "script_error"
    assert "10 attempts in a row failed with script_error" in status["reason"]
    assert len(esc["examples"]) == 3 and "cannot connect to the postings table" in esc["examples"][0]["message"]
    assert status["runs"]["failed"] == tried and status["runs"]["running"] == 60 - tried
    (event,) = conn.execute("SELECT detail FROM events WHERE batch_id = %s AND kind = 'escalated'", (batch,)).fetchall()
    assert event["detail"]["step"] == "save"
    # The model was not called less: only the broken step is held.
    assert _attempts(conn, batch, "ask") == 60

    (scripts_dir / "save.py").write_text(FIXED)
    assert controls.resume(Store(conn), batch) == (False, ["save"])
    execute(conn, scripts_dir, lambda t: f"answer {t.prompt}", batch)
    status = overview.batch_status(Store(conn), batch)
    assert status["state"] == "done" and status["escalations"] == []
    assert status["runs"]["completed"] == 60 - tried and status["runs"]["failed"] == tried
    assert _attempts(conn, batch, "save") == 60


def test_timeouts_do_not_escalate(conn, tmp_path, scripts_dir):
    (scripts_dir / "save.py").write_text("import time\ntime.sleep(5)\n")
    workflow = BROKEN.replace("defaults: {retries: 0}", "defaults: {retries: 0, timeout: 0.2}")
    batch = start(conn, tmp_path, workflow, [[str(n)] for n in range(12)])
    execute(conn, scripts_dir, lambda t: "fine", batch)
    status = overview.batch_status(Store(conn), batch)
    assert status["state"] == "done" and status["escalations"] == []
    assert status["runs"]["failed"] == 12
