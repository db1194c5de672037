"""The flagship job-posting workflow on a real model: Gemma 3 270M on llama.cpp's
OpenAI-compatible server, through the GPU worker's OpenAI backend, every alias of the
file pointed at it. A small base model says little that makes sense, so this checks
what must hold whatever it says: every run ends; every answer of a schema step either
satisfies its schema or is recorded as invalid_output with the reason; a valid posting
gets its summary, skills and score saved, or its run says why not; a rejected row has
its reason. Three postings: one with a summary already (skips the summary chain), one
without, one broken. The run takes a few minutes on two CPU cores."""

from __future__ import annotations

import csv

import pytest
from jsonschema import Draft202012Validator

from gpu_worker import local_model
from orchestrator import batches, catalog
from orchestrator.db.store import Store
from orchestrator.executor import LocalExecutor
from orchestrator.workflow import load_file
from tests.conftest import EXAMPLES
from tests.real_model.conftest import NOT_INSTALLED

pytestmark = pytest.mark.skipif(not local_model.available(), reason=NOT_INSTALLED)

POSTINGS = EXAMPLES / "postings"
PICK = {"DB-10231": "plain", "DB-10233": "has a summary", "DB-10287": "broken"}


def test_the_flagship_workflow_ends_every_run_on_a_real_model(conn, db_url, backend, tmp_path):
    rows = [r for r in csv.DictReader((POSTINGS / "postings.csv").open(encoding="utf-8")) if r["source_id"] in PICK]
    sample = tmp_path / "sample.csv"
    with sample.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    aliases = load_file(POSTINGS / "workflow.yaml").models
    workflow = load_file(POSTINGS / "workflow.yaml", POSTINGS / "scripts", {a: local_model.MODEL_NAME for a in aliases})
    catalog.store(Store(conn), workflow, "flagship on the local model")
    batch = batches.submit(Store(conn), sample, workflow.name, key_column="source_id").batch_id

    LocalExecutor(Store(conn), ai=backend, scripts_dir=POSTINGS / "scripts", concurrency=1,
                  script_env={"WAVEFARM_DATABASE_URL": db_url}).run(batch)

    runs = {r["source_id"]: r for r in conn.execute(
        "SELECT id, input->>'source_id' AS source_id, status, outcome, end_reason FROM runs WHERE batch_id = %s",
        (batch,)).fetchall()}
    assert all(r["status"] in ("completed", "failed") for r in runs.values())  # every run ended

    interactions = conn.execute(
        "SELECT run_id, step, kind, status, output, failure_class, failure_message FROM interactions"
        " WHERE batch_id = %s ORDER BY id", (batch,)).fetchall()
    assert any(i["kind"] == "ai" and i["status"] == "completed" for i in interactions)
    for i in interactions:
        step = workflow.step(i["step"])
        if i["kind"] == "ai" and i["status"] == "completed" and isinstance(step.format, dict):
            errors = list(Draft202012Validator(step.format).iter_errors(i["output"]))
            assert not errors, f"{i['step']}: {errors[0].message}"
        if i["status"] == "failed":
            assert i["failure_class"] and i["failure_message"], i  # a failure says what and where
            if i["kind"] == "ai" and step.format is not None:
                assert i["failure_class"] in ("invalid_output", "timeout"), i

    saved = {r["source_id"]: r for r in conn.execute("SELECT * FROM postings").fetchall()}
    for source_id in ("DB-10231", "DB-10233"):
        run = runs[source_id]
        if run["status"] == "completed":
            posting = saved[source_id]
            assert posting["extracted_summary"] and posting["skill_keywords"] is not None
            assert 1 <= posting["ihl_score"] <= 10
        else:
            assert run["end_reason"], run  # an explained failure
    assert (runs["DB-10287"]["status"], runs["DB-10287"]["outcome"]) == ("completed", "rejected")
    assert "company is empty" in runs["DB-10287"]["end_reason"]
    assert "DB-10287" not in saved
