"""The job-posting example's data and script actors (examples/postings), against real
Postgres, each script run the way script-worker runs it: a subprocess via run_script,
every input value as text (a workflow renders each one from a template)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from common.messages import Failure, FailureClass, ScriptTask, TaskResult
from orchestrator.csv_rows import BadRow, GoodRow, read_rows
from script_worker.runner import run_script
from tests.conftest import EXAMPLES, copy_of

POSTINGS = EXAMPLES / "postings"
SCRIPTS = POSTINGS / "scripts"
CSV = POSTINGS / "postings.csv"
COLUMNS = ["source_id", "url", "title", "company", "location", "description", "summary"]

# source_id -> what the rejection reason must say (field and problem); see README.md
BROKEN = {
    "DB-10283": ("title is empty",),
    "DB-10284": ("url 'www.pixelmoor.example/jobs/ux-researcher'", "not an http(s) URL"),
    "DB-10285": ("url already belongs to posting DB-10236",),
    "DB-10286": ("description", "3 characters"),
    "DB-10287": ("company is empty",),
}
PRE_SUMMARISED = {"DB-10233", "DB-10240", "DB-10253", "DB-10269"}

_ids = itertools.count(1)


def run(script: str, data: dict[str, Any], db_url: str | None, *, run_id: int = 1) -> TaskResult:
    task = ScriptTask(interaction_id=next(_ids), attempt=1, run_id=run_id, batch_id=1, step=script,
                      timeout_s=60, script=script, input=data)
    return run_script(task, SCRIPTS, env={"WAVEFARM_DATABASE_URL": db_url} if db_url else None)


def ok(script: str, data: dict[str, Any], db_url: str | None) -> dict[str, Any]:
    result = run(script, data, db_url)
    assert result.ok, result.failure
    assert isinstance(result.output, dict)
    return result.output


def fails(script: str, data: dict[str, Any], db_url: str | None) -> Failure:
    result = run(script, data, db_url)
    assert result.failure is not None, f"{script} should have failed but returned {result.output}"
    assert result.failure.failure_class == FailureClass.SCRIPT_ERROR
    return result.failure


def csv_rows() -> list[dict[str, str]]:
    rows = list(read_rows(CSV, required_columns=COLUMNS, key_column="source_id"))
    bad = [r for r in rows if isinstance(r, BadRow)]
    assert not bad, bad
    return [r.values for r in rows if isinstance(r, GoodRow)]


def posting(**overrides: str) -> dict[str, str]:
    row = {
        "source_id": "T-1", "url": "https://jobs.example.org/t-1", "title": "Warehouse Team Lead",
        "company": "Acme Logistics", "location": "Leeds",
        "description": "Lead a team of twelve pickers on the late shift, plan the work in our WMS and "
                       "keep everyone safe. Two years of warehouse leadership experience needed.",
        "summary": "",
    }
    return row | overrides


def stage(db_url: str, row: dict[str, str], run_id: int, batch_id: int = 1) -> int:
    out = ok("intake.py", row | {"run_id": str(run_id), "batch_id": str(batch_id)}, db_url)
    assert out["source_id"] == row["source_id"]
    return int(out["staging_id"])


def promote(db_url: str, row: dict[str, str], run_id: int) -> int:
    out = ok("validate_posting.py", {"staging_id": str(stage(db_url, row, run_id))}, db_url)
    assert out["valid"] is True, out
    return int(out["posting_id"])


def query(db_url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def shared_db(template_db: str) -> Iterator[tuple[str, int]]:
    """One database for the tests that only read or fail: (url, id of one promoted posting)."""
    with copy_of(template_db) as url:
        yield url, promote(url, posting(source_id="SHARED-1", url="https://jobs.example.org/shared-1"), 1)


# -- the data -------------------------------------------------------------------------

def test_the_csv_reads_cleanly_with_the_projects_reader() -> None:
    rows = csv_rows()
    assert len(rows) >= 55
    assert all(list(r) == COLUMNS for r in rows)
    assert len({r["source_id"] for r in rows}) == len(rows)
    assert {r["source_id"] for r in rows if r["summary"]} == PRE_SUMMARISED
    assert set(BROKEN) <= {r["source_id"] for r in rows}
    valid = [r for r in rows if r["source_id"] not in BROKEN]
    lengths = [len(r["description"]) for r in valid]
    assert min(lengths) <= 400 and 2000 <= max(lengths) <= 2600
    assert sum("\n" in r["description"] for r in valid) >= 20
    text = CSV.read_text(encoding="utf-8")
    assert "München" in text and "€" in text and '""' in text  # non-ASCII and quoted quotes


def test_every_row_of_the_csv_through_intake_and_validate(db_url: str) -> None:
    rows = csv_rows()
    outcomes: dict[str, dict[str, Any]] = {}
    for run_id, row in enumerate(rows, start=100):  # file order: the duplicate url comes after its original
        outcomes[row["source_id"]] = ok("validate_posting.py",
                                        {"staging_id": str(stage(db_url, row, run_id, batch_id=7))}, db_url)

    rejected = {sid: out for sid, out in outcomes.items() if out["valid"] is False}
    assert set(rejected) == set(BROKEN)
    for sid, out in rejected.items():
        assert out["source_id"] == sid
        assert "; " not in out["reason"], f"{sid} should be broken in one way only: {out['reason']}"
        for phrase in BROKEN[sid]:
            assert phrase in out["reason"], (sid, out["reason"])

    promoted = {sid: out["posting_id"] for sid, out in outcomes.items() if out["valid"] is True}
    assert len(promoted) == len(rows) - len(BROKEN)
    assert len(set(promoted.values())) == len(promoted)

    staging = query(db_url, "SELECT source_id, status, reject_reason, posting_id, decided_at, batch_id "
                            "FROM postings_staging")
    assert len(staging) == len(rows)
    assert all(s["decided_at"] is not None and s["batch_id"] == 7 for s in staging)
    assert {s["source_id"] for s in staging if s["status"] == "rejected"} == set(BROKEN)
    assert all(s["reject_reason"] for s in staging if s["status"] == "rejected")
    assert {s["source_id"]: s["posting_id"] for s in staging if s["status"] == "promoted"} == promoted

    stored = query(db_url, "SELECT posting_id, source_id, title, description, extracted_summary FROM postings")
    assert {p["source_id"]: p["posting_id"] for p in stored} == promoted
    by_id = {r["source_id"]: r for r in rows}
    assert all(p["description"] == by_id[p["source_id"]]["description"].strip() for p in stored)
    assert {p["source_id"] for p in stored if p["extracted_summary"]} == PRE_SUMMARISED

    # The check-summary step: the pre-summarised rows skip the AI chain, the others do not.
    for sid in sorted(PRE_SUMMARISED) + ["DB-10231", "DB-10282"]:
        out = ok("check_summary.py", {"posting_id": str(promoted[sid])}, db_url)
        assert out["posting_id"] == promoted[sid]
        assert out["has_summary"] is (sid in PRE_SUMMARISED)
        assert out["summary"] == by_id[sid]["summary"].strip()


def test_a_rejection_lists_every_problem_of_the_row(db_url: str) -> None:
    row = posting(title="", company="  ", url="not-a-url", description="TBD")
    out = ok("validate_posting.py", {"staging_id": str(stage(db_url, row, 1))}, db_url)
    assert out == {"valid": False, "reason": out["reason"], "source_id": "T-1"}
    problems = out["reason"].split("; ")
    assert len(problems) == 4, problems
    for field in ("title", "company", "url 'not-a-url'", "description"):
        assert any(p.startswith(field) for p in problems), (field, problems)
    long_title = ok("validate_posting.py", {"staging_id": str(stage(db_url, posting(title="x" * 201), 2))}, db_url)
    assert long_title["valid"] is False and "title" in long_title["reason"] and "200" in long_title["reason"]
    ftp = ok("validate_posting.py", {"staging_id": str(stage(db_url, posting(url="ftp://example.org/j"), 3))}, db_url)
    assert ftp["valid"] is False and "not an http(s) URL" in ftp["reason"]
    no_id = ok("intake.py", posting(source_id="") | {"run_id": "4", "batch_id": ""}, db_url)
    assert no_id["source_id"] == ""
    no_id = ok("validate_posting.py", {"staging_id": str(no_id["staging_id"])}, db_url)
    assert no_id["valid"] is False and no_id["reason"] == "source_id is empty"
    assert query(db_url, "SELECT count(*) AS n FROM postings")[0]["n"] == 0


# -- intake and re-runs ---------------------------------------------------------------

def test_a_retried_intake_updates_its_run_instead_of_duplicating(db_url: str) -> None:
    first = stage(db_url, posting(), 41)
    out = ok("validate_posting.py", {"staging_id": str(first)}, db_url)
    assert out["valid"] is True
    again = stage(db_url, posting(title="Warehouse Team Lead (late shift)"), 41)  # the broker redelivered it
    assert again == first
    rows = query(db_url, "SELECT run_id, status, decided_at, posting_id, payload FROM postings_staging")
    assert len(rows) == 1
    assert rows[0]["status"] == "received" and rows[0]["decided_at"] is None and rows[0]["posting_id"] is None
    assert rows[0]["payload"]["title"] == "Warehouse Team Lead (late shift)"
    assert stage(db_url, posting(), 42) != first  # another run is another staging row


def test_the_same_posting_seen_again_is_repromoted_and_keeps_its_saved_fields(db_url: str) -> None:
    pid = promote(db_url, posting(), 1)
    ok("save_summary.py", {"posting_id": str(pid), "summary": "Lead pickers on late shift."}, db_url)
    ok("save_skills.py", {"posting_id": str(pid), "skills": '["WMS", "leadership"]'}, db_url)
    ok("save_ihl.py", {"posting_id": str(pid), "score": "3", "verdict": "genuine"}, db_url)

    seen_again = posting(title="Warehouse Team Leader", url="https://jobs.example.org/t-1?v=2",
                         description=posting()["description"] + " Weekend work twice a month.",
                         summary="A summary from the feed that must not replace the saved one.")
    assert promote(db_url, seen_again, 2) == pid
    [row] = query(db_url, "SELECT * FROM postings")
    assert row["posting_id"] == pid
    assert (row["title"], row["url"]) == ("Warehouse Team Leader", "https://jobs.example.org/t-1?v=2")
    assert row["description"].endswith("twice a month.")
    assert row["extracted_summary"] == "Lead pickers on late shift."
    assert row["skill_keywords"] == ["WMS", "leadership"]
    assert (row["ihl_score"], row["ihl_verdict"]) == (3, "GENUINE")
    assert row["updated_at"] > row["created_at"]
    # Validating the same staging row twice (a duplicate delivery) changes nothing.
    staging_id = stage(db_url, seen_again, 3)
    once = ok("validate_posting.py", {"staging_id": str(staging_id)}, db_url)
    assert ok("validate_posting.py", {"staging_id": str(staging_id)}, db_url) == once


def test_first_use_by_concurrent_scripts_creates_the_tables_once(db_url: str) -> None:
    rows = [posting(source_id=f"C-{i}", url=f"https://jobs.example.org/c-{i}") for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda ir: stage(db_url, ir[1], 10 + ir[0]), enumerate(rows)))
    assert len(set(ids)) == 4


def test_two_runs_racing_for_one_url_cannot_both_win(db_url: str) -> None:
    a = stage(db_url, posting(source_id="R-1", url="https://jobs.example.org/race"), 1)
    b = stage(db_url, posting(source_id="R-2", url="https://jobs.example.org/race"), 2)
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda sid: ok("validate_posting.py", {"staging_id": str(sid)}, db_url), (a, b)))
    assert sorted(o["valid"] for o in outs) == [False, True]
    winner = next(o for o in outs if o["valid"])
    loser = next(o for o in outs if not o["valid"])
    assert f"url already belongs to posting {winner['source_id']}" in loser["reason"]
    assert query(db_url, "SELECT source_id FROM postings") == [{"source_id": winner["source_id"]}]


# -- the savers -----------------------------------------------------------------------

def test_each_saver_writes_its_field_and_returns_it(db_url: str) -> None:
    pid = promote(db_url, posting(), 1)
    before = ok("check_summary.py", {"posting_id": str(pid)}, db_url)
    assert before == {"posting_id": pid, "has_summary": False, "summary": ""}

    summary = "Role: warehouse team lead.\nCompany: Acme Logistics, Leeds — late shift, 12 pickers.\n"
    assert ok("save_summary.py", {"posting_id": f" {pid} ", "summary": f"\n  {summary}  "}, db_url) == \
        {"posting_id": pid, "chars": len(summary.strip())}
    assert ok("check_summary.py", {"posting_id": str(pid)}, db_url) == \
        {"posting_id": pid, "has_summary": True, "summary": summary.strip()}

    skills = json.dumps({"skills": [" Python ", "python", "", "SQL", "  ", "Forklift  licence", "sql", "WMS"]})
    assert ok("save_skills.py", {"posting_id": str(pid), "skills": skills}, db_url) == \
        {"posting_id": pid, "skills": ["Python", "SQL", "Forklift licence", "WMS"]}
    many = json.dumps([f"skill {i}" for i in range(80)])  # a bare array works too; at most 50 are kept
    assert ok("save_skills.py", {"posting_id": str(pid), "skills": many}, db_url)["skills"] == \
        [f"skill {i}" for i in range(50)]

    assert ok("save_ihl.py", {"posting_id": str(pid), "score": "7.0", "verdict": "likely_internal"}, db_url) == \
        {"posting_id": pid, "ihl_score": 7, "ihl_verdict": "LIKELY_INTERNAL"}

    [row] = query(db_url, "SELECT * FROM postings WHERE posting_id = %s", pid)
    assert row["extracted_summary"] == summary.strip()
    assert row["skill_keywords"] == [f"skill {i}" for i in range(50)]
    assert (row["ihl_score"], row["ihl_verdict"]) == (7, "LIKELY_INTERNAL")
    assert None not in (row["summary_saved_at"], row["skills_saved_at"], row["ihl_saved_at"])


@pytest.mark.parametrize(
    ("script", "data", "problem"),
    [
        ("save_ihl.py", {"score": "eleven", "verdict": "GENUINE"}, "score must be a whole number from 1 to 10"),
        ("save_ihl.py", {"score": "11", "verdict": "GENUINE"}, "score must be a whole number from 1 to 10"),
        ("save_ihl.py", {"score": "7.5", "verdict": "GENUINE"}, "score must be a whole number from 1 to 10"),
        ("save_ihl.py", {"score": "", "verdict": "GENUINE"}, "score must be a whole number from 1 to 10"),
        ("save_ihl.py", {"score": "7", "verdict": "MAYBE"}, "verdict must be one of GENUINE, BORDERLINE"),
        ("save_skills.py", {"skills": "Python, SQL"}, "skills is not JSON"),
        ("save_skills.py", {"skills": '{"tools": ["Python"]}'}, "skills must be a JSON array"),
        ("save_skills.py", {"skills": '["Python", 3]'}, "skills item 2"),
        ("save_summary.py", {"summary": "  \n "}, "summary is empty"),
        ("save_summary.py", {"summary": "x" * 20_001}, "more than 20,000"),
        ("save_summary.py", {"posting_id": "abc", "summary": "fine"}, "posting_id must be a positive integer"),
        ("check_summary.py", {"posting_id": "-3"}, "posting_id must be a positive integer"),
        ("validate_posting.py", {"staging_id": "12x"}, "staging_id must be a positive integer"),
        ("intake.py", {**posting(), "run_id": "", "batch_id": "1"}, "run_id must be a positive integer"),
    ],
)
def test_bad_input_fails_naming_the_problem_and_writes_nothing(
        shared_db: tuple[str, int], script: str, data: dict[str, str], problem: str) -> None:
    url, pid = shared_db
    before = query(url, "SELECT * FROM postings WHERE posting_id = %s", pid)
    failure = fails(script, {"posting_id": str(pid)} | data, url)
    assert failure.exit_code == 1
    assert problem in failure.message, failure.message
    assert "Traceback" not in failure.message  # one line; the traceback stays in stderr_tail
    assert query(url, "SELECT * FROM postings WHERE posting_id = %s", pid) == before


@pytest.mark.parametrize(
    ("script", "data"),
    [
        ("check_summary.py", {}),
        ("save_summary.py", {"summary": "A summary."}),
        ("save_skills.py", {"skills": '["SQL"]'}),
        ("save_ihl.py", {"score": "5", "verdict": "BORDERLINE"}),
    ],
)
def test_an_unknown_posting_is_a_failure(shared_db: tuple[str, int], script: str, data: dict[str, str]) -> None:
    failure = fails(script, {"posting_id": "999999"} | data, shared_db[0])
    assert failure.exit_code == 1
    assert "no posting 999999 in postings" in failure.message


def test_an_unknown_staging_row_is_a_failure(shared_db: tuple[str, int]) -> None:
    failure = fails("validate_posting.py", {"staging_id": "999999"}, shared_db[0])
    assert "no staging row 999999" in failure.message


def test_a_missing_input_key_is_bad_input() -> None:
    row = posting()
    del row["summary"]
    failure = fails("intake.py", row | {"run_id": "1", "batch_id": "1"}, None)
    assert failure.exit_code == 2 and "summary" in failure.message


# -- the database URL -----------------------------------------------------------------

@pytest.mark.parametrize(("script", "data"), [
    ("intake.py", posting() | {"run_id": "1", "batch_id": "1"}),
    ("save_ihl.py", {"posting_id": "1", "score": "5", "verdict": "GENUINE"}),
])
def test_no_database_url_is_a_clear_failure(script: str, data: dict[str, str]) -> None:
    failure = fails(script, data, None)
    assert failure.exit_code == 1
    assert "WAVEFARM_DATABASE_URL is not set" in failure.message


def test_an_unreachable_database_never_shows_its_password() -> None:
    url = "postgresql://farm:s3cret-pw-42@127.0.0.1:1/farm?connect_timeout=2"
    failure = fails("check_summary.py", {"posting_id": "1"}, url)
    assert failure.exit_code == 1
    assert "cannot connect to the database" in failure.message
    assert "s3cret-pw-42" not in failure.model_dump_json()


def test_the_scripts_role_writes_the_examples_tables_and_cannot_touch_the_farms(db_url):
    """deploy/scripts-role.sql, as the docs say to run it: the role scripts get may save
    postings and read or change nothing of the farm's."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    from tests.conftest import ROOT

    role = f"wf_scripts_{uuid.uuid4().hex[:8]}"
    sql = (ROOT / "deploy" / "scripts-role.sql").read_text().replace("wavefarm_scripts", role)
    sql = sql.replace(":password", "'role-test-pw'")
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute((ROOT / "examples" / "postings" / "scripts" / "schema.sql").read_text())
        owner.execute(sql)
    parts = urlsplit(db_url)
    as_role = urlunsplit(parts._replace(netloc=f"{role}:role-test-pw@{parts.hostname}:{parts.port or 5432}"))
    try:
        with psycopg.connect(as_role, autocommit=True) as scripts:
            scripts.execute("INSERT INTO postings (source_id, url, description) VALUES ('s1', 'http://x/1', 'd')")
            for forbidden in ("SELECT * FROM interactions", "DELETE FROM runs", "SELECT * FROM events",
                              "CREATE TABLE sneaky (x int)"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    scripts.execute(forbidden)
    finally:
        with psycopg.connect(db_url, autocommit=True) as owner:
            owner.execute(f"DROP OWNED BY {role}")
            owner.execute(f"DROP ROLE {role}")
