"""Shared fixtures. Integration tests run against the real Postgres on this machine:
the schema is built once per session in a template database, and each test that
writes gets a fresh copy of it (CREATE DATABASE ... TEMPLATE, as procrastinate does)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from orchestrator.db import connect
from orchestrator.db.migrate import upgrade

LOCAL_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@lru_cache(maxsize=1)
def admin_url() -> str:
    """Where the tests make their databases: WAVEFARM_TEST_ADMIN_URL, else the local
    Postgres, else (a machine with nothing but Python) an embedded Postgres of the
    test session's own, stopped when the session ends."""
    explicit = os.environ.get("WAVEFARM_TEST_ADMIN_URL")
    if explicit:
        return explicit
    try:
        psycopg.connect(LOCAL_ADMIN_URL, connect_timeout=3).close()
        return LOCAL_ADMIN_URL
    except psycopg.OperationalError:
        pass
    from orchestrator.embedded_postgres import EmbeddedPostgres

    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="wavefarm-test-pg-")), say=lambda _text: None)
    url = pg.start()

    def stop_and_remove() -> None:
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)

    atexit.register(stop_and_remove)
    return url


def database_url(name: str) -> str:
    # Only the path names the database: the embedded server's URL carries a query.
    return urlunsplit(urlsplit(admin_url())._replace(path=f"/{name}"))


def _admin(statement: sql.Composable) -> None:
    with psycopg.connect(admin_url(), autocommit=True) as admin:
        admin.execute(statement)


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = f"wavefarm_tpl_{os.getpid()}"
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn = connect(database_url(name))
    try:
        upgrade(conn)
    finally:
        conn.close()
    yield name
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def copy_of(template: str) -> Iterator[str]:
    """A fresh database with the migrated schema, dropped afterwards."""
    name = f"wavefarm_t_{uuid.uuid4().hex[:12]}"
    _admin(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    try:
        yield database_url(name)
    finally:
        _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db_url(template_db: str) -> Iterator[str]:
    with copy_of(template_db) as url:
        yield url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    c = connect(db_url)
    yield c
    c.close()


@pytest.fixture
def empty_db_url() -> Iterator[str]:
    """A database with no schema at all, for migration tests."""
    name = f"wavefarm_e_{uuid.uuid4().hex[:12]}"
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield database_url(name)
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
