"""`orchestrator failures` and `orchestrator purge` against real Postgres: a batch run
through the local executor with a scripted model (the one edge we fake) and real
script subprocesses, then triaged, then deleted."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from pathlib import Path

import psycopg
import pytest

from common.errors import NotFound
from common.messages import AiTask, Failure, FailureClass, TaskResult, utcnow
from common.retries import Backoff, RetryPolicy
from orchestrator import batches, catalog, controls, retention, triage
from orchestrator.db.store import Store
from orchestrator.executor import LocalExecutor
from orchestrator.workflow import load_text
from tests.integration.helpers import write_csv

WF = """
name: triage
defaults: {retries: 1}
steps:
  - name: ask
    model: "m:1"
    prompt: "ask {{ input.x }}"
    next:
      - {when: "[OK]", to: save}
  - name: save
    script: save.py
    input: {x: "{{ input.x }}"}
"""

HOSTILE = "[bold]boom[/bold] \x1b[2J\x1b]8;;http://evil.example\x07click" + " filler" * 200 + " THE END"
SAVE = f"""#!/usr/bin/env python3
import json, sys
x = json.load(sys.stdin)["x"]
if x[0] == "4":
    sys.stderr.write({HOSTILE!r})
    sys.exit(3)
json.dump({{"saved": x}}, sys.stdout)
"""
QUICK_RETRIES = RetryPolicy(Backoff(base_s=0.002, max_s=0.004))


class ScriptedModel:
    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def complete(self, task: AiTask) -> TaskResult:
        # What happens to a row depends on the first character of its x.
        x = task.prompt.split()[-1]
        n = self.seen[x] = self.seen.get(x, 0) + 1
        if x[0] in "23":  # a server that always answers 500: retried once, then given up
            failure = Failure(failure_class=FailureClass.SERVER_ERROR, message=f"model server answered 500 for {x}")
        elif x[0] == "4" and n == 1:  # a timeout that a retry gets past
            failure = Failure(failure_class=FailureClass.TIMEOUT, message="no answer within 30s: " + HOSTILE)
        else:
            return TaskResult(interaction_id=task.interaction_id, attempt=task.attempt, worker="scripted",
                              output="not sure" if x[0] == "1" else "[OK]", started_at=utcnow(), finished_at=utcnow())
        return TaskResult(interaction_id=task.interaction_id, attempt=task.attempt, failure=failure, worker="scripted")

    def list_models(self) -> list[str]:
        return []


def run_batch(conn, tmp_path: Path, name: str = "in.csv", xs: tuple[str, ...] = ("1", "2", "3", "4", "5")) -> int:
    scripts = tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    (scripts / "save.py").write_text(SAVE)
    catalog.store(Store(conn), load_text(textwrap.dedent(WF)), WF)
    path = write_csv(tmp_path / name, ["x"], [[x] for x in xs])
    with path.open("a") as f:
        f.write("too,many,fields\n")
    batch_id = batches.submit(Store(conn), path, "triage").batch_id
    LocalExecutor(Store(conn), ai=ScriptedModel(), scripts_dir=scripts, concurrency=2, idle_poll_s=0.01,
                  policy=QUICK_RETRIES).run(batch_id)
    return batch_id


@pytest.fixture
def batch(conn, tmp_path) -> int:
    return run_batch(conn, tmp_path)


def test_failed_attempts_are_grouped_by_step_and_class_with_examples(conn, batch):
    report = triage.failures(Store(conn), batch)
    groups = {(g.step, g.failure_class): g for g in report.failures}
    assert set(groups) == {("ask", "server_error"), ("ask", "timeout"), ("save", "script_error")}

    busy = groups["ask", "server_error"]
    # Two rows, each tried twice: four failed attempts in two runs, both given up.
    assert (busy.count, busy.runs, busy.given_up) == (4, 2, 2)
    assert busy.first_at <= busy.last_at
    assert len(busy.examples) == 2  # one per distinct message
    assert {x.message for x in busy.examples} == {"model server answered 500 for 2", "model server answered 500 for 3"}
    assert all(x.attempt == 2 and x.run_id for x in busy.examples)  # the newest attempt of each

    timeout = groups["ask", "timeout"]
    assert (timeout.count, timeout.runs, timeout.given_up) == (1, 1, 0)  # a retry got past it

    script = groups["save", "script_error"]
    assert (script.count, script.given_up) == (1, 1)  # a script error is not tried again
    # The biggest group first.
    assert report.failures[0] is busy


def test_runs_the_engine_ended_and_rejected_rows_are_listed(conn, batch):
    report = triage.failures(Store(conn), batch)
    (problem,) = report.engine
    assert (problem.step, problem.failure_class, problem.runs) == ("ask", "no_branch_matched", 1)
    assert problem.reason == "output matched no branch (expected one of [OK])"
    assert problem.examples[0].message == "output: not sure"
    assert report.rejects_total == 1
    (reject,) = report.rejects
    assert reject.line == 7 and "fields" in reject.reason and reject.raw == "too,many,fields"


def test_hostile_messages_are_shown_as_short_plain_text(conn, batch):
    report = triage.failures(Store(conn), batch)
    groups = {g.step + "/" + g.failure_class: g for g in report.failures}
    script = groups["save/script_error"].examples[0].message  # from a script's stderr, cut by the runner
    assert script.startswith("save.py exited with code 3: [bold]boom[/bold] \\x1b[2J\\x1b]8;;http://evil.example\\x07")
    long = groups["ask/timeout"].examples[0].message  # from a model server, whole in the database
    assert len(long) == triage.EXAMPLE_CHARS and " … " in long and long.endswith("filler THE END")
    assert long.startswith("no answer within 30s: [bold]boom[/bold] \\x1b[2J")
    text = "".join(line.plain + "\n" for line in triage.lines(report))
    assert "[bold]boom[/bold]" in text and "\x1b" not in text and "\x07" not in text


def test_escalations_open_first_then_lifted_with_reason_and_examples(conn, batch):
    store = Store(conn)
    with store.transaction():
        store.escalate(batch, "ask", "server_error", "4 attempts in a row failed", [
            {"run_id": 7, "attempt": 2, "message": "model server answered 500"}])
    controls.resume(store, batch)  # lifts it
    with store.transaction():
        store.escalate(batch, "save", "script_error", "10 attempts in a row failed", [
            {"run_id": 9, "attempt": 1, "message": "[bold]save.py exited 3"}, "odd example"])
    report = triage.failures(store, batch)
    assert [(e.step, e.open) for e in report.escalations] == [("save", True), ("ask", False)]
    open_, lifted = report.escalations
    assert open_.reason == "10 attempts in a row failed" and open_.lifted_at is None
    assert [(x.run_id, x.attempt, x.message) for x in open_.examples] == [
        (9, 1, "[bold]save.py exited 3"), (None, None, "odd example")]
    assert lifted.lifted_at is not None

    text = [line.plain for line in triage.lines(report)]
    assert text[1].startswith("escalated: step save (script_error)")  # before any group
    assert any(line.startswith("lifted: step ask") for line in text[-4:])  # after everything
    rows = list(csv.DictReader(io.StringIO(_csv(report))))
    assert rows[0]["section"] == "escalation" and rows[0]["state"] == "open"
    assert rows[-1]["section"] == "escalation" and rows[-1]["state"] == "lifted"


def _csv(report: triage.Report) -> str:
    stream = io.StringIO()
    triage.write_csv(report, stream)
    return stream.getvalue()


def test_csv_is_one_row_per_example_and_defuses_formulas(conn, batch):
    store = Store(conn)
    with store.transaction():
        store.escalate(batch, "save", "script_error", "=HYPERLINK(\"http://evil.example\")", [])
    rows = list(csv.DictReader(io.StringIO(_csv(triage.failures(store, batch)))))
    assert list(rows[0]) == list(triage.CSV_COLUMNS)
    sections = [r["section"] for r in rows]
    assert sections == ["escalation"] + ["failure"] * 4 + ["engine", "reject"]
    assert rows[0]["reason"].startswith("'=HYPERLINK")  # text in a spreadsheet, not a formula
    busy = [r for r in rows if r["failure_class"] == "server_error"]
    assert [(r["count"], r["runs"], r["given_up"], r["attempt"]) for r in busy] == [("4", "2", "2", "2")] * 2
    assert {r["example"] for r in busy} == {"model server answered 500 for 2", "model server answered 500 for 3"}
    assert rows[-1]["line"] == "7"


def test_json_is_one_object_with_every_section(conn, batch):
    from dataclasses import asdict

    data = json.loads(json.dumps(asdict(triage.failures(Store(conn), batch))))
    assert set(data) == {"batch", "escalations", "failures", "engine", "rejects_total", "rejects"}
    assert data["batch"]["id"] == batch and data["batch"]["workflow"] == "triage"
    first = data["failures"][0]
    assert set(first) >= {"step", "failure_class", "count", "runs", "given_up", "first_at", "last_at", "examples"}
    assert set(first["examples"][0]) >= {"run_id", "attempt", "message"}


def test_a_batch_that_does_not_exist_is_named(conn):
    with pytest.raises(NotFound, match="no batch 999"):
        triage.failures(Store(conn), 999)


# -- purge -------------------------------------------------------------------------------------
COUNTS = {
    "runs": "SELECT count(*) FROM runs WHERE batch_id = %(b)s",
    "interactions": "SELECT count(*) FROM interactions WHERE batch_id = %(b)s",
    "attempts": "SELECT count(*) FROM attempts WHERE batch_id = %(b)s",
    "events": "SELECT count(*) FROM events WHERE batch_id = %(b)s",
    "batch_rejects": "SELECT count(*) FROM batch_rejects WHERE batch_id = %(b)s",
    "escalations": "SELECT count(*) FROM escalations WHERE batch_id = %(b)s",
    "batches": "SELECT count(*) FROM batches WHERE id = %(b)s",
}


def counts(conn, batch_id: int) -> dict[str, int]:
    return {table: conn.execute(q, {"b": batch_id}).fetchone()["count"] for table, q in COUNTS.items()}


def test_purge_deletes_everything_of_its_batch_and_nothing_of_another(conn, tmp_path, batch):
    other = run_batch(conn, tmp_path, "other.csv", ("1b", "4b", "6b"))
    store = Store(conn)
    with store.transaction():
        store.escalate(batch, "save", "script_error", "held", [])
    controls.pause(store, batch)  # an event of the batch that belongs to no run
    before, other_before = counts(conn, batch), counts(conn, other)
    assert all(before.values()) and all(other_before[t] for t in ("runs", "interactions", "events"))

    preview = retention.preview(store, batch)
    deleted = retention.purge(store, batch)
    assert deleted == preview
    assert (deleted.runs, deleted.interactions, deleted.attempts, deleted.events, deleted.rejects,
            deleted.escalations) == (before["runs"], before["interactions"], before["attempts"], before["events"],
                                     before["batch_rejects"], before["escalations"])
    assert set(counts(conn, batch).values()) == {0}
    assert counts(conn, other) == other_before
    assert triage.failures(store, other).failures  # the other batch reads as before
    with pytest.raises(NotFound):
        retention.purge(store, batch)


def test_purge_refuses_a_batch_with_runs_still_running(conn, tmp_path):
    catalog.store(Store(conn), load_text(textwrap.dedent(WF)), WF)
    batch_id = batches.submit(Store(conn), write_csv(tmp_path / "p.csv", ["x"], [["1"], ["2"]]), "triage").batch_id
    with pytest.raises(controls.ControlRefused, match=f"2 run\\(s\\) still running.*orchestrator cancel --batch {batch_id}"):
        retention.purge(Store(conn), batch_id)
    with pytest.raises(controls.ControlRefused):
        retention.preview(Store(conn), batch_id)
    assert counts(conn, batch_id)["runs"] == 2
    controls.cancel_batch(Store(conn), batch_id)
    assert retention.purge(Store(conn), batch_id).runs == 2


def test_the_event_log_still_refuses_a_plain_delete_or_update_after_a_purge(conn, tmp_path, batch):
    other = run_batch(conn, tmp_path, "other.csv", ("5b",))
    retention.purge(Store(conn), batch)
    for statement in ("DELETE FROM events WHERE batch_id = %(b)s", "UPDATE events SET kind = 'x' WHERE batch_id = %(b)s"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement, {"b": other})
    # SET LOCAL ended with the purge's transaction: the next one is not purging.
    assert conn.execute("SELECT current_setting('wavefarm.purging', true) AS s").fetchone()["s"] in (None, "")
