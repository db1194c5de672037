"""Connections and the pool. Rows come back as dicts.

Every driver error on the way in is wrapped here: psycopg's messages can quote the
connection string (a malformed URL is quoted whole), so what reaches a person is a
message of ours with the URL redacted and any password scrubbed from the driver's
reason.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from common.errors import ConfigError, DatabaseUnavailable
from common.redact import redact, scrub, secrets_of


def connect(url: str) -> psycopg.Connection:
    """Autocommit: every unit of work opens its own `conn.transaction()` block."""
    _check(url)
    try:
        return psycopg.connect(url, row_factory=dict_row, autocommit=True)
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"cannot connect to the database at {redact(url)}: {_reason(exc, url)}") from None


def open_pool(url: str, *, size: int = 8) -> ConnectionPool:
    _check(url)
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
    except psycopg.Error as exc:
        pool.close()
        raise DatabaseUnavailable(f"cannot connect to the database at {redact(url)}: {_reason(exc, url)}") from None
    except Exception:
        pool.close()
        raise DatabaseUnavailable(f"cannot connect to the database at {redact(url)}") from None
    return pool


def _check(url: str) -> None:
    """A URL libpq cannot even parse is a setting to fix, not a database that is down."""
    try:
        conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ConfigError(f"the database URL {redact(url)} is not usable: {_reason(exc, url)} "
                          "(write it as postgresql://USER:PASSWORD@HOST:PORT/DATABASE, with special characters "
                          "in the password percent-encoded: # as %23, ? as %3F, @ as %40)") from None


def _reason(exc: Exception, url: str) -> str:
    # The last line of libpq's message is the cause ("Connection refused", "database ... does not exist").
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return scrub(lines[-1] if lines else type(exc).__name__, secrets_of(url))
