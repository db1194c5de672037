#!/usr/bin/env python3
"""The first step of the two-model chain: stages a posting (what a rerun must not redo)."""

from script_worker.actor import ScriptActor


class Stage(ScriptActor):
    required = ("title",)

    def process(self, data: dict) -> dict:
        return {"title": data["title"].strip()}


if __name__ == "__main__":
    Stage.main()
