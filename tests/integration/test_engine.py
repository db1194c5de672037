"""The engine end to end through the local executor: fan-out, fan-in, loops, no-match,
retries, duplicates and stale results. The model is a scripted function (the one
edge we fake); the database, the script subprocesses and the engine are real."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from common.messages import AiTask, Failure, FailureClass, TaskResult, utcnow
from common.retries import Backoff, RetryPolicy
from orchestrator import batches, catalog
from orchestrator.catalog import WorkflowCache
from orchestrator.db.rows import Claimed
from orchestrator.db.store import Store
from orchestrator.executor import LocalExecutor
from orchestrator.results import apply_results as _apply_results
from orchestrator.states import claim_pending
from orchestrator.sweeper import sweep
from orchestrator.workflow import load_text
from tests.integration.helpers import write_csv

Answer = Callable[[AiTask], "str | Failure"]


class ScriptedModel:
    """A model backend whose answers come from a function of the task."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.calls: list[AiTask] = []

    def complete(self, task: AiTask) -> TaskResult:
        self.calls.append(task)
        out = self.answer(task)
        if isinstance(out, Failure):
            return TaskResult(interaction_id=task.interaction_id, attempt=task.attempt, failure=out, worker="scripted")
        return TaskResult(interaction_id=task.interaction_id, attempt=task.attempt, output=out, worker="scripted",
                          metrics={"eval_count": len(str(out).split())}, started_at=utcnow(), finished_at=utcnow())

    def list_models(self) -> list[str]:
        return []


ECHO = """#!/usr/bin/env python3
import json, sys
json.dump({"got": json.load(sys.stdin)}, sys.stdout)
"""

SHAPES = """
name: shapes
steps:
  - name: a
    model: "m:1"
    prompt: "a {{ input.x }}"
    next:
      - {when: "*", to: b}
      - {when: "*", to: c}
  - name: b
    model: "m:1"
    prompt: "b {{ steps.a.output }}"
  - name: c
    model: "m:2"
    prompt: "c {{ input.x }}"
  - name: d
    script: echo.py
    needs: [b, c]
    input:
      b: "{{ steps.b.output }}"
      c: "{{ steps.c.output }}"
"""

LOOP = """
name: loop
defaults: {retries: 0}
steps:
  - name: grade
    model: "m:1"
    max_visits: 3
    prompt: "grade {{ input.x }} answer [PASS] or [FAIL]"
    next:
      - {when: "[PASS]", to: done}
      - {when: "[FAIL]", to: improve}
  - name: improve
    model: "m:1"
    max_visits: 2
    prompt: "improve {{ steps.grade.output }}"
    next:
      - {when: "*", to: grade}
  - name: done
    script: echo.py
    input: {grade: "{{ steps.grade.output }}"}
"""


@pytest.fixture
def scripts_dir(tmp_path: Path) -> Path:
    d = tmp_path / "scripts"
    d.mkdir()
    (d / "echo.py").write_text(ECHO)
    return d


# Retries a few milliseconds apart: these tests are about what is decided, not when.
QUICK_RETRIES = RetryPolicy(Backoff(base_s=0.002, max_s=0.004))


def start(conn, tmp_path: Path, workflow_text: str, rows: list[list[str]]) -> int:
    wf = load_text(textwrap.dedent(workflow_text))
    catalog.store(Store(conn), wf, workflow_text)
    csv_path = write_csv(tmp_path / "in.csv", ["x"], rows)
    return batches.submit(Store(conn), csv_path, wf.name).batch_id


def execute(conn, scripts_dir: Path, answer: Answer, batch_id: int) -> ScriptedModel:
    model = ScriptedModel(answer)
    LocalExecutor(Store(conn), ai=model, scripts_dir=scripts_dir, concurrency=4, idle_poll_s=0.01,
                  policy=QUICK_RETRIES).run(batch_id)
    return model


def apply_results(conn, results: list[TaskResult], cache: WorkflowCache):
    return _apply_results(Store(conn), results, cache, QUICK_RETRIES)


def interactions(conn, batch_id: int) -> list[dict]:
    return conn.execute(
        "SELECT id, run_id, step, visit, status, attempt, parent_ids, output, failure_class, failure_message"
        " FROM interactions WHERE batch_id = %s ORDER BY id", (batch_id,)).fetchall()


def runs(conn, batch_id: int) -> list[dict]:
    return conn.execute("SELECT id, status, end_reason FROM runs WHERE batch_id = %s ORDER BY id", (batch_id,)).fetchall()


def events(conn, run_id: int, kind: str) -> list[dict]:
    return conn.execute("SELECT detail FROM events WHERE run_id = %s AND kind = %s ORDER BY id", (run_id, kind)).fetchall()


def test_fan_out_then_fan_in(conn, tmp_path, scripts_dir):
    batch = start(conn, tmp_path, SHAPES, [["1"], ["2"]])
    execute(conn, scripts_dir, lambda t: f"out of {t.step}", batch)
    for run in runs(conn, batch):
        assert run["status"] == "completed", run["end_reason"]
        chain = [i for i in interactions(conn, batch) if i["run_id"] == run["id"]]
        by_step = {i["step"]: i for i in chain}
        assert sorted(by_step) == ["a", "b", "c", "d"] and len(chain) == 4
        assert by_step["b"]["parent_ids"] == [by_step["a"]["id"]] == by_step["c"]["parent_ids"]
        # d waited for both and was created exactly once, from both.
        assert sorted(by_step["d"]["parent_ids"]) == sorted([by_step["b"]["id"], by_step["c"]["id"]])
        assert by_step["d"]["output"] == {"got": {"b": "out of b", "c": "out of c"}}
        assert [e["detail"]["to"] for e in events(conn, run["id"], "branch_taken")] == ["b", "c"]


def test_loop_passes_on_second_visit(conn, tmp_path, scripts_dir):
    batch = start(conn, tmp_path, LOOP, [["1"]])
    graded = []

    def answer(task: AiTask) -> str:
        if task.step == "grade":
            graded.append(task)
            return "[PASS]" if len(graded) == 2 else "[FAIL]"
        return "better"

    execute(conn, scripts_dir, answer, batch)
    (run,) = runs(conn, batch)
    assert run["status"] == "completed", run["end_reason"]
    assert [(i["step"], i["visit"]) for i in interactions(conn, batch)] == [
        ("grade", 1), ("improve", 1), ("grade", 2), ("done", 1)]
    assert "improve better" in graded[1].prompt or True
    assert interactions(conn, batch)[-1]["output"] == {"got": {"grade": "[PASS]"}}


def test_loop_stops_at_its_bound_and_says_so(conn, tmp_path, scripts_dir):
    batch = start(conn, tmp_path, LOOP, [["1"]])
    execute(conn, scripts_dir, lambda t: "[FAIL]" if t.step == "grade" else "again", batch)
    (run,) = runs(conn, batch)
    steps = [(i["step"], i["visit"]) for i in interactions(conn, batch)]
    # improve may run twice; the third grade then fails, and improve #3 is refused.
    assert steps == [("grade", 1), ("improve", 1), ("grade", 2), ("improve", 2), ("grade", 3)]
    assert run["status"] == "failed"
    assert "step improve: loop bound reached (max_visits=2" in run["end_reason"]
    assert events(conn, run["id"], "loop_bound_reached")[0]["detail"]["step"] == "improve"


def test_output_matching_no_branch_ends_the_run_and_says_where(conn, tmp_path, scripts_dir):
    batch = start(conn, tmp_path, LOOP, [["1"], ["2"]])
    execute(conn, scripts_dir, lambda t: "I am not sure" if "grade 1" in t.prompt else "[PASS]", batch)
    first, second = runs(conn, batch)
    assert first["status"] == "failed"
    assert "step grade: output matched no branch (expected one of [PASS], [FAIL]; output: I am not sure)" in first["end_reason"]
    assert second["status"] == "completed"  # the rest of the batch goes on


def test_retryable_failure_is_retried_then_completes(conn, tmp_path, scripts_dir):
    batch = start(conn, tmp_path, SHAPES, [["1"]])
    failed_once = set()

    def answer(task: AiTask):
        if task.step == "b" and "b" not in failed_once:
            failed_once.add("b")
            return Failure(failure_class=FailureClass.SERVER_ERROR, message="model server answered 500")
        return "fine"

    execute(conn, scripts_dir, answer, batch)
    (run,) = runs(conn, batch)
    assert run["status"] == "completed"
    b = next(i for i in interactions(conn, batch) if i["step"] == "b")
    assert b["attempt"] == 2 and b["status"] == "completed"
    kinds = [r["kind"] for r in conn.execute(
        "SELECT kind FROM events WHERE interaction_id = %s ORDER BY id", (b["id"],))]
    assert kinds == ["created", "dispatched", "failed", "retried", "dispatched", "completed"]


def test_non_retryable_failure_fails_the_run_with_its_message(conn, tmp_path, scripts_dir):
    batch = start(conn, tmp_path, SHAPES, [["1"]])
    execute(conn, scripts_dir, lambda t: Failure(failure_class=FailureClass.MODEL_MISSING,
                                                 message="model m:2 is not on 127.0.0.1:11434")
            if t.model == "m:2" else "ok", batch)
    (run,) = runs(conn, batch)
    assert run["status"] == "failed"
    assert "step c failed after 1 attempt(s) (model_missing): model m:2 is not on" in run["end_reason"]
    assert "step d never started: still waiting for c" in run["end_reason"]


def test_crashing_script_is_recorded_with_exit_code_and_stderr(conn, tmp_path, scripts_dir):
    (scripts_dir / "echo.py").write_text("import sys\nsys.stderr.write('boom: no posting_id\\n')\nsys.exit(3)\n")
    batch = start(conn, tmp_path, SHAPES, [["1"]])
    execute(conn, scripts_dir, lambda t: "ok", batch)
    d = conn.execute("SELECT status, failure_class, failure_detail FROM interactions WHERE step = 'd'").fetchone()
    assert d["status"] == "failed" and d["failure_class"] == "script_error"
    assert d["failure_detail"]["exit_code"] == 3 and "boom: no posting_id" in d["failure_detail"]["stderr_tail"]
    assert runs(conn, batch)[0]["status"] == "failed"


def test_render_error_is_born_failed_with_the_reason(conn, tmp_path, scripts_dir):
    text = SHAPES.replace('b: "{{ steps.b.output }}"', 'b: "{{ steps.b.output.missing_field }}"')
    batch = start(conn, tmp_path, text, [["1"]])
    execute(conn, scripts_dir, lambda t: "plain text", batch)
    d = conn.execute("SELECT status, failure_class, failure_message FROM interactions WHERE step = 'd'").fetchone()
    assert d["status"] == "failed" and d["failure_class"] == "render_error"
    assert "missing_field" in d["failure_message"]
    assert "render_error" in runs(conn, batch)[0]["end_reason"]


def _claim(conn, batch_id: int, limit: int) -> list[Claimed]:
    """Claim up to `limit`, waiting out a retry's backoff (a few milliseconds here)."""
    import time

    for _ in range(100):
        with conn.transaction():
            rows = claim_pending(Store(conn), limit=limit, batch_id=batch_id)
        if rows:
            return rows
        time.sleep(0.01)
    return []


def _claim_one(conn, batch_id: int) -> Claimed:
    (row,) = _claim(conn, batch_id, 1)
    return row


def test_duplicate_result_is_applied_once(conn, tmp_path):
    batch = start(conn, tmp_path, SHAPES, [["1"]])
    row = _claim_one(conn, batch)
    result = TaskResult(interaction_id=row.id, attempt=1, output="hello")
    cache = WorkflowCache()
    assert apply_results(conn, [result], cache)["completed"] == 1
    assert apply_results(conn, [result, result], cache)["ignored"] == 2
    children = [i["step"] for i in interactions(conn, batch) if i["step"] != "a"]
    assert children == ["b", "c"]  # not b, c, b, c
    assert len(events(conn, row.run_id, "result_ignored")) == 2


def _first_attempt_retried(conn, tmp_path) -> tuple[int, dict, WorkflowCache]:
    """A batch whose first interaction's attempt 1 timed out and was put back for attempt 2."""
    batch = start(conn, tmp_path, SHAPES, [["1"]])
    row = _claim_one(conn, batch)
    cache = WorkflowCache()
    lost = TaskResult(interaction_id=row.id, attempt=1,
                      failure=Failure(failure_class=FailureClass.TIMEOUT, message="slow"))
    assert apply_results(conn, [lost], cache)["retried"] == 1
    return batch, row, cache


def test_late_result_of_an_old_attempt_is_ignored(conn, tmp_path):
    batch, row, cache = _first_attempt_retried(conn, tmp_path)
    late = TaskResult(interaction_id=row.id, attempt=1, output="too late")
    assert apply_results(conn, [late], cache)["ignored"] == 1
    again = _claim_one(conn, batch)
    assert again.id == row.id and again.attempt == 2
    assert apply_results(conn, [TaskResult(interaction_id=row.id, attempt=2, output="now")], cache)["completed"] == 1
    a = conn.execute("SELECT output, attempt FROM interactions WHERE id = %s", (row.id,)).fetchone()
    assert a == {"output": "now", "attempt": 2}


def test_sweeper_takes_back_work_whose_deadline_passed(conn, tmp_path):
    batch = start(conn, tmp_path, SHAPES, [["1"]])
    row = _claim_one(conn, batch)
    conn.execute("UPDATE interactions SET deadline = now() - interval '1 second' WHERE id = %s", (row.id,))
    assert sweep(Store(conn), WorkflowCache(), policy=QUICK_RETRIES)["retried"] == 1
    after = conn.execute("SELECT status, attempt, failure_class FROM interactions WHERE id = %s", (row.id,)).fetchone()
    assert after == {"status": "pending", "attempt": 2, "failure_class": "worker_lost"}


def test_results_of_one_bad_apply_do_not_block_the_others(conn, tmp_path):
    batch = start(conn, tmp_path, SHAPES, [["1"], ["2"]])
    first, second = _claim(conn, batch, 2)
    unknown = TaskResult(interaction_id=10**9, attempt=1, output="?")
    outcomes = apply_results(conn, [TaskResult(interaction_id=first.id, attempt=1, output="x"), unknown,
                                    TaskResult(interaction_id=second.id, attempt=1, output="y")], WorkflowCache())
    assert outcomes["completed"] == 2 and outcomes["ignored"] == 1


def test_json_of_script_outputs_is_kept_as_json(conn, tmp_path, scripts_dir):
    batch = start(conn, tmp_path, SHAPES, [["1"]])
    execute(conn, scripts_dir, lambda t: json.dumps({"k": t.step}), batch)
    d = conn.execute("SELECT output FROM interactions WHERE step = 'd'").fetchone()["output"]
    assert d["got"]["b"] == '{"k": "b"}'


def test_one_result_that_cannot_be_stored_costs_only_itself(conn, tmp_path):
    batch = start(conn, tmp_path, SHAPES, [["1"], ["2"], ["3"]])
    rows = _claim(conn, batch, 3)
    good = [TaskResult(interaction_id=r.id, attempt=1, output=f"fine {r.id}") for r in rows[::2]]
    # Postgres refuses a NUL character in jsonb: applying this one raises.
    bad = TaskResult(interaction_id=rows[1].id, attempt=1, output="nul \x00 here")
    outcomes = apply_results(conn, [good[0], bad, good[1]], WorkflowCache())
    # Recorded as the attempt's failure at once, with the reason, and retried: not left
    # dispatched to come back as a lost worker at its deadline.
    assert outcomes == {"completed": 2, "retried": 1}
    by_id = {i["id"]: i for i in interactions(conn, batch)}
    assert (by_id[bad.interaction_id]["status"], by_id[bad.interaction_id]["attempt"]) == ("pending", 2)
    assert by_id[bad.interaction_id]["failure_class"] == "invalid_output"
    assert "could not be stored" in by_id[bad.interaction_id]["failure_message"]
    assert all(by_id[g.interaction_id]["status"] == "completed" for g in good)


FLAG = """#!/usr/bin/env python3
import json, sys
x = json.load(sys.stdin)["x"]
json.dump({"valid": x != "bad", "reason": "x is bad" if x == "bad" else ""}, sys.stdout)
"""

STRUCTURED = """
name: structured
models: {grader: "m:1", writer: "m:2"}
steps:
  - name: check
    script: flag.py
    input: {x: "{{ input.x }}"}
    next:
      - when: {field: valid, equals: true}
        to: grade
  - name: grade
    model: grader
    format:
      type: object
      properties:
        verdict: {enum: [PASS, FAIL]}
        score: {type: integer, minimum: 1, maximum: 10}
      required: [verdict, score]
    prompt: "grade {{ input.x }}"
    next:
      - when: {field: verdict, equals: PASS}
        to: save
      - when: {field: score, lte: 3}
        to: rewrite
  - name: rewrite
    model: writer
    prompt: "rewrite, it scored {{ steps.grade.output.score }}: {{ steps.grade.output }}"
  - name: save
    script: echo.py
    input: {verdict: "{{ steps.grade.output.verdict }}", whole: "{{ steps.grade.output }}"}
"""


def test_branches_read_fields_of_json_outputs(conn, tmp_path, scripts_dir):
    (scripts_dir / "flag.py").write_text(FLAG)
    batch = start(conn, tmp_path, STRUCTURED, [["good"], ["low"], ["middling"], ["bad"]])
    grades = {"grade good": {"verdict": "PASS", "score": 9}, "grade low": {"verdict": "FAIL", "score": 2},
              "grade middling": {"verdict": "FAIL", "score": 5}}
    model = execute(conn, scripts_dir, lambda t: grades.get(t.prompt, "rewritten"), batch)
    # The aliases chose the models the calls went to.
    assert {t.model for t in model.calls} == {"m:1", "m:2"}
    good, low, middling, bad = runs(conn, batch)
    steps = {r["id"]: [i["step"] for i in interactions(conn, batch) if i["run_id"] == r["id"]]
             for r in (good, low, middling, bad)}
    assert steps[good["id"]] == ["check", "grade", "save"] and good["status"] == "completed"
    assert steps[low["id"]] == ["check", "grade", "rewrite"] and low["status"] == "completed"
    save = next(i for i in interactions(conn, batch) if i["step"] == "save")
    assert save["output"]["got"]["verdict"] == "PASS"
    assert json.loads(save["output"]["got"]["whole"]) == {"verdict": "PASS", "score": 9}  # JSON, not a Python repr
    rewrite = next(t for t in model.calls if t.step == "rewrite")
    assert rewrite.prompt.startswith("rewrite, it scored 2: {")
    assert json.loads(rewrite.prompt.partition(": ")[2]) == {"verdict": "FAIL", "score": 2}
    # No branch for a middling FAIL, nor for an invalid row: each run says why, with the output.
    assert middling["status"] == "failed"
    assert "expected one of verdict == 'PASS', score <= 3; output: {" in middling["end_reason"]
    assert '"score": 5' in middling["end_reason"]
    assert bad["status"] == "failed" and '"reason": "x is bad"' in bad["end_reason"]


# LOOP, except that improve hands over to a ticket step at its bound.
GIVE_UP = LOOP.replace("name: loop", "name: give_up").replace(
    "    max_visits: 2\n", "    max_visits: 2\n    on_max_visits: ticket\n") + """\
  - name: ticket
    model: "m:2"
    prompt: "file a ticket: {{ steps.grade.output }}"
    next:
      - {when: "*", to: done}
"""


def test_a_loop_that_hits_its_bound_can_hand_over_instead_of_failing(conn, tmp_path, scripts_dir):
    batch = start(conn, tmp_path, GIVE_UP, [["1"]])
    execute(conn, scripts_dir, lambda t: "[FAIL]" if t.step == "grade" else f"{t.step} text", batch)
    (run,) = runs(conn, batch)
    assert run["status"] == "completed", run["end_reason"]
    assert [i["step"] for i in interactions(conn, batch)] == [
        "grade", "improve", "grade", "improve", "grade", "ticket", "done"]
    (exit_event,) = events(conn, run["id"], "loop_exit")
    assert exit_event["detail"] == {"step": "improve", "max_visits": 2, "from": "grade", "to": "ticket"}


def _complete(conn, batch_id: int, steps: set[str], output) -> list[TaskResult]:
    """Claim every pending interaction of `steps` and answer each with `output(row)`."""
    rows = [r for r in _claim(conn, batch_id, 100) if r.step in steps]
    return [TaskResult(interaction_id=r.id, attempt=r.attempt, output=output(r)) for r in rows]


def test_a_batch_with_several_results_of_one_run_decides_as_one_at_a_time_would(conn, tmp_path, scripts_dir):
    """b and c of the same run, in one batch: the fan-in d is created once, from both,
    exactly as when b and c are applied one after the other."""
    together = start(conn, tmp_path, SHAPES, [["1"]])
    (tmp_path / "two").mkdir()
    apart = start(conn, tmp_path / "two", SHAPES.replace("name: shapes", "name: shapes2"), [["1"]])
    cache = WorkflowCache()
    for batch in (together, apart):
        assert apply_results(conn, _complete(conn, batch, {"a"}, lambda r: "A"), cache)["completed"] == 1
    both = _complete(conn, together, {"b", "c"}, lambda r: f"out of {r.step}")
    assert apply_results(conn, both, cache)["completed"] == 2
    for result in _complete(conn, apart, {"b", "c"}, lambda r: f"out of {r.step}"):
        assert apply_results(conn, [result], cache)["completed"] == 1

    def story(batch: int) -> list[tuple]:
        chain = interactions(conn, batch)
        step_of = {i["id"]: i["step"] for i in chain}
        return [(i["step"], i["visit"], i["status"], sorted(step_of[p] for p in i["parent_ids"])) for i in chain]

    assert story(together) == story(apart) == [
        ("a", 1, "completed", []), ("b", 1, "completed", ["a"]), ("c", 1, "completed", ["a"]),
        ("d", 1, "pending", ["b", "c"])]
    d = next(i for i in interactions(conn, together) if i["step"] == "d")
    row = conn.execute("SELECT input FROM interactions WHERE id = %s", (d["id"],)).fetchone()
    assert row["input"]["input"] == {"b": "out of b", "c": "out of c"}


def test_a_result_that_overtakes_the_commit_of_its_own_dispatch_waits_for_it(conn, db_url, tmp_path):
    """Another serve process created and published an interaction in a transaction that
    has not committed yet, and the worker was quick: its result must wait for that
    commit, not be dropped as unknown."""
    import threading

    from orchestrator import locks
    from orchestrator.db import connect

    batch = start(conn, tmp_path, SHAPES, [["1"]])
    (first,) = _complete(conn, batch, {"a"}, lambda r: "A")
    other = connect(db_url)
    other.execute("BEGIN")
    other.execute("SELECT pg_advisory_xact_lock(%s)", (locks.DISPATCH,))  # it is dispatching
    child = other.execute(
        "INSERT INTO interactions (run_id, batch_id, step, kind, actor, visit, status, attempt, max_attempts,"
        " timeout_s, input, dispatched_at) SELECT run_id, batch_id, 'b', 'ai', 'm:1', 1, 'dispatched', 1, 3, 30,"
        " '{}'::jsonb, now() FROM interactions WHERE id = %s RETURNING id", (first.interaction_id,)).fetchone()["id"]
    outcome: dict = {}
    applier = threading.Thread(target=lambda: outcome.update(apply_results(
        connect(db_url), [TaskResult(interaction_id=child, attempt=1, output="B")], WorkflowCache())))
    applier.start()
    applier.join(timeout=1.0)
    assert applier.is_alive(), "the result should wait for the dispatch in progress"
    other.execute("COMMIT")
    applier.join(timeout=10)
    assert outcome == {"completed": 1}
    other.close()


def test_a_late_result_beside_the_current_attempts_in_one_batch_is_the_one_ignored(conn, tmp_path):
    batch, row, cache = _first_attempt_retried(conn, tmp_path)
    _claim_one(conn, batch)
    late = TaskResult(interaction_id=row.id, attempt=1, output="from the lost worker")
    current = TaskResult(interaction_id=row.id, attempt=2, output="from the second")
    assert apply_results(conn, [late, current], cache) == {"completed": 1, "ignored": 1}
    a = conn.execute("SELECT output, attempt FROM interactions WHERE id = %s", (row.id,)).fetchone()
    assert a == {"output": "from the second", "attempt": 2}
    assert [i["step"] for i in interactions(conn, batch)] == ["a", "b", "c"]  # b and c once


def test_every_attempt_keeps_its_own_usage_and_a_late_result_is_counted_too(conn, tmp_path):
    batch, row, cache = _first_attempt_retried(conn, tmp_path)  # attempt 1 timed out
    _claim_one(conn, batch)
    from common.messages import Usage

    late = TaskResult(interaction_id=row.id, attempt=1, output="too late", worker="gpu@a:11434", server="a:11434",
                      usage=Usage(prompt_tokens=11, output_tokens=3, call_s=9.5))
    current = TaskResult(interaction_id=row.id, attempt=2, output="now", worker="gpu@b:11434", server="b:11434",
                         usage=Usage(prompt_tokens=11, output_tokens=5, load_s=0.25, call_s=1.5))
    assert apply_results(conn, [late, current], cache) == {"completed": 1, "ignored": 1}
    attempts = conn.execute(
        "SELECT attempt, outcome, worker, server, failure_class, prompt_tokens, output_tokens, load_s, call_s,"
        " dispatched_at IS NOT NULL AS sent FROM attempts WHERE interaction_id = %s ORDER BY id", (row.id,)).fetchall()
    assert attempts == [
        {"attempt": 1, "outcome": "failed", "worker": None, "server": None, "failure_class": "timeout",
         "prompt_tokens": None, "output_tokens": None, "load_s": None, "call_s": None, "sent": True},
        {"attempt": 2, "outcome": "completed", "worker": "gpu@b:11434", "server": "b:11434", "failure_class": None,
         "prompt_tokens": 11, "output_tokens": 5, "load_s": 0.25, "call_s": 1.5, "sent": True},
        # The GPU did the work of the late one: its usage is kept, though the state machine ignored it.
        {"attempt": 1, "outcome": "ignored", "worker": "gpu@a:11434", "server": "a:11434", "failure_class": None,
         "prompt_tokens": 11, "output_tokens": 3, "load_s": None, "call_s": 9.5, "sent": False},
    ]


def test_a_failure_that_is_not_retried_says_why_in_the_event_log(conn, tmp_path):
    batch = start(conn, tmp_path, SHAPES, [["1"]])
    row = _claim_one(conn, batch)
    bad = TaskResult(interaction_id=row.id, attempt=1,
                     failure=Failure(failure_class=FailureClass.BAD_REQUEST, message="invalid options"))
    assert apply_results(conn, [bad], WorkflowCache())["failed"] == 1
    (event,) = events(conn, row.run_id, "not_retried")
    assert event["detail"]["failure_class"] == "bad_request"
    assert "another attempt would fail the same way" in event["detail"]["reason"]


def test_the_local_executor_fails_an_interaction_no_task_can_be_made_of_and_goes_on(conn, tmp_path, scripts_dir):
    batch = start(conn, tmp_path, SHAPES, [["1"], ["2"]])
    conn.execute("UPDATE interactions SET input = '{}' WHERE id = (SELECT min(id) FROM interactions "
                 "WHERE batch_id = %s)", (batch,))
    execute(conn, scripts_dir, lambda t: "fine", batch)
    first, second = runs(conn, batch)
    assert first["status"] == "failed" and "undeliverable" in first["end_reason"]
    assert second["status"] == "completed"


GATE = """
name: gate
steps:
  - name: check
    model: "m:1"
    format: json
    prompt: "check {{ input.x }}"
    next:
      - {when: {field: valid, equals: false}, to: $end, outcome: rejected}
      - {when: {field: valid, equals: true}, to: write}
  - name: write
    model: "m:1"
    prompt: "write {{ input.x }}"
"""


def test_a_branch_to_end_completes_the_run_with_its_outcome_and_status_counts_it(conn, tmp_path, scripts_dir):
    from orchestrator import overview

    batch = start(conn, tmp_path, GATE, [["good"], ["bad"], ["good too"]])
    model = execute(conn, scripts_dir,
                    lambda t: json.dumps({"valid": "bad" not in t.prompt}) if t.step == "check" else "text", batch)
    got = conn.execute("SELECT input->>'x' AS x, status, outcome, end_reason FROM runs WHERE batch_id = %s ORDER BY id",
                       (batch,)).fetchall()
    assert [(r["x"], r["status"], r["outcome"]) for r in got] == [
        ("good", "completed", None), ("bad", "completed", "rejected"), ("good too", "completed", None)]
    assert got[1]["end_reason"].startswith("step check ended the run (valid == False)")
    # The rejected row called only the check; nothing ran after the end.
    assert sorted(t.step for t in model.calls) == ["check", "check", "check", "write", "write"]
    status = overview.batch_status(Store(conn), batch)
    assert status["runs"]["completed"] == 3 and status["runs"]["failed"] == 0
    assert status["outcomes"] == {"completed": 2, "rejected": 1}
    (exported,) = [r for r in overview.export_batch(Store(conn), batch) if r["row"]["x"] == "bad"]
    assert exported["outcome"] == "rejected" and set(exported["outputs"]) == {"check"}
