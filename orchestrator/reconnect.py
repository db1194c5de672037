"""The database connection of a command that stays on it for a whole batch (`submit
--wait`, `submit --local`, the demo's progress): when Postgres goes away (a restart, a
failover) the command says so in one line, waits for it to come back, and goes on
where it was, instead of dying with a driver traceback.

Work is handed over as a function of the store (orchestrator/db/store.py), one unit (a
read, or one transaction) at a time: if the connection is lost during it, the unit is run again on
the new connection. A transaction cut short was rolled back; results whose commit
went through just before the loss are applied again as no-ops by the guarded
transitions. (A claim whose commit went through while its answer was lost leaves its
interactions dispatched to nobody: the sweeper takes them back at their deadline.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

from common.errors import DatabaseUnavailable
from common.redact import redact
from orchestrator.db import connect
from orchestrator.db.store import Store

T = TypeVar("T")

LOST = (psycopg.OperationalError, psycopg.InterfaceError)


class Reconnecting:
    """`run(work)` calls `work(store)`; with a `url` it rides out a lost database, without
    one (a store given by a caller that manages its connection) the error goes to the caller."""

    def __init__(self, store: Store, *, url: str | None = None,
                 say: Callable[[str], None] = lambda _text: None, retry_every_s: float = 1.0) -> None:
        self.store = store
        self.url = url
        self.say = say
        self.retry_every_s = retry_every_s

    @classmethod
    def to(cls, url: str, say: Callable[[str], None]) -> Reconnecting:
        """A store on `url` that waits for the database when it goes away."""
        return cls(Store(connect(url)), url=url, say=say)

    def run(self, work: Callable[[Store], T]) -> T:
        while True:
            try:
                return work(self.store)
            except LOST as exc:
                # An error of the statement itself (a lock timeout, a cancelled query)
                # leaves the connection usable: that one is the caller's to handle.
                conn = self.store.conn
                if self.url is None or not (conn.closed or conn.broken):
                    raise
                self._wait_for_database(exc)

    def close(self) -> None:
        self.store.conn.close()

    def _wait_for_database(self, exc: Exception) -> None:
        where = redact(self.url)
        self.say(f"lost the database at {where} ({_reason(exc)}); waiting for it to come back (Ctrl-C to stop)")
        self.store.conn.close()
        lost_at = time.monotonic()
        while True:
            time.sleep(self.retry_every_s)
            try:
                self.store = Store(connect(self.url))
            except DatabaseUnavailable:
                continue  # still down, or starting up
            self.say(f"the database is back after {time.monotonic() - lost_at:.0f}s; going on")
            return


def _reason(exc: Exception) -> str:
    """The server's or libpq's first line ("terminating connection due to administrator
    command"): what happened, without the connection string."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
