"""The orchestrator's record of its workers, kept from their heartbeats."""

from __future__ import annotations

import psycopg

from common.messages import WorkerStatus
from orchestrator.db import Q

# Heartbeats come every 10 s; a worker silent for 30 s no longer counts.
STALE_S = 30.0


def record(conn: psycopg.Connection, statuses: list[WorkerStatus]) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(Q["upsert_worker"], [s.model_dump() for s in statuses])
