"""The state machines: every allowed transition works once through the statement
production runs; every other pair is refused; the guard makes a repeated or stale
change a no-op; each change writes an event; and the tables name exactly the
statements of queries.sql that change a status."""

import itertools
import re
import threading
import time

import psycopg
import pytest

from common.errors import TransitionRefused
from orchestrator.controls import cancel_batch
from orchestrator.db import connect
from orchestrator.db.queries import Q
from orchestrator.db.rows import Completion, FailureRecord, Guard, Requeue, Rerun, RunEnding
from orchestrator.db.store import Store
from orchestrator.states import (
    RUN_TRANSITIONS,
    TRANSITIONS,
    RunStatus,
    Status,
    claim_for_dispatch,
    claim_pending,
    end_runs,
    transition,
)
from tests.integration.helpers import make_interaction

# What each guarded transition writes, for interaction `iid` at attempt 1.
WRITES = {
    "mark_completed": lambda iid: Completion(id=iid, attempt=1, output="done", output_chars=4),
    "mark_failed": lambda iid: FailureRecord(id=iid, attempt=1, failure_class="timeout", failure_message="slow"),
    "requeue": lambda iid: Requeue(id=iid, attempt=1, delay_s=0.0),
    "rerun_failed": lambda iid: Rerun(id=iid, attempt=1, max_attempts=4, kind="ai", actor="m:1", timeout_s=30,
                                      input={"prompt": "hello again"}),
    "mark_cancelled": lambda iid: Guard(id=iid, attempt=1),
    "hand_back": lambda iid: Guard(id=iid, attempt=1),
}
GUARDED = sorted((pair, c.query) for pair, changes in TRANSITIONS.items() for c in changes if c.writes)


def status_of(conn, iid: int) -> dict:
    return conn.execute("SELECT status, attempt FROM interactions WHERE id = %s", (iid,)).fetchone()


@pytest.mark.parametrize(("pair", "query"), GUARDED, ids=lambda p: f"{p[0]}->{p[1]}" if isinstance(p, tuple) else p)
def test_allowed_transition_applies_once(conn, pair, query):
    from_, to = pair
    iid = make_interaction(conn, status=from_)
    db = Store(conn)
    with db.transaction():
        moved = transition(db, WRITES[query](iid), from_=from_, to=to)
        assert moved is not None and moved.status == to
        # The same change again finds the row no longer in `from_`: nothing happens.
        assert transition(db, WRITES[query](iid), from_=from_, to=to) is None
    # A retry uses an attempt; an attempt handed back unstarted does not.
    retried = (from_, to) == (Status.FAILED, Status.PENDING)
    assert status_of(conn, iid)["attempt"] == (2 if retried else 1)
    kinds = [r["kind"] for r in conn.execute("SELECT kind FROM events WHERE interaction_id = %s ORDER BY id", (iid,))]
    assert kinds[0] == "created"
    assert kinds[-1] == {(Status.FAILED, Status.PENDING): "retried",
                         (Status.DISPATCHED, Status.PENDING): "handed_back"}.get((from_, to), to.value)


@pytest.mark.parametrize("claim", ["claim_for_dispatch", "claim_pending"])
def test_each_claim_moves_pending_work_to_dispatched_with_the_one_deadline(conn, claim):
    iid = make_interaction(conn, status=Status.PENDING)
    db = Store(conn)
    with db.transaction():
        if claim == "claim_for_dispatch":
            batch = conn.execute("SELECT batch_id FROM interactions WHERE id = %s", (iid,)).fetchone()["batch_id"]
            (claimed,) = claim_for_dispatch(db, kind="ai", actor="m:1", batch_id=batch, limit=5)
        else:
            (claimed,) = claim_pending(db, limit=5)
    assert claimed.id == iid and claimed.attempt == 1 and claimed.input == {"prompt": "hello 1"}
    row = conn.execute("SELECT status, extract(epoch FROM deadline - dispatched_at) AS s FROM interactions "
                       "WHERE id = %s", (iid,)).fetchone()
    # Twice the 30 s timeout and 10 s for the way back, from wavefarm_dispatch_deadline.
    assert row["status"] == "dispatched" and float(row["s"]) == pytest.approx(70, abs=1)
    with db.transaction():
        assert claim_pending(db, limit=5) == []  # nothing pending is left


def test_a_retry_is_not_claimed_before_its_backoff(conn):
    iid = make_interaction(conn, status=Status.FAILED)
    db = Store(conn)
    with db.transaction():
        transition(db, Requeue(id=iid, attempt=1, delay_s=30.0), from_=Status.FAILED, to=Status.PENDING)
    with db.transaction():
        assert claim_pending(db, limit=5) == []
    detail = conn.execute("SELECT detail FROM events WHERE interaction_id = %s AND kind = 'retried'",
                          (iid,)).fetchone()["detail"]
    assert "not_before" in detail  # the event log says when it will go out
    conn.execute("UPDATE interactions SET not_before = now() - interval '1 second' WHERE id = %s", (iid,))
    with db.transaction():
        (claimed,) = claim_pending(db, limit=5)
    assert claimed.id == iid and claimed.attempt == 2


def test_a_busy_retry_uses_none_of_the_steps_retries(conn):
    iid = make_interaction(conn, status=Status.FAILED)
    db = Store(conn)
    with db.transaction():
        moved = transition(db, Requeue(id=iid, attempt=1, delay_s=0.0, busy=True), from_=Status.FAILED,
                           to=Status.PENDING)
    assert (moved.attempt, moved.max_attempts, moved.busy_retries) == (2, 4, 1)


REFUSED = [p for p in itertools.product(Status, Status) if p not in {pair for pair, _ in GUARDED}]


@pytest.mark.parametrize("pair", REFUSED, ids=lambda p: f"{p[0]}->{p[1]}")
def test_refused_transition_raises_and_changes_nothing(conn, pair):
    from_, to = pair
    iid = make_interaction(conn, status=from_)
    db = Store(conn)
    with pytest.raises(TransitionRefused, match=f"{from_} -> {to}"):
        with db.transaction():
            transition(db, Guard(id=iid, attempt=1), from_=from_, to=to)
    assert status_of(conn, iid)["status"] == from_


def test_a_transition_is_given_what_it_writes_or_refused(conn):
    iid = make_interaction(conn, status=Status.DISPATCHED)
    with pytest.raises(TypeError, match="writes a Completion"):
        transition(Store(conn), Guard(id=iid, attempt=1), from_=Status.DISPATCHED, to=Status.COMPLETED)


def test_stale_attempt_is_a_no_op(conn):
    iid = make_interaction(conn, status=Status.DISPATCHED, attempt=2)
    db = Store(conn)
    with db.transaction():
        late = Completion(id=iid, attempt=1, output="late", output_chars=4)
        assert transition(db, late, from_=Status.DISPATCHED, to=Status.COMPLETED) is None
    row = conn.execute("SELECT status, output FROM interactions WHERE id = %s", (iid,)).fetchone()
    assert row == {"status": "dispatched", "output": None}


def test_terminal_states_have_no_way_out_but_retry():
    assert not [p for p in TRANSITIONS if p[0] in (Status.COMPLETED, Status.CANCELLED)]
    assert [p for p in TRANSITIONS if p[0] == Status.FAILED] == [(Status.FAILED, Status.PENDING)]


def _changes_status(sql: str, table: str) -> bool:
    return bool(re.search(rf"UPDATE {table}\b.*?\bSET\b[^;]*?\bstatus\s*=", sql, re.S | re.I))


def test_the_tables_name_every_statement_that_changes_a_status_and_no_other():
    named = {c.query for changes in TRANSITIONS.values() for c in changes}
    assert named == {name for name, sql in Q.items() if _changes_status(sql, "interactions")}
    assert {c.query for c in RUN_TRANSITIONS.values()} == {
        name for name, sql in Q.items() if _changes_status(sql, "runs")}


def test_a_run_ends_once_through_its_own_table(conn):
    iid = make_interaction(conn, status=Status.COMPLETED)
    run_id = conn.execute("SELECT run_id FROM interactions WHERE id = %s", (iid,)).fetchone()["run_id"]
    db = Store(conn)
    with db.transaction():
        assert end_runs(db, [RunEnding(run_id, RunStatus.COMPLETED, "done")]) == [run_id]
        assert end_runs(db, [RunEnding(run_id, RunStatus.FAILED, "again")]) == []  # no longer running
    with pytest.raises(TransitionRefused):
        end_runs(db, [RunEnding(run_id, RunStatus.RUNNING, "back")])
    row = conn.execute("SELECT status, end_reason FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert row == {"status": "completed", "end_reason": "done"}


def test_cancel_is_guarded_and_records_the_attempt_it_cut_short(conn):
    sent = make_interaction(conn, status=Status.DISPATCHED)
    batch, run = conn.execute("SELECT batch_id, run_id FROM interactions WHERE id = %s", (sent,)).fetchone().values()
    waiting = conn.execute(
        "INSERT INTO interactions (run_id, batch_id, step, kind, actor, visit, status, max_attempts, timeout_s, input)"
        " VALUES (%s, %s, 'only', 'ai', 'm:1', 2, 'pending', 3, 30, '{}') RETURNING id", (run, batch)).fetchone()["id"]
    cancelled = cancel_batch(Store(conn), batch)
    assert (cancelled.runs, cancelled.interactions) == (1, 2)
    assert {status_of(conn, i)["status"] for i in (sent, waiting)} == {"cancelled"}
    attempt = conn.execute("SELECT outcome FROM attempts WHERE interaction_id = %s", (sent,)).fetchone()
    assert attempt == {"outcome": "cancelled"}
    run_row = conn.execute("SELECT status, end_reason FROM runs WHERE id = %s", (run,)).fetchone()
    assert run_row == {"status": "cancelled", "end_reason": "cancelled by the user"}
    assert cancel_batch(Store(conn), batch).runs == 0  # nothing left to cancel


def test_cancel_waits_for_an_apply_that_holds_the_run_instead_of_deadlocking(conn, db_url):
    """apply locks a run, then its interactions; cancel takes them in the same order,
    so it waits for the apply's commit and then finds the interaction completed."""
    iid = make_interaction(conn, status=Status.DISPATCHED)
    batch = conn.execute("SELECT batch_id FROM interactions WHERE id = %s", (iid,)).fetchone()["batch_id"]
    applier = psycopg.connect(db_url, autocommit=True)
    applier.execute("BEGIN")
    applier.execute(Q["lock_result_targets"], {"ids": [iid]})
    applier.execute("UPDATE interactions SET status = 'completed', ended_at = now() WHERE id = %s", (iid,))
    done: dict = {}
    canceller = threading.Thread(target=lambda: done.update(c=cancel_batch(Store(connect(db_url)), batch)))
    canceller.start()
    time.sleep(0.5)
    assert canceller.is_alive(), "cancel should wait for the run the apply holds"
    applier.execute("COMMIT")
    canceller.join(timeout=10)
    assert done["c"].interactions == 0 and done["c"].runs == 1
    assert status_of(conn, iid)["status"] == "completed"  # the result is kept; the run is cancelled
    applier.close()
