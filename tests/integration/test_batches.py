"""CSV in: one run per good row, first interaction rendered, bad rows kept with their
line and reason, re-submission idempotent, workflow versions pinned."""

from __future__ import annotations

import pytest

from common.errors import CsvFileError, NotFound
from orchestrator import batches, catalog
from orchestrator.db.store import Store
from orchestrator.workflow import load_text
from tests.integration.helpers import MINIMAL, write_csv

WF = """
name: posts
steps:
  - name: summarise
    model: "gemma3:1b"
    prompt: "Summarise {{ input.title }}: {{ input.body }}"
"""


@pytest.fixture
def workflow(conn):
    return catalog.store(Store(conn), load_text(WF), WF)


def count(conn, table: str, batch_id: int) -> int:
    queries = {
        "runs": "SELECT count(*) AS n FROM runs WHERE batch_id = %s",
        "interactions": "SELECT count(*) AS n FROM interactions WHERE batch_id = %s",
    }
    return conn.execute(queries[table], (batch_id,)).fetchone()["n"]


def test_ten_thousand_rows_become_runs_with_rendered_prompts(conn, tmp_path, workflow):
    path = write_csv(tmp_path / "p.csv", ["title", "body"], [[f"t{i}", f"body, with \"quotes\"\nand lines {i}"] for i in range(10_000)])
    submission = batches.submit(Store(conn), path, "posts")
    assert submission.runs_created == 10_000 and submission.new_batch
    assert count(conn, "runs", submission.batch_id) == 10_000
    assert count(conn, "interactions", submission.batch_id) == 10_000
    row = conn.execute(
        "SELECT i.input, i.status, r.line FROM interactions i JOIN runs r ON r.id = i.run_id"
        " WHERE r.input->>'title' = 't9999'").fetchone()
    assert row["status"] == "pending"
    assert row["input"]["prompt"] == 'Summarise t9999: body, with "quotes"\nand lines 9999'
    assert row["line"] == 2 + 9999 * 2  # each record spans two physical lines


def test_resubmitting_the_same_file_creates_nothing_twice(conn, tmp_path, workflow):
    path = write_csv(tmp_path / "p.csv", ["title", "body"], [[f"t{i}", "b"] for i in range(50)])
    first = batches.submit(Store(conn), path, "posts")
    again = batches.submit(Store(conn), path, "posts")
    assert again.batch_id == first.batch_id and not again.new_batch
    assert (again.runs_created, again.runs_existing) == (0, 50)
    assert count(conn, "runs", first.batch_id) == 50 and count(conn, "interactions", first.batch_id) == 50


def test_overlapping_files_with_a_key_column_do_not_rerun_rows(conn, tmp_path, workflow):
    a = write_csv(tmp_path / "a.csv", ["id", "title", "body"], [[str(i), "t", "b"] for i in range(10)])
    b = write_csv(tmp_path / "b.csv", ["id", "title", "body"], [[str(i), "t", "b2"] for i in range(5, 15)])
    batches.submit(Store(conn), a, "posts", key_column="id")
    second = batches.submit(Store(conn), b, "posts", key_column="id")
    assert (second.runs_created, second.runs_existing) == (5, 5)
    assert conn.execute("SELECT count(*) AS n FROM runs").fetchone()["n"] == 15


def test_bad_rows_are_kept_with_line_and_reason_and_the_rest_goes_on(conn, tmp_path, workflow):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"title,body\nok1,fine\nonly-one-field\nbad\xe9byte,x\nok2,\"multi\nline\"\nok1,fine\n")
    submission = batches.submit(Store(conn), path, "posts")
    assert submission.runs_created == 2
    rejects = conn.execute("SELECT line, reason, raw FROM batch_rejects WHERE batch_id = %s ORDER BY line",
                           (submission.batch_id,)).fetchall()
    assert [r["line"] for r in rejects] == [3, 4, 7]
    assert "1 field" in rejects[0]["reason"]
    assert "UTF-8" in rejects[1]["reason"]
    assert "duplicate of line 2" in rejects[2]["reason"]
    assert rejects[0]["raw"].startswith("only-one-field")
    batch = conn.execute("SELECT rows_good, rows_rejected FROM batches WHERE id = %s", (submission.batch_id,)).fetchone()
    assert batch == {"rows_good": 2, "rows_rejected": 3}


def test_missing_columns_refuse_the_file_before_any_batch_exists(conn, tmp_path, workflow):
    path = write_csv(tmp_path / "p.csv", ["title", "text"], [["t", "b"]])
    with pytest.raises(CsvFileError, match="body"):
        batches.submit(Store(conn), path, "posts")
    assert conn.execute("SELECT count(*) AS n FROM batches").fetchone()["n"] == 0


def test_unknown_workflow_is_named(conn, tmp_path):
    path = write_csv(tmp_path / "p.csv", ["title", "body"], [["t", "b"]])
    with pytest.raises(NotFound, match="posts"):
        batches.submit(Store(conn), path, "posts")


def test_runs_pin_the_workflow_version_they_started_with(conn, tmp_path, workflow):
    first = batches.submit(Store(conn), write_csv(tmp_path / "a.csv", ["title", "body"], [["a", "b"]]), "posts")
    v2 = catalog.store(Store(conn), load_text(WF.replace("Summarise", "Sum up")), WF)
    assert v2.version == 2 and v2.created
    assert not catalog.store(Store(conn), load_text(WF.replace("Summarise", "Sum up")), WF).created
    second = batches.submit(Store(conn), write_csv(tmp_path / "b.csv", ["title", "body"], [["c", "d"]]), "posts")
    pinned = conn.execute(
        "SELECT r.batch_id, w.version, i.input->>'prompt' AS prompt FROM runs r JOIN workflows w ON w.id = r.workflow_id"
        " JOIN interactions i ON i.run_id = r.id ORDER BY r.id").fetchall()
    assert pinned == [
        {"batch_id": first.batch_id, "version": 1, "prompt": "Summarise a: b"},
        {"batch_id": second.batch_id, "version": 2, "prompt": "Sum up c: d"},
    ]


def test_serve_is_told_of_a_submission_and_of_a_control_and_of_nothing_else(db_url, tmp_path):
    """A submitted batch wakes serve (Postgres NOTIFY) instead of waiting for its next
    idle tick, and a pause tells it to tell the workers; with nothing done there is
    nothing to wake it."""
    import time

    from common.celery_app import make_app
    from orchestrator import controls
    from orchestrator.db import connect, open_pool
    from orchestrator.service import Service

    def told(service) -> list[str]:
        until = time.monotonic() + 5
        while not (notes := service._notifications()):
            assert time.monotonic() < until, "serve was never told"
            time.sleep(0.01)
        return notes

    pool = open_pool(db_url, size=2)
    try:
        service = Service(pool, make_app("amqp://guest:guest@127.0.0.1:1//", batched_publish=True))
        assert service._notifications() == []
        with connect(db_url) as conn:
            catalog.store(Store(conn), load_text(MINIMAL), MINIMAL)
            submitted = batches.submit(Store(conn), write_csv(tmp_path / "in.csv", ["x"], [["1"], ["2"]]), "minimal")
        assert told(service) == [str(submitted.batch_id)]
        assert service._notifications() == []  # told once
        with connect(db_url) as conn:
            controls.pause(Store(conn), submitted.batch_id)
        assert told(service) == ["controls"]
        service._release()
    finally:
        pool.close()


@pytest.mark.parametrize("body", ["", "\n\n,\n"], ids=["header-only", "header-and-empty-rows"])
def test_a_file_with_no_rows_is_said_and_makes_no_batch(conn, tmp_path, workflow, body):
    path = tmp_path / "empty.csv"
    path.write_text("title,body\n" + body)
    with pytest.raises(CsvFileError, match="empty.csv has no rows after its header"):
        batches.submit(Store(conn), path, "posts")
    assert conn.execute("SELECT count(*) AS n FROM batches").fetchone()["n"] == 0


def test_after_a_new_version_the_same_file_makes_a_new_batch_that_runs_its_rows_again(conn, tmp_path, workflow):
    path = write_csv(tmp_path / "a.csv", ["title", "body"], [["a", "b"], ["c", "d"]])
    first = batches.submit(Store(conn), path, "posts")
    assert batches.submit(Store(conn), path, "posts").runs_created == 0  # same version: nothing new
    # A reworded description is no new version: the file still adds nothing.
    described = load_text(WF.replace("name: posts", "name: posts\ndescription: summaries of postings"))
    assert not catalog.store(Store(conn), described, WF).created
    v2 = catalog.store(Store(conn), load_text(WF.replace("Summarise", "Sum up")), WF)
    assert v2.created and v2.version == 2
    again = batches.submit(Store(conn), path, "posts")
    assert again.new_batch and again.batch_id != first.batch_id and again.workflow_version == 2
    assert (again.runs_created, again.runs_again, again.runs_existing) == (2, 2, 0)
    prompts = conn.execute("SELECT input->>'prompt' AS p FROM interactions WHERE batch_id = %s ORDER BY id",
                           (again.batch_id,)).fetchall()
    assert [r["p"] for r in prompts] == ["Sum up a: b", "Sum up c: d"]
