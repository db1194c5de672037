"""`orchestrator db upgrade`: apply numbered migrations/NNNN_*.sql in order, once each.

Each migration runs in its own transaction under an advisory lock, so two
upgrades started at once apply each file exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

import psycopg

from orchestrator.db.queries import Q

_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
_LOCK_KEY = 0x57A7EFA5  # any constant: it only has to be the same in every upgrader


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    found = []
    for entry in files("orchestrator.db").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..n without gaps: {versions}")
    return found


def upgrade(conn: psycopg.Connection) -> list[Migration]:
    """Apply what is missing; return what was applied (empty when up to date)."""
    applied_now = []
    with conn.transaction():
        conn.execute(Q["create_migrations_table"])
    for migration in available():
        with conn.transaction():
            conn.execute(Q["lock_migrations"], {"key": _LOCK_KEY})
            done = conn.execute(Q["migration_applied"], {"version": migration.version}).fetchone()
            if done:
                continue
            conn.execute(migration.sql)
            conn.execute(Q["record_migration"], {"version": migration.version, "name": migration.name})
            applied_now.append(migration)
    return applied_now


def current_version(conn: psycopg.Connection) -> int:
    row = conn.execute(Q["schema_version"]).fetchone()
    return row["version"] if row else 0
