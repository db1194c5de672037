#!/usr/bin/env python3
"""Fan-in of the screening workflow: one record from the tags and the review."""

import json

from script_worker.actor import ScriptActor


class Collect(ScriptActor):
    required = ("title", "tags", "review")

    def process(self, data: dict) -> dict:
        return {"title": data["title"], "tags": json.loads(data["tags"])["tags"], "passed": "[PASS]" in data["review"]}


if __name__ == "__main__":
    Collect.main()
