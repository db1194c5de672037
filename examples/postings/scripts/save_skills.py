#!/usr/bin/env python3
"""Save the posting's skill keywords.

Input: posting_id, skills: JSON text of an array of strings or of {"skills": [...]}
(what an AI step with a JSON format answers). Normalised: whitespace collapsed,
empty ones dropped, case-insensitive duplicates dropped (the first spelling stays),
at most 50. Output: {"posting_id": N, "skills": [...]}
"""

import json

import postings_db
from script_worker.actor import ScriptActor

MAX_SKILLS = 50


def parse_skills(value) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"skills is not JSON ({exc}): {value[:60]!r}") from None
    if isinstance(value, dict) and "skills" in value:
        value = value["skills"]
    if not isinstance(value, list):
        raise ValueError('skills must be a JSON array of strings or an object {"skills": [...]}, '
                         f"got a JSON {type(value).__name__}")
    skills, seen = [], set()
    for i, item in enumerate(value, 1):
        if not isinstance(item, str):
            raise ValueError(f"skills item {i} is a JSON {type(item).__name__}, not a string: {item!r:.60}")
        skill = " ".join(item.split())
        if skill and skill.casefold() not in seen:
            seen.add(skill.casefold())
            skills.append(skill)
    return skills[:MAX_SKILLS]


class SaveSkills(ScriptActor):
    required = ("posting_id", "skills")

    def process(self, data: dict) -> dict:
        posting_id = postings_db.positive_int(data["posting_id"], "posting_id")
        skills = parse_skills(data["skills"])
        with postings_db.connect(self) as conn:
            postings_db.save_skills(conn, posting_id, skills)
        return {"posting_id": posting_id, "skills": skills}


if __name__ == "__main__":
    SaveSkills.main()
