#!/usr/bin/env python3
"""Does the posting already have a summary? (Then the workflow skips the AI chain.)

Input: posting_id. Output: {"posting_id": N, "has_summary": bool, "summary": "..." or ""}
"""

import postings_db
from script_worker.actor import ScriptActor


class CheckSummary(ScriptActor):
    required = ("posting_id",)

    def process(self, data: dict) -> dict:
        posting_id = postings_db.positive_int(data["posting_id"], "posting_id")
        with postings_db.connect(self) as conn:
            summary = (postings_db.get_summary(conn, posting_id) or "").strip()
        return {"posting_id": posting_id, "has_summary": bool(summary), "summary": summary}


if __name__ == "__main__":
    CheckSummary.main()
