"""Reading a batch or a run back: plain data, shared by the table and --json views."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg

from common.errors import NotFound
from common.queues import queue_for
from orchestrator import catalog
from orchestrator.db import Q
from orchestrator.states import Status

STATUSES = [s.value for s in Status]


def list_batches(conn: psycopg.Connection) -> list[dict]:
    return conn.execute(Q["list_batches"]).fetchall()


def farm_status(conn: psycopg.Connection, *, stale_s: float) -> dict[str, Any]:
    """Queues (waiting, in flight, live slots) and workers (from their heartbeats).

    A queue with work and no live worker is flagged: that is a run that would
    otherwise stall in silence, the seeds' worst failure.
    """
    queues: dict[str, dict] = {}

    def queue(name: str) -> dict:
        return queues.setdefault(name, {"queue": name, "actors": [], "pending": 0, "dispatched": 0,
                                        "slots": 0, "workers": 0})

    for r in conn.execute(Q["open_by_actor"]):
        q = queue(queue_for(r["kind"], r["actor"]))
        q["actors"].append(r["actor"])
        q["pending"] += r["pending"]
        q["dispatched"] += r["dispatched"]
    for r in conn.execute(Q["live_capacity"], {"stale_s": stale_s}):
        q = queue(r["queue"])
        q["slots"], q["workers"] = r["slots"], r["workers"]
    for q in queues.values():
        q["problem"] = ("no live worker consumes this queue" if q["pending"] + q["dispatched"] and not q["workers"]
                        else None)
    return {
        "queues": sorted(queues.values(), key=lambda q: q["queue"]),
        "workers": conn.execute(Q["list_workers"], {"stale_s": stale_s}).fetchall(),
    }


def require_batch(conn: psycopg.Connection, batch_id: int) -> dict:
    batch = conn.execute(Q["batch_by_id"], {"id": batch_id}).fetchone()
    if batch is None:
        raise NotFound(f"no batch {batch_id} (orchestrator status lists the batches)")
    return batch


def batch_status(conn: psycopg.Connection, batch_id: int, *, rejects_limit: int = 20) -> dict[str, Any]:
    batch = require_batch(conn, batch_id)
    runs = {r["status"]: r["n"] for r in conn.execute(Q["batch_run_counts"], {"batch_id": batch_id})}
    steps: dict[tuple, dict] = {}
    models: dict[str, dict] = defaultdict(lambda: dict.fromkeys(STATUSES, 0))
    for r in conn.execute(Q["batch_interaction_counts"], {"batch_id": batch_id}):
        row = steps.setdefault(
            (r["step"], r["kind"], r["actor"]),
            {"step": r["step"], "kind": r["kind"], "actor": r["actor"], **dict.fromkeys(STATUSES, 0)},
        )
        row[r["status"]] += r["n"]
        if r["kind"] == "ai":
            models[r["actor"]][r["status"]] += r["n"]
    return {
        "batch": {
            "id": batch["id"],
            "workflow": batch["workflow_name"],
            "workflow_version": batch["workflow_version"],
            "source": batch["source_name"],
            "created_at": batch["created_at"].isoformat(),
            "rows_good": batch["rows_good"],
            "rows_rejected": batch["rows_rejected"],
            "rows_empty": batch["rows_empty"],
        },
        "runs": {s: runs.get(s, 0) for s in ("running", "completed", "failed", "cancelled")},
        "steps": sorted(steps.values(), key=lambda r: (r["step"], r["actor"])),
        "models": [{"model": m, **counts} for m, counts in sorted(models.items())],
        "failures": conn.execute(Q["batch_failure_counts"], {"batch_id": batch_id}).fetchall(),
        "failed_runs": conn.execute(Q["batch_failed_run_reasons"], {"batch_id": batch_id, "limit": 10}).fetchall(),
        "rejects": conn.execute(Q["batch_rejects"], {"batch_id": batch_id, "limit": rejects_limit}).fetchall(),
    }


def run_story(conn: psycopg.Connection, run_id: int) -> dict[str, Any]:
    run = conn.execute(Q["run_by_id"], {"id": run_id}).fetchone()
    if run is None:
        raise NotFound(f"no run {run_id}")
    return {
        "run": run,
        "interactions": conn.execute(Q["run_interactions"], {"run_id": run_id}).fetchall(),
        "events": conn.execute(Q["run_events"], {"run_id": run_id}).fetchall(),
    }


def batch_progress(conn: psycopg.Connection, batch_id: int) -> dict[str, int]:
    return conn.execute(Q["batch_progress"], {"batch_id": batch_id}).fetchone()


def batch_steps(conn: psycopg.Connection, batch_id: int) -> list[str]:
    """The step names of the workflow version a batch runs, in file order."""
    batch = require_batch(conn, batch_id)
    with conn.cursor() as cur:
        return [s.name for s in catalog.by_id(cur, batch["workflow_id"]).steps]


def export_batch(conn: psycopg.Connection, batch_id: int) -> Iterator[dict]:
    """One record per run, streamed with a server-side cursor (memory flat in batch size)."""
    require_batch(conn, batch_id)
    with conn.transaction(), conn.cursor(name="wavefarm_export") as cur:
        cur.itersize = 2000
        cur.execute(Q["export_batch"], {"batch_id": batch_id})
        for row in cur:
            yield {
                "run_id": row["run_id"],
                "line": row["line"],
                "row": row["row"],
                "status": row["status"],
                "end_reason": row["end_reason"],
                "outputs": row["outputs"],
            }
