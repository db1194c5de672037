"""Small builders for integration tests that need rows without a whole batch."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from orchestrator import catalog
from orchestrator.db.store import Store
from orchestrator.workflow import load_text

MINIMAL = """
name: minimal
steps:
  - name: only
    model: "m:1"
    prompt: "hello {{ input.x }}"
"""


def make_interaction(conn: psycopg.Connection, *, status: str = "pending", attempt: int = 1) -> int:
    """One interaction in one run in one batch, in the given state."""
    stored = catalog.store(Store(conn), load_text(MINIMAL), MINIMAL)
    with conn.transaction():
        batch = conn.execute(
            "INSERT INTO batches (workflow_id, workflow_name, source_name, source_digest)"
            " VALUES (%s, 'minimal', 't.csv', gen_random_uuid()::text) RETURNING id",
            (stored.id,),
        ).fetchone()["id"]
        run = conn.execute(
            "INSERT INTO runs (batch_id, workflow_id, workflow_name, row_key, line, input)"
            " VALUES (%s, %s, 'minimal', gen_random_uuid()::text, 2, %s) RETURNING id",
            (batch, stored.id, Jsonb({"x": "1"})),
        ).fetchone()["id"]
        return conn.execute(
            "INSERT INTO interactions (run_id, batch_id, step, kind, actor, visit, status, attempt, max_attempts,"
            " timeout_s, input) VALUES (%s, %s, 'only', 'ai', 'm:1', 1, %s, %s, 3, 30, %s) RETURNING id",
            (run, batch, status, attempt, Jsonb({"prompt": "hello 1"})),
        ).fetchone()["id"]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path
