"""`retry` against Postgres and the local executor: failed runs go on after a fix, a
changed prompt runs again from its step on the new version (and only from there), and
a retry is one transaction that refuses what would mix two versions' work."""

from __future__ import annotations

import json
import textwrap

import pytest

from orchestrator import catalog, controls, overview
from orchestrator.controls import ControlRefused
from orchestrator.db.store import Store
from orchestrator.rerun import RetryRequest, retry
from orchestrator.workflow import load_text
from tests.integration.test_engine import execute, scripts_dir, start  # noqa: F401 (a fixture)

PIPE = """
name: pipe
defaults: {retries: 0}
steps:
  - name: prep
    script: prep.py
    input: {x: "{{ input.x }}"}
    next: [{when: "*", to: summarise}]
  - name: summarise
    model: "m:1"
    prompt: "summarise {{ steps.prep.output.x }}"
    next: [{when: "*", to: grade}]
  - name: grade
    model: "m:2"
    format: json
    prompt: "grade {{ steps.summarise.output }}"
    next:
      - {when: {field: ok, equals: true}, to: save}
      - {when: {field: ok, equals: false}, to: $end, outcome: rejected}
  - name: save
    script: save.py
    input: {summary: "{{ steps.summarise.output }}"}
"""

PREP = "import json, sys\nx = json.load(sys.stdin)['x']\nopen(sys.argv[0] + '.calls', 'a').write(x + '\\n')\njson.dump({'x': x}, sys.stdout)\n"
SAVE_BROKEN = "import sys\nsys.stderr.write('table postings does not exist\\n')\nsys.exit(2)\n"
SAVE = "import json, sys\njson.dump({'saved': json.load(sys.stdin)['summary']}, sys.stdout)\n"


def answer(task) -> str:
    if task.step == "grade":
        return json.dumps({"ok": "reject" not in task.prompt})
    return ("SHORT " if task.prompt.startswith("briefly") else "") + f"summary of {task.prompt.split()[-1]}"


def _runs(conn, batch):
    return conn.execute("SELECT id, status, outcome, end_reason, workflow_id FROM runs WHERE batch_id = %s ORDER BY id",
                        (batch,)).fetchall()


def _load(conn, text):
    return catalog.store(Store(conn), load_text(textwrap.dedent(text)), text)


@pytest.fixture
def pipe_scripts(scripts_dir):
    (scripts_dir / "prep.py").write_text(PREP)
    (scripts_dir / "save.py").write_text(SAVE)
    return scripts_dir


def test_retry_failed_after_fixing_a_script_runs_only_what_failed(conn, tmp_path, pipe_scripts):
    (pipe_scripts / "save.py").write_text(SAVE_BROKEN)
    batch = start(conn, tmp_path, PIPE, [["a"], ["b"], ["c"]])
    execute(conn, pipe_scripts, answer, batch)
    assert [r["status"] for r in _runs(conn, batch)] == ["failed"] * 3

    (pipe_scripts / "save.py").write_text(SAVE)
    plan = retry(Store(conn), RetryRequest(batch, failed=True))
    assert (dict(plan.runs), plan.new_attempts, plan.new_visits, plan.superseded) == ({"failed": 3}, 3, 0, 0)
    model = execute(conn, pipe_scripts, answer, batch)
    assert model.calls == []  # nothing before the failed step ran again
    assert [r["status"] for r in _runs(conn, batch)] == ["completed"] * 3
    saves = conn.execute("SELECT attempt, max_attempts, status, output FROM interactions WHERE batch_id = %s"
                         " AND step = 'save' ORDER BY run_id", (batch,)).fetchall()
    # The same interaction, its next attempt (never a reset), with a fresh set of retries.
    assert [(s["attempt"], s["max_attempts"], s["status"]) for s in saves] == [(2, 2, "completed")] * 3
    assert saves[0]["output"] == {"saved": "summary of a"}
    assert sorted((pipe_scripts / "prep.py.calls").read_text().split()) == ["a", "b", "c"]
    kinds = [e["kind"] for e in conn.execute("SELECT kind FROM events WHERE run_id = %s ORDER BY id",
                                             (_runs(conn, batch)[0]["id"],))]
    assert kinds.count("rerun") == 1 and "run_reopened" in kinds and "retried" in kinds


def test_retry_from_a_step_after_a_changed_prompt_reruns_that_step_and_those_after_it(conn, tmp_path, pipe_scripts):
    batch = start(conn, tmp_path, PIPE, [["a"], ["b"], ["reject"]])
    first = execute(conn, pipe_scripts, answer, batch)
    assert len(first.calls) == 6
    v1 = _runs(conn, batch)[0]["workflow_id"]
    v2 = _load(conn, PIPE.replace('prompt: "summarise {{', 'prompt: "briefly summarise {{'))

    plan = retry(Store(conn), RetryRequest(batch, from_step="summarise", version="latest"))
    assert plan.moved_to == 2 and dict(plan.runs) == {"completed": 3}
    assert plan.new_visits == 3 and plan.superseded == 3 + 3 + 2  # summarise, grade, and the two saves
    again = execute(conn, pipe_scripts, answer, batch)
    # Only that step and the steps after it called a model again, once per run each.
    assert sorted(t.step for t in again.calls) == ["grade"] * 3 + ["summarise"] * 3
    assert all(t.prompt.startswith("briefly summarise") for t in again.calls if t.step == "summarise")
    assert sorted((pipe_scripts / "prep.py.calls").read_text().split()) == ["a", "b", "reject"]  # prep did not run again
    runs = _runs(conn, batch)
    assert [(r["status"], r["outcome"], r["workflow_id"]) for r in runs] == [
        ("completed", None, v2.id), ("completed", None, v2.id), ("completed", "rejected", v2.id)]
    assert v1 != v2.id
    # The new outputs are the run's; the old ones are history, flagged, with their attempts.
    exported = {r["row"]["x"]: r for r in overview.export_batch(Store(conn), batch)}
    assert exported["a"]["outputs"]["save"] == {"saved": "SHORT summary of a"}
    story = overview.run_story(Store(conn), runs[0]["id"])
    assert [(i["step"], i["visit"], i["superseded"]) for i in story["interactions"]] == [
        ("prep", 1, False), ("summarise", 1, True), ("grade", 1, True), ("save", 1, True),
        ("summarise", 2, False), ("grade", 2, False), ("save", 2, False)]
    assert any(e["kind"] == "moved_to_version" for e in story["events"])


def test_a_move_is_refused_when_a_reused_output_would_come_from_another_version(conn, tmp_path, pipe_scripts):
    batch = start(conn, tmp_path, PIPE, [["a"]])
    execute(conn, pipe_scripts, answer, batch)
    _load(conn, PIPE.replace('input: {x: "{{ input.x }}"}', 'input: {x: "{{ input.x | upper }}"}'))
    before = conn.execute("SELECT count(*) AS n FROM interactions").fetchone()["n"]
    with pytest.raises(ControlRefused, match="step.s. prep differ"):
        retry(Store(conn), RetryRequest(batch, from_step="summarise", version="latest"))
    assert conn.execute("SELECT count(*) AS n FROM interactions").fetchone()["n"] == before
    # From the changed step itself it is fine.
    plan = retry(Store(conn), RetryRequest(batch, from_step="prep", version="latest"))
    assert plan.new_visits == 1
    execute(conn, pipe_scripts, answer, batch)
    assert _runs(conn, batch)[0]["status"] == "completed"
    assert (pipe_scripts / "prep.py.calls").read_text().split() == ["a", "A"]


def test_runs_that_never_reached_the_step_are_skipped_and_counted(conn, tmp_path, pipe_scripts):
    batch = start(conn, tmp_path, PIPE, [["a"], ["reject"]])
    execute(conn, pipe_scripts, answer, batch)
    plan = retry(Store(conn), RetryRequest(batch, from_step="save"))
    assert dict(plan.runs) == {"completed": 1} and dict(plan.skipped) == {"never reached step save": 1}
    assert plan.notices == []


def test_a_dry_run_changes_nothing(conn, tmp_path, pipe_scripts):
    batch = start(conn, tmp_path, PIPE, [["a"], ["b"]])
    execute(conn, pipe_scripts, answer, batch)
    counts = lambda: [conn.execute(f"SELECT count(*) AS n FROM {t}").fetchone()["n"]  # noqa: E731
                      for t in ("interactions", "events", "attempts")]
    before = counts()
    plan = retry(Store(conn), RetryRequest(batch, from_step="grade"), dry_run=True)
    assert not plan.done and plan.new_visits == 2
    assert counts() == before and [r["status"] for r in _runs(conn, batch)] == ["completed"] * 2


def test_a_cancelled_run_goes_on_where_it_was_cancelled(conn, tmp_path, pipe_scripts):
    batch = start(conn, tmp_path, PIPE, [["a"], ["b"]])
    first_run = _runs(conn, batch)[0]["id"]
    controls.cancel_runs(Store(conn), [first_run])
    execute(conn, pipe_scripts, answer, batch)
    assert [r["status"] for r in _runs(conn, batch)] == ["cancelled", "completed"]
    plan = retry(Store(conn), RetryRequest(batch))
    assert dict(plan.runs) == {"cancelled": 1} and plan.new_visits == 1 and plan.superseded == 1
    execute(conn, pipe_scripts, answer, batch)
    assert [r["status"] for r in _runs(conn, batch)] == ["completed", "completed"]


def test_a_step_that_does_not_exist_is_refused_with_the_steps_there_are(conn, tmp_path, pipe_scripts):
    batch = start(conn, tmp_path, PIPE, [["a"]])
    with pytest.raises(ControlRefused, match="has no step 'sumarise' .its steps: prep, summarise, grade, save"):
        retry(Store(conn), RetryRequest(batch, from_step="sumarise"))


def test_a_run_that_matched_no_branch_gets_a_new_visit_and_superseded_visits_do_not_count_for_the_bound(
        conn, tmp_path, scripts_dir):
    from tests.integration.test_engine import LOOP

    batch = start(conn, tmp_path, LOOP, [["1"], ["2"]])
    # Run 1 answers nonsense (no branch); run 2 fails its grade three times (the loop bound).
    execute(conn, scripts_dir, lambda t: "I am not sure" if "grade 1" in t.prompt
            else ("[FAIL]" if t.step == "grade" else "again"), batch)
    first, second = _runs(conn, batch)
    assert "matched no branch" in first["end_reason"] and "loop bound reached" in second["end_reason"]

    plan = retry(Store(conn), RetryRequest(batch))
    assert dict(plan.runs) == {"failed": 2} and plan.new_visits == 2 and plan.superseded == 2
    execute(conn, scripts_dir, lambda t: "[PASS]", batch)
    assert [r["status"] for r in _runs(conn, batch)] == ["completed", "completed"]

    # From the top of the loop: every earlier visit is history; the bound counts afresh.
    plan = retry(Store(conn), RetryRequest(batch, from_step="grade", run_ids=(second["id"],)))
    assert plan.new_visits == 1
    execute(conn, scripts_dir, lambda t: "[FAIL]" if t.step == "grade" else "again", batch)
    live = conn.execute("SELECT step, count(*) AS n FROM interactions WHERE run_id = %s AND NOT superseded"
                        " GROUP BY step ORDER BY step", (second["id"],)).fetchall()
    assert [(r["step"], r["n"]) for r in live] == [("grade", 3), ("improve", 2)]
    assert "loop bound reached" in _runs(conn, batch)[1]["end_reason"]


def test_running_runs_that_have_not_reached_the_step_move_to_the_new_version_and_reach_it_there(
        conn, tmp_path, pipe_scripts):
    batch = start(conn, tmp_path, PIPE, [["a"], ["b"]])  # nothing executed yet: every run waits at prep
    v2 = _load(conn, PIPE.replace('prompt: "summarise {{', 'prompt: "briefly summarise {{'))
    plan = retry(Store(conn), RetryRequest(batch, from_step="summarise", version="latest"))
    assert (sum(plan.runs.values()), plan.moved_on, plan.moved_to) == (0, 2, 2)
    model = execute(conn, pipe_scripts, answer, batch)
    assert all(t.prompt.startswith("briefly summarise") for t in model.calls if t.step == "summarise")
    assert [(r["status"], r["workflow_id"]) for r in _runs(conn, batch)] == [("completed", v2.id)] * 2


def test_a_refusal_in_a_later_chunk_undoes_the_earlier_ones(conn, tmp_path, pipe_scripts, monkeypatch):
    from orchestrator import rerun

    monkeypatch.setattr(rerun, "CHUNK", 1)  # a run at a time, as 1,000 at a time in a big batch
    batch = start(conn, tmp_path, PIPE, [["a"], ["b"]])
    execute(conn, pipe_scripts, answer, batch)
    v2 = PIPE.replace('prompt: "summarise {{', 'prompt: "briefly summarise {{')
    (tmp_path / "v2").mkdir()
    other = start(conn, tmp_path / "v2", v2, [["b"]])  # row b runs on v2 already, in another batch
    execute(conn, pipe_scripts, answer, other)
    before = [(r["workflow_id"], r["status"]) for r in _runs(conn, batch)]
    with pytest.raises(ControlRefused, match="that version runs their rows already"):
        retry(Store(conn), RetryRequest(batch, from_step="summarise", version="latest"))
    assert [(r["workflow_id"], r["status"]) for r in _runs(conn, batch)] == before  # run a was not moved either
    plan = retry(Store(conn), RetryRequest(batch, from_step="summarise"))  # on its own version it goes
    assert dict(plan.runs) == {"completed": 2} and plan.new_visits == 2 and plan.superseded == 6
