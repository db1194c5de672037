"""What the posting actors share: the connection, the schema, every query, and the
coercion of inputs (a workflow renders each input value from a template, so every
value arrives as text: posting_id "17", skills as JSON text).

Scripts import it as `import postings_db`: a script's own directory is sys.path[0].
All SQL is parameterised and lives here, nowhere else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

SCHEMA = Path(__file__).resolve().with_name("schema.sql")
# Serialises the first application of schema.sql between scripts that start at once.
SCHEMA_LOCK = 0x706F7374696E6773  # "postings"
MAX_BIGINT = 2**63 - 1


class UrlTaken(Exception):
    """The url already belongs to a posting with another source_id."""

    def __init__(self, owner: str) -> None:
        super().__init__(f"url already belongs to posting {owner}")
        self.owner = owner


# -- connection and schema ----------------------------------------------------------

def connect(actor: Any) -> psycopg.Connection[dict[str, Any]]:
    """One connection from actor.database_url (WAVEFARM_DATABASE_URL), schema applied.

    Use it as `with postings_db.connect(self) as conn:`: commit on success, rollback
    on an exception, closed either way. Never print the URL: it may carry a password.
    """
    url = getattr(actor, "database_url", None)
    if not url:
        raise RuntimeError(
            f"{type(actor).__name__} needs a database: WAVEFARM_DATABASE_URL is not set "
            "(script-worker passes it to scripts when its own environment has it)"
        )
    try:
        conn = psycopg.connect(url, row_factory=dict_row, application_name="wavefarm-postings")
    except psycopg.OperationalError as exc:
        # One line: the runner quotes the last line of stderr, and libpq's message has
        # several ("connection refused" first, "is the server running?" last).
        raise RuntimeError(f"cannot connect to the database: {' '.join(str(exc).split())}") from None
    try:
        ensure_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Apply schema.sql unless its tables exist; concurrent first runs take turns."""
    with conn.transaction():
        if _tables_exist(conn):
            return
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        if not _tables_exist(conn):  # another script may have applied it while we waited
            conn.execute(SCHEMA.read_text(encoding="utf-8"))  # no parameters: several statements


def _tables_exist(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT to_regclass('postings') IS NOT NULL AND to_regclass('postings_staging') IS NOT NULL AS ok"
    ).fetchone()
    return bool(row and row["ok"])


# -- input coercion: every value is text; fail with one clear line -----------------

def positive_int(value: Any, name: str) -> int:
    """A database id given as text ("17"; an int is accepted too)."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is None or not re.fullmatch(r"[0-9]+", text) or not 0 < int(text) <= MAX_BIGINT:
        raise ValueError(f"{name} must be a positive integer, got {_show(value)}")
    return int(text)


def optional_int(value: Any, name: str) -> int | None:
    """Like positive_int, but an empty value (or null) means none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return positive_int(value, name)


def text(value: Any, name: str) -> str:
    """A text input, stripped; null is empty; a number is its text; a list/object is an error."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{name} must be text, got a JSON {type(value).__name__}")
    return str(value).strip()


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


# -- staging --------------------------------------------------------------------------

def upsert_staging(conn: psycopg.Connection[Any], *, run_id: int, batch_id: int | None,
                   source_id: str | None, payload: dict[str, Any]) -> int:
    """One staging row per run: a retried intake replaces the row and starts it over."""
    row = conn.execute(
        """
        INSERT INTO postings_staging (run_id, batch_id, source_id, payload)
        VALUES (%s, %s, %s, %s)
        ON CONFLICT (run_id) DO UPDATE
           SET batch_id = EXCLUDED.batch_id, source_id = EXCLUDED.source_id,
               payload = EXCLUDED.payload, status = 'received', reject_reason = NULL,
               posting_id = NULL, received_at = now(), decided_at = NULL
        RETURNING id
        """,
        (run_id, batch_id, source_id, Jsonb(payload)),
    ).fetchone()
    return int(row["id"])


def lock_staged(conn: psycopg.Connection[Any], staging_id: int) -> dict[str, Any]:
    """The staging row, locked until commit so that two validations of it take turns."""
    row = conn.execute(
        "SELECT id, run_id, source_id, payload, status FROM postings_staging WHERE id = %s FOR UPDATE",
        (staging_id,),
    ).fetchone()
    if row is None:
        raise LookupError(f"no staging row {staging_id} in postings_staging")
    return dict(row)


def mark_promoted(conn: psycopg.Connection[Any], staging_id: int, posting_id: int) -> None:
    conn.execute(
        """
        UPDATE postings_staging
           SET status = 'promoted', posting_id = %s, reject_reason = NULL, decided_at = now()
         WHERE id = %s
        """,
        (posting_id, staging_id),
    )


def mark_rejected(conn: psycopg.Connection[Any], staging_id: int, reason: str) -> None:
    conn.execute(
        """
        UPDATE postings_staging
           SET status = 'rejected', posting_id = NULL, reject_reason = %s, decided_at = now()
         WHERE id = %s
        """,
        (reason, staging_id),
    )


# -- postings -------------------------------------------------------------------------

def url_owner(conn: psycopg.Connection[Any], url: str) -> str | None:
    row = conn.execute("SELECT source_id FROM postings WHERE url = %s", (url,)).fetchone()
    return None if row is None else str(row["source_id"])


_UPSERT_POSTING = """
    INSERT INTO postings (source_id, url, title, company, location, description,
                          extracted_summary, summary_saved_at)
    VALUES (%(source_id)s, %(url)s, %(title)s, %(company)s, %(location)s, %(description)s,
            %(summary)s, CASE WHEN %(summary)s::text IS NULL THEN NULL ELSE now() END)
    ON CONFLICT (source_id) DO UPDATE
       SET url = EXCLUDED.url, title = EXCLUDED.title, company = EXCLUDED.company,
           location = EXCLUDED.location, description = EXCLUDED.description,
           -- a summary the pipeline already saved wins over the one in the feed
           summary_saved_at = CASE WHEN postings.extracted_summary IS NULL
                                   THEN EXCLUDED.summary_saved_at ELSE postings.summary_saved_at END,
           extracted_summary = COALESCE(postings.extracted_summary, EXCLUDED.extracted_summary),
           updated_at = now()
    RETURNING posting_id
"""


def upsert_posting(conn: psycopg.Connection[Any], fields: dict[str, Any]) -> int:
    """Insert the posting, or update the one with the same source_id (its saved fields
    stay). Raises UrlTaken when the url belongs to another source_id, even one that a
    concurrent run committed a moment ago: the url's unique constraint decides."""
    for _ in range(3):
        owner = url_owner(conn, fields["url"])
        if owner is not None and owner != fields["source_id"]:
            raise UrlTaken(owner)
        try:
            with conn.transaction():  # a savepoint: a violation must not end the caller's transaction
                row = conn.execute(_UPSERT_POSTING, fields).fetchone()
                return int(row["posting_id"])
        except errors.UniqueViolation as exc:
            if exc.diag.constraint_name != "postings_url_key":
                raise
            # A concurrent run committed this url between our check and our insert
            # (possibly for this very source_id: then the next round updates it).
    raise RuntimeError(f"url {fields['url']!r} kept changing owner; try again")


def get_summary(conn: psycopg.Connection[Any], posting_id: int) -> str | None:
    row = conn.execute(
        "SELECT extracted_summary FROM postings WHERE posting_id = %s", (posting_id,)
    ).fetchone()
    if row is None:
        raise LookupError(f"no posting {posting_id} in postings")
    return row["extracted_summary"]


def save_summary(conn: psycopg.Connection[Any], posting_id: int, summary: str) -> None:
    _update(conn, posting_id,
            "UPDATE postings SET extracted_summary = %s, summary_saved_at = now(), updated_at = now() "
            "WHERE posting_id = %s RETURNING posting_id", (summary, posting_id))


def save_skills(conn: psycopg.Connection[Any], posting_id: int, skills: list[str]) -> None:
    _update(conn, posting_id,
            "UPDATE postings SET skill_keywords = %s, skills_saved_at = now(), updated_at = now() "
            "WHERE posting_id = %s RETURNING posting_id", (Jsonb(skills), posting_id))


def save_ihl(conn: psycopg.Connection[Any], posting_id: int, score: int, verdict: str) -> None:
    _update(conn, posting_id,
            "UPDATE postings SET ihl_score = %s, ihl_verdict = %s, ihl_saved_at = now(), updated_at = now() "
            "WHERE posting_id = %s RETURNING posting_id", (score, verdict, posting_id))


def _update(conn: psycopg.Connection[Any], posting_id: int, query: str, params: tuple[Any, ...]) -> None:
    if conn.execute(query, params).fetchone() is None:
        raise LookupError(f"no posting {posting_id} in postings")
