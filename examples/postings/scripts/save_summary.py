#!/usr/bin/env python3
"""Save the posting's extracted summary.

Input: posting_id, summary (stripped; not empty; at most 20,000 characters).
Output: {"posting_id": N, "chars": n}
"""

import postings_db
from script_worker.actor import ScriptActor

MAX_CHARS = 20_000


class SaveSummary(ScriptActor):
    required = ("posting_id", "summary")

    def process(self, data: dict) -> dict:
        posting_id = postings_db.positive_int(data["posting_id"], "posting_id")
        summary = postings_db.text(data["summary"], "summary")
        if not summary:
            raise ValueError("summary is empty")
        if len(summary) > MAX_CHARS:
            raise ValueError(f"summary is {len(summary):,} characters long, more than {MAX_CHARS:,}")
        with postings_db.connect(self) as conn:
            postings_db.save_summary(conn, posting_id, summary)
        return {"posting_id": posting_id, "chars": len(summary)}


if __name__ == "__main__":
    SaveSummary.main()
