#!/usr/bin/env python3
"""Intake: stage one CSV row of the feed for its run.

Input (all text, some may be empty): run_id, batch_id, source_id, url, title, company,
location, description, summary. Upserts the run's staging row (a retried intake
replaces it and sets it back to 'received'); validation decides later.
Output: {"staging_id": N, "source_id": "..."}
"""

import postings_db
from script_worker.actor import ScriptActor

FIELDS = ("source_id", "url", "title", "company", "location", "description", "summary")


class Intake(ScriptActor):
    required = ("run_id", "batch_id", *FIELDS)

    def process(self, data: dict) -> dict:
        run_id = postings_db.positive_int(data["run_id"], "run_id")
        batch_id = postings_db.optional_int(data["batch_id"], "batch_id")
        # The raw row as received, stripped only of surrounding whitespace: validation
        # judges it, and the staging row keeps it for whoever reads a rejection.
        payload = {name: postings_db.text(data[name], name) for name in FIELDS}
        with postings_db.connect(self) as conn:  # an empty source_id is staged too: validation rejects it
            staging_id = postings_db.upsert_staging(
                conn, run_id=run_id, batch_id=batch_id, source_id=payload["source_id"] or None, payload=payload)
        return {"staging_id": staging_id, "source_id": payload["source_id"]}


if __name__ == "__main__":
    Intake.main()
