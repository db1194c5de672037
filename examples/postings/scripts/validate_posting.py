#!/usr/bin/env python3
"""Validate a staged posting and promote it into `postings`, or reject it.

Input: staging_id. A rejection is a normal result (exit 0) whose reason lists every
problem of the row, joined with "; ". Output:
  {"valid": true, "posting_id": N, "source_id": "..."}
  {"valid": false, "reason": "...", "source_id": "..."}
The same source_id seen again is the same posting: its text is updated and the
fields the pipeline saved (summary, skills, IHL) stay.
"""

from urllib.parse import urlsplit

import postings_db
from script_worker.actor import ScriptActor

MIN_DESCRIPTION = 80
MAX_TITLE = 200


def problems_of(row: dict) -> list[str]:
    problems = [f"{name} is empty" for name in ("source_id", "title", "company", "description", "url")
                if not row.get(name)]
    if len(row.get("title", "")) > MAX_TITLE:
        problems.append(f"title is {len(row['title'])} characters long, more than {MAX_TITLE}")
    if row.get("description") and len(row["description"]) < MIN_DESCRIPTION:
        problems.append(f"description is only {len(row['description'])} characters long, "
                        f"at least {MIN_DESCRIPTION} are needed")
    if row.get("url"):
        try:
            parts = urlsplit(row["url"])
            ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        except ValueError:  # e.g. a malformed IPv6 host
            ok = False
        if not ok:
            problems.append(f"url {row['url']!r} is not an http(s) URL")
    return problems


class ValidatePosting(ScriptActor):
    required = ("staging_id",)

    def process(self, data: dict) -> dict:
        staging_id = postings_db.positive_int(data["staging_id"], "staging_id")
        with postings_db.connect(self) as conn:
            staged = postings_db.lock_staged(conn, staging_id)
            row = {key: str(value or "").strip() for key, value in staged["payload"].items()}
            source_id = row.get("source_id") or staged["source_id"] or ""
            problems = problems_of(row)
            if not problems:
                fields = {name: row.get(name, "") for name in ("source_id", "url", "title", "company",
                                                               "location", "description")}
                fields["summary"] = row.get("summary") or None
                try:
                    posting_id = postings_db.upsert_posting(conn, fields)
                except postings_db.UrlTaken as taken:
                    problems.append(str(taken))
            if problems:
                reason = "; ".join(problems)
                postings_db.mark_rejected(conn, staging_id, reason)
                return {"valid": False, "reason": reason, "source_id": source_id}
            postings_db.mark_promoted(conn, staging_id, posting_id)
        return {"valid": True, "posting_id": posting_id, "source_id": source_id}


if __name__ == "__main__":
    ValidatePosting.main()
