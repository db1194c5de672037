"""Every allowed transition works once; every other pair is refused; the guard
makes a repeated or stale change a no-op; each change writes an event."""

import itertools

import pytest

from common.errors import TransitionRefused
from orchestrator.states import TRANSITIONS, Status, transition
from tests.integration.helpers import make_interaction


@pytest.mark.parametrize("pair", sorted(TRANSITIONS), ids=lambda p: f"{p[0]}->{p[1]}")
def test_allowed_transition_applies_once(conn, pair):
    from_, to = pair
    iid = make_interaction(conn, status=from_)
    with conn.transaction(), conn.cursor() as cur:
        row = transition(cur, iid, from_=from_, to=to, attempt=1)
        assert row is not None and row["status"] == to
        # The same change again finds the row no longer in `from_`: nothing happens.
        assert transition(cur, iid, from_=from_, to=to, attempt=1) is None
    expected_attempt = 2 if to == Status.PENDING else 1
    assert conn.execute("SELECT attempt FROM interactions WHERE id = %s", (iid,)).fetchone()["attempt"] == expected_attempt
    kinds = [r["kind"] for r in conn.execute("SELECT kind FROM events WHERE interaction_id = %s ORDER BY id", (iid,))]
    assert kinds[0] == "created"
    assert kinds[-1] == ("retried" if to == Status.PENDING else to.value)


REFUSED = [p for p in itertools.product(Status, Status) if p not in TRANSITIONS]


@pytest.mark.parametrize("pair", REFUSED, ids=lambda p: f"{p[0]}->{p[1]}")
def test_refused_transition_raises_and_changes_nothing(conn, pair):
    from_, to = pair
    iid = make_interaction(conn, status=from_)
    with pytest.raises(TransitionRefused, match=f"{from_} -> {to}"):
        with conn.transaction(), conn.cursor() as cur:
            transition(cur, iid, from_=from_, to=to, attempt=1)
    assert conn.execute("SELECT status FROM interactions WHERE id = %s", (iid,)).fetchone()["status"] == from_


def test_stale_attempt_is_a_no_op(conn):
    iid = make_interaction(conn, status=Status.DISPATCHED, attempt=2)
    with conn.transaction(), conn.cursor() as cur:
        assert transition(cur, iid, from_=Status.DISPATCHED, to=Status.COMPLETED, attempt=1, output="late") is None
    row = conn.execute("SELECT status, output FROM interactions WHERE id = %s", (iid,)).fetchone()
    assert row == {"status": "dispatched", "output": None}


def test_terminal_states_have_no_way_out_but_retry():
    assert not [p for p in TRANSITIONS if p[0] in (Status.COMPLETED, Status.CANCELLED)]
    assert [p for p in TRANSITIONS if p[0] == Status.FAILED] == [(Status.FAILED, Status.PENDING)]
