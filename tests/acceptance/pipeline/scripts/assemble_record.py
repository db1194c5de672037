#!/usr/bin/env python3
"""Assemble the final record of one posting from the outputs of earlier steps."""

import json

from script_worker.actor import ScriptActor


class AssembleRecord(ScriptActor):
    required = ("posting_id", "summary", "grade", "skills")

    def process(self, data: dict) -> dict:
        # An AI step's output is text; with a JSON format it is JSON text.
        skills = json.loads(data["skills"])["skills"]
        return {
            "posting_id": data["posting_id"],
            "extracted_summary": data["summary"].strip(),
            "skill_keywords": skills,
            "passed": "[PASS]" in data["grade"],
        }


if __name__ == "__main__":
    AssembleRecord.main()
