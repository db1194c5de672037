"""Connections and the pool. Rows come back as dicts."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from common.errors import DatabaseUnavailable
from common.settings import redact_url


def connect(url: str) -> psycopg.Connection:
    """Autocommit: every unit of work opens its own `conn.transaction()` block."""
    try:
        return psycopg.connect(url, row_factory=dict_row, autocommit=True)
    except psycopg.OperationalError as exc:
        # psycopg's message can quote the connection string; say only where.
        raise DatabaseUnavailable(
            f"cannot connect to the database at {redact_url(url)}: {_reason(exc)}"
        ) from None


def open_pool(url: str, *, size: int = 8) -> ConnectionPool:
    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={"row_factory": dict_row, "autocommit": True},
        # After a Postgres restart every pooled connection is dead: test each one on
        # checkout, so the caller gets a fresh one instead of an error.
        check=ConnectionPool.check_connection,
        open=False,
    )
    try:
        pool.open(wait=True, timeout=10)
    except psycopg.OperationalError as exc:
        pool.close()
        raise DatabaseUnavailable(f"cannot connect to the database at {redact_url(url)}: {_reason(exc)}") from None
    except Exception:
        pool.close()
        raise DatabaseUnavailable(f"cannot connect to the database at {redact_url(url)}") from None
    return pool


def _reason(exc: Exception) -> str:
    # The last line of libpq's message is the cause ("Connection refused", "database ... does not exist").
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
