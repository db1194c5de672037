"""Workflow versions in the database: store a new version only when it changed,
and hand out parsed versions by id (immutable, so cached per process)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from common.errors import NotFound
from orchestrator.db.store import Store
from orchestrator.workflow import Workflow


@dataclass(frozen=True)
class StoredWorkflow:
    id: int
    name: str
    version: int
    workflow: Workflow
    created: bool = False


def digest(workflow: Workflow) -> str:
    """What makes a new version: everything that decides how a row runs. The description
    does not: a reworded description runs nothing again."""
    canonical = json.dumps(workflow.model_dump(mode="json", exclude={"description"}), sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def store(db: Store, workflow: Workflow, source: str) -> StoredWorkflow:
    """Store `workflow` as a new version unless its latest version is identical."""
    stored, created = db.insert_workflow_version(workflow.name, digest(workflow), workflow.model_dump(mode="json"),
                                                 source)
    return StoredWorkflow(stored.id, workflow.name, stored.version, workflow, created=created)


def latest(db: Store, name: str) -> StoredWorkflow:
    row = db.latest_workflow(name)
    if row is None:
        raise NotFound(f"no workflow named {name!r} is loaded (orchestrator workflow load FILE)")
    return StoredWorkflow(row.id, name, row.version, Workflow.model_validate(row.definition))


def by_id(db: Store, workflow_id: int) -> Workflow:
    row = db.workflow(workflow_id)
    if row is None:
        raise NotFound(f"workflow version {workflow_id} does not exist")
    return Workflow.model_validate(row.definition)


class WorkflowCache:
    """Parsed workflow versions by id. Versions never change once stored."""

    def __init__(self) -> None:
        self._by_id: dict[int, Workflow] = {}

    def get(self, db: Store, workflow_id: int) -> Workflow:
        wf = self._by_id.get(workflow_id)
        if wf is None:
            wf = self._by_id[workflow_id] = by_id(db, workflow_id)
        return wf
