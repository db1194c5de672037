"""Workflow versions in the database: store a new version only when it changed,
and hand out parsed versions by id (immutable, so cached per process)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from common.errors import NotFound
from orchestrator.db import Q
from orchestrator.workflow import Workflow


@dataclass(frozen=True)
class StoredWorkflow:
    id: int
    name: str
    version: int
    workflow: Workflow
    created: bool = False


def digest(workflow: Workflow) -> str:
    canonical = json.dumps(workflow.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def store(conn: psycopg.Connection, workflow: Workflow, source: str) -> StoredWorkflow:
    """Store `workflow` as a new version unless its latest version is identical."""
    definition = workflow.model_dump(mode="json")
    wf_digest = digest(workflow)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(Q["lock_workflow_name"], {"name": workflow.name})
        cur.execute(Q["workflow_latest"], {"name": workflow.name})
        latest = cur.fetchone()
        if latest and latest["digest"] == wf_digest:
            return StoredWorkflow(latest["id"], workflow.name, latest["version"], workflow)
        cur.execute(
            Q["insert_workflow"],
            {"name": workflow.name, "digest": wf_digest, "definition": Jsonb(definition), "source": source},
        )
        row = cur.fetchone()
    return StoredWorkflow(row["id"], workflow.name, row["version"], workflow, created=True)


def latest(conn: psycopg.Connection, name: str) -> StoredWorkflow:
    row = conn.execute(Q["workflow_latest"], {"name": name}).fetchone()
    if row is None:
        raise NotFound(f"no workflow named {name!r} is loaded (orchestrator workflow load FILE)")
    return StoredWorkflow(row["id"], name, row["version"], Workflow.model_validate(row["definition"]))


def by_id(cur: psycopg.Cursor, workflow_id: int) -> Workflow:
    cur.execute(Q["workflow_by_id"], {"id": workflow_id})
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"workflow version {workflow_id} does not exist")
    return Workflow.model_validate(row["definition"])


class WorkflowCache:
    """Parsed workflow versions by id. Versions never change once stored."""

    def __init__(self) -> None:
        self._by_id: dict[int, Workflow] = {}

    def get(self, cur: psycopg.Cursor, workflow_id: int) -> Workflow:
        wf = self._by_id.get(workflow_id)
        if wf is None:
            wf = self._by_id[workflow_id] = by_id(cur, workflow_id)
        return wf
