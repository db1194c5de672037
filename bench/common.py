"""Shared by the benchmarks: a scratch database and a postings CSV of any size."""

from __future__ import annotations

import csv
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql

from orchestrator.db import connect
from orchestrator.db.migrate import upgrade

ADMIN_URL = os.environ.get("WAVEFARM_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def scratch_database() -> Iterator[str]:
    name = f"wavefarm_bench_{uuid.uuid4().hex[:8]}"
    base = ADMIN_URL.rpartition("/")[0]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"{base}/{name}"
    try:
        with connect(url) as conn:
            upgrade(conn)
        yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def write_postings(path: Path, rows: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["posting_id", "title", "company", "description"])
        for i in range(rows):
            w.writerow([str(i), f"Data analyst {i}", f"Company {i % 97}",
                        f"Posting {i}: we need SQL, Python and reporting. " * 6])
    return path
