"""`submit --dry-run`: what a submission would create, and the first row's rendered
first step, with nothing stored."""

from __future__ import annotations

import textwrap

import pytest

from common.errors import CsvFileError, NotFound
from orchestrator import batches, catalog, dry_run
from orchestrator.db.store import Store
from orchestrator.workflow import load_text
from tests.integration.helpers import write_csv

WF = textwrap.dedent("""
    name: dry
    steps:
      - name: summarise
        model: "m:1"
        system: "You summarise postings for {{ input.company }}."
        prompt: "Summarise {{ input.title }}: one in {{ 10 // (input.n | int) }}"
        next:
          - {when: "*", to: save}
      - name: save
        script: save.py
        input: {title: "{{ input.title }}"}
""")
SCRIPT_FIRST = textwrap.dedent("""
    name: dry_script
    steps:
      - name: save
        script: save.py
        input: {title: "{{ input.title }}", company: "{{ input.company }}"}
""")
HEADER = ["title", "company", "n"]


def every_table(conn) -> dict[str, int]:
    tables = [r["table_name"] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")]
    return {t: conn.execute(f'SELECT count(*) AS n FROM "{t}"').fetchone()["n"] for t in tables}


@pytest.fixture
def stored(conn, tmp_path):
    (tmp_path / "save.py").write_text("print('{}')\n")
    return catalog.store(Store(conn), load_text(WF), WF)


def test_a_dry_run_counts_what_submit_would_create_and_stores_nothing(conn, tmp_path, stored):
    path = write_csv(tmp_path / "p.csv", HEADER, [["Analyst [bold]", "Acme", "2"], ["Clerk", "Beta", "0"],
                                                  ["Cook", "Gamma", "5"], ["too", "many", "fields", "x"]])
    before = every_table(conn)
    plan = dry_run.plan(Store(conn), path, "dry")
    assert every_table(conn) == before
    assert (plan.workflow, plan.workflow_version, plan.workflow_stored, plan.batch_id) == ("dry", 1, True, None)
    assert (plan.rows_good, plan.runs_new, plan.runs_existing, plan.runs_again) == (3, 3, 0, 0)
    assert [(r.line, r.reason) for r in plan.rejected] == [(5, "4 fields, header has 3")]
    # Row 2 divides by zero: its run would fail at once, and the dry run says where.
    assert plan.born_failed == 1
    assert plan.born_failed_first["line"] == 3 and "ZeroDivisionError" in plan.born_failed_first["message"]

    first = plan.first_row
    assert first["line"] == 2 and first["input"]["title"] == "Analyst [bold]" and not first["exists"]
    (step,) = first["steps"]
    assert (step.step, step.kind, step.actor, step.status) == ("summarise", "ai", "m:1", "pending")
    assert step.input["prompt"] == "Summarise Analyst [bold]: one in 5"
    assert step.input["system"] == "You summarise postings for Acme."


def test_rows_submitted_before_are_counted_as_existing(conn, tmp_path, stored):
    rows = [[f"t{i}", "c", "1"] for i in range(6)]
    submitted = batches.submit(Store(conn), write_csv(tmp_path / "a.csv", HEADER, rows[:4]), "dry", key_column="title")
    again = dry_run.plan(Store(conn), tmp_path / "a.csv", "dry", key_column="title")
    assert (again.batch_id, again.runs_new, again.runs_existing) == (submitted.batch_id, 0, 4)
    assert again.first_row["exists"]
    more = dry_run.plan(Store(conn), write_csv(tmp_path / "b.csv", HEADER, rows), "dry", key_column="title")
    assert (more.batch_id, more.runs_new, more.runs_existing) == (None, 2, 4)


def test_a_changed_workflow_file_is_described_as_the_version_it_would_become(conn, tmp_path, stored):
    path = write_csv(tmp_path / "a.csv", HEADER, [["t1", "c", "1"], ["t2", "c", "1"]])
    batches.submit(Store(conn), path, "dry")
    changed = load_text(WF.replace("Summarise", "Sum up"))
    before = every_table(conn)
    plan = dry_run.plan(Store(conn), path, changed)
    assert every_table(conn) == before  # the new version is not stored either
    assert (plan.workflow_version, plan.workflow_stored, plan.batch_id) == (2, False, None)
    assert (plan.runs_new, plan.runs_existing, plan.runs_again) == (2, 0, 2)
    assert plan.first_row["steps"][0].input["prompt"] == "Sum up t1: one in 10"
    unchanged = dry_run.plan(Store(conn), path, load_text(WF))
    assert (unchanged.workflow_version, unchanged.workflow_stored, unchanged.runs_existing) == (1, True, 2)


def test_a_script_first_step_shows_its_rendered_input(conn, tmp_path):
    catalog.store(Store(conn), load_text(SCRIPT_FIRST), SCRIPT_FIRST)
    plan = dry_run.plan(Store(conn), write_csv(tmp_path / "a.csv", HEADER, [["t1", "Acme", "1"]]), "dry_script")
    (step,) = plan.first_row["steps"]
    assert (step.kind, step.actor, step.input) == ("script", "save.py", {"input": {"title": "t1", "company": "Acme"}})


def test_a_dry_run_refuses_what_submit_refuses(conn, tmp_path, stored):
    with pytest.raises(CsvFileError, match="company"):
        dry_run.plan(Store(conn), write_csv(tmp_path / "a.csv", ["title", "n"], [["t", "1"]]), "dry")
    with pytest.raises(NotFound, match="nothing"):
        dry_run.plan(Store(conn), write_csv(tmp_path / "b.csv", HEADER, [["t", "c", "1"]]), "nothing")
