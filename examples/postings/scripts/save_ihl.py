#!/usr/bin/env python3
"""Save the posting's IHL ("internal hire likelihood": how likely the public posting
is written for a pre-selected internal candidate).

Input: posting_id, score (a whole number 1..10: "7" and "7.0" are fine), verdict
(GENUINE, BORDERLINE or LIKELY_INTERNAL, any case; "likely internal" too).
Output: {"posting_id": N, "ihl_score": n, "ihl_verdict": "..."}
"""

import re

import postings_db
from script_worker.actor import ScriptActor

VERDICTS = ("GENUINE", "BORDERLINE", "LIKELY_INTERNAL")


def parse_score(value) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = repr(value)
    match = re.fullmatch(r"\s*([0-9]{1,2})(?:\.0*)?\s*", value) if isinstance(value, str) else None
    if match is None or not 1 <= int(match.group(1)) <= 10:
        raise ValueError(f"score must be a whole number from 1 to 10, got {value!r:.60}")
    return int(match.group(1))


def parse_verdict(value) -> str:
    verdict = re.sub(r"[\s-]+", "_", value.strip()).upper() if isinstance(value, str) else None
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {value!r:.60}")
    return verdict


class SaveIhl(ScriptActor):
    required = ("posting_id", "score", "verdict")

    def process(self, data: dict) -> dict:
        posting_id = postings_db.positive_int(data["posting_id"], "posting_id")
        score, verdict = parse_score(data["score"]), parse_verdict(data["verdict"])
        with postings_db.connect(self) as conn:
            postings_db.save_ihl(conn, posting_id, score, verdict)
        return {"posting_id": posting_id, "ihl_score": score, "ihl_verdict": verdict}


if __name__ == "__main__":
    SaveIhl.main()
