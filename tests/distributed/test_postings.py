"""The flagship job-posting pipeline on the farm: two GPU hosts serving different models,
a script worker that saves to the postings tables, RabbitMQ between them.

The seeds' success criterion: after the batch, every valid posting has its summary,
skills and internal-hire score saved; every rejected row has its reason; and
`orchestrator show` tells each posting's story."""

from __future__ import annotations

import csv
import subprocess

from tests.distributed.farm import BIN
from tests.model_server import ModelServer
from tests.conftest import EXAMPLES

POSTINGS = EXAMPLES / "postings"
BROKEN = {"DB-10283": "title is empty", "DB-10284": "is not an http(s) URL",
          "DB-10285": "url already belongs to posting", "DB-10286": "at least 80 are needed",
          "DB-10287": "company is empty"}


def test_the_posting_pipeline_saves_every_field_of_every_valid_posting(farm):
    rows = list(csv.DictReader((POSTINGS / "postings.csv").open(encoding="utf-8")))
    valid = {r["source_id"] for r in rows} - set(BROKEN)
    # The seeds' fleet, split over two hosts: each model on one host only.
    with ModelServer(models=["gemma3:1b", "phi3"], latency=0.02, slots=4) as a, \
            ModelServer(models=["qwen2.5:7b", "gemma2"], latency=0.02, slots=4) as b:
        farm.serve()
        farm.gpu("gpu-a", a.url, max_loaded=2)  # each host holds both its models
        farm.gpu("gpu-b", b.url, max_loaded=2)
        farm.scripts(directory=POSTINGS / "scripts", database=True)
        farm.wait_workers("gpu-a", "gpu-b", "scripts")
        batch = farm.submit(POSTINGS / "postings.csv", POSTINGS / "workflow.yaml", POSTINGS / "scripts", key="source_id")
        farm.wait_batch(batch, timeout=300)

    db = farm.db
    saved = {r["source_id"]: r for r in db.execute("SELECT * FROM postings").fetchall()}
    assert set(saved) == valid
    for source_id, p in saved.items():
        assert p["extracted_summary"] and p["summary_saved_at"], source_id
        assert p["skill_keywords"] and all(isinstance(s, str) and s for s in p["skill_keywords"]), source_id
        assert 1 <= p["ihl_score"] <= 10 and p["ihl_verdict"] in {"GENUINE", "BORDERLINE", "LIKELY_INTERNAL"}, source_id

    runs = {r["key"]: r for r in db.execute(
        "SELECT id, input->>'source_id' AS key, status, outcome, end_reason FROM runs WHERE batch_id = %s", (batch,)).fetchall()}
    assert {k for k, r in runs.items() if r["status"] == "completed" and r["outcome"] is None} == valid
    staged = {r["source_id"]: r for r in db.execute("SELECT source_id, status, reject_reason FROM postings_staging")}
    for source_id, reason in BROKEN.items():
        assert staged[source_id]["status"] == "rejected" and reason in staged[source_id]["reject_reason"]
        # Rejected on purpose: the run completed with the outcome `rejected`, and says why.
        assert (runs[source_id]["status"], runs[source_id]["outcome"]) == ("completed", "rejected")
        assert reason in runs[source_id]["end_reason"]

    # Postings that came with a summary skipped the AI summary chain and kept theirs.
    presummarised = {r["source_id"]: r["summary"] for r in rows if r["summary"] and r["source_id"] in valid}
    assert presummarised
    for source_id, summary in presummarised.items():
        steps = {r["step"] for r in db.execute("SELECT step FROM interactions WHERE run_id = %s",
                                               (runs[source_id]["id"],))}
        assert "extract" not in steps and "save_ihl" in steps
        assert saved[source_id]["extracted_summary"] == summary.strip()

    # Every AI call went to the host that has its model: none failed, none was refused.
    failed = db.execute("SELECT count(*) AS n FROM interactions WHERE batch_id = %s AND status <> 'completed'",
                        (batch,)).fetchone()["n"]
    assert failed == 0

    # One posting's story, as a person would read it.
    story_of = next(k for k in sorted(valid) if k not in presummarised)
    story = subprocess.run([str(BIN / "orchestrator"), "show", str(runs[story_of]["id"])], capture_output=True,
                           text=True, env=farm.env(WAVEFARM_DATABASE_URL=farm.db_url), timeout=60)
    assert story.returncode == 0, story.stderr
    for step in ("intake", "validate", "check_summary", "extract", "grade", "standardise", "save_summary",
                 "extract_skills", "save_skills", "ihl_analyst", "ihl_skeptic", "ihl_hr", "save_ihl"):
        assert step in story.stdout
    assert "completed" in story.stdout and "branch_taken" in story.stdout
