"""The orchestrator's record of its workers, kept from their heartbeats."""

from __future__ import annotations

from psycopg.types.json import Jsonb

from common.messages import WorkerStatus
from orchestrator.db.store import Store

# Heartbeats come every 10 s; a worker silent for 30 s no longer counts.
STALE_S = 30.0


def record(store: Store, statuses: list[WorkerStatus]) -> None:
    with store.transaction():
        store.record_workers([{**s.model_dump(exclude={"v"}), "digests": Jsonb(s.digests),
                               "resident": Jsonb([r.model_dump(mode="json") for r in s.resident])}
                              for s in statuses])
