"""A command's connection that rides out a lost database (orchestrator/reconnect.py),
against the real Postgres: its session is ended from outside, as a restart ends it."""

import psycopg
import pytest

from orchestrator.db import connect
from orchestrator.db.store import Store
from orchestrator.reconnect import Reconnecting


def end_session(db_url: str, conn: psycopg.Connection) -> None:
    """What a restart does to one session: the server ends it (AdminShutdown)."""
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))


def test_a_lost_connection_is_said_once_replaced_and_the_work_done(db_url):
    said: list[str] = []
    db = Reconnecting(Store(connect(db_url)), url=db_url, say=said.append, retry_every_s=0.1)
    first = db.store.conn
    end_session(db_url, first)
    assert db.run(lambda store: store.conn.execute("SELECT 42 AS answer").fetchone()["answer"]) == 42
    assert db.store.conn is not first and first.closed
    assert len(said) == 2, said
    assert said[0].startswith("lost the database at ") and "waiting for it to come back" in said[0]
    assert said[1].startswith("the database is back")
    db.close()


def test_an_error_of_the_statement_itself_is_the_callers(db_url):
    said: list[str] = []
    db = Reconnecting(Store(connect(db_url)), url=db_url, say=said.append, retry_every_s=0.1)
    # A cancelled query is an OperationalError too, on a connection that is still good:
    # running it again would only cancel it again.
    with pytest.raises(psycopg.errors.QueryCanceled):
        db.run(lambda store: store.conn.execute("SET statement_timeout = 10; SELECT pg_sleep(1)"))
    assert said == [] and not db.store.conn.broken
    db.close()


def test_without_a_url_a_lost_connection_is_the_callers(db_url):
    conn = connect(db_url)
    end_session(db_url, conn)
    with pytest.raises(psycopg.OperationalError):
        Reconnecting(Store(conn)).run(lambda store: store.conn.execute("SELECT 1"))
