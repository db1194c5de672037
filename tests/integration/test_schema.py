"""The migrations produce exactly schema.sql, and upgrading is idempotent."""

from importlib.resources import files

import psycopg
import pytest

from orchestrator.db import connect
from orchestrator.db.migrate import available, current_version, upgrade

# Everything about the schema a query or a constraint can depend on.
CATALOG = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'wavefarm_migrations'
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
          AND conrelid::regclass::text <> 'wavefarm_migrations' ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'wavefarm_migrations' ORDER BY 1, 2""",
    "functions": """
        SELECT proname, md5(prosrc) FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
        WHERE NOT tgisinternal ORDER BY 1, 2""",
}


def snapshot(conn: psycopg.Connection) -> dict:
    return {name: conn.execute(query).fetchall() for name, query in CATALOG.items()}


def test_migrations_produce_exactly_schema_sql(empty_db_url, db_url):
    migrated = connect(db_url)  # built from migrations by the template fixture
    reference = connect(empty_db_url)
    reference.execute(files("orchestrator.db").joinpath("schema.sql").read_text())
    try:
        got, want = snapshot(migrated), snapshot(reference)
        for name in CATALOG:
            assert got[name] == want[name], f"migrations and schema.sql differ in {name}"
        assert len(want["columns"]) > 50
    finally:
        migrated.close()
        reference.close()


def test_upgrade_is_idempotent(empty_db_url):
    conn = connect(empty_db_url)
    try:
        first = upgrade(conn)
        assert [m.version for m in first] == [m.version for m in available()]
        assert upgrade(conn) == []
        assert current_version(conn) == len(available())
    finally:
        conn.close()


def test_the_event_log_is_append_only_except_for_a_purge(conn):
    from tests.integration.helpers import make_interaction

    iid = make_interaction(conn)
    for statement in ("UPDATE events SET kind = 'forged' WHERE interaction_id = %(i)s",
                      "DELETE FROM events WHERE interaction_id = %(i)s", "TRUNCATE events"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement, {"i": iid} if "%(i)s" in statement else None)
    with conn.transaction():
        conn.execute("SET LOCAL wavefarm.purging = 'on'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.transaction():
                conn.execute("UPDATE events SET kind = 'forged' WHERE interaction_id = %s", (iid,))
        assert conn.execute("DELETE FROM events WHERE interaction_id = %s", (iid,)).rowcount == 1
