"""The orchestrator's record of its workers, kept from their heartbeats."""

from __future__ import annotations

import psycopg

from common.messages import WorkerStatus
from orchestrator.db import Q


def record(conn: psycopg.Connection, statuses: list[WorkerStatus]) -> None:
    with conn.transaction(), conn.cursor() as cur:
        for s in statuses:
            cur.execute(Q["upsert_worker"], s.model_dump())
