"""Operating a batch on a running farm, by the commands a user types: pause (which
reaches work the workers already hold), resume, cancel of one run. Counted where it
matters: on the model server, which says whether a call started."""

from __future__ import annotations

import json
import signal
import time

from tests.distributed.conftest import GEMMA
from tests.distributed.farm import HERE, postings
from tests.model_server import ModelServer

CHAIN = HERE / "workflows" / "chain.yaml"


def counts(farm, batch_id: int) -> dict[str, int]:
    rows = farm.db.execute("SELECT status, count(*) AS n FROM interactions WHERE batch_id = %s GROUP BY status",
                           (batch_id,)).fetchall()
    return {r["status"]: r["n"] for r in rows}


def test_a_pause_stops_calls_the_workers_already_hold_and_outlives_a_restart_of_serve(farm, tmp_path):
    with ModelServer(models=[GEMMA], latency=1.5, slots=4) as server:
        farm.serve()
        farm.gpu("gpu", server.url, concurrency=4)  # holds four more behind its gate
        farm.scripts()
        farm.wait_workers("gpu", "scripts")
        batch_id = farm.submit(postings(tmp_path / "in.csv", 12), CHAIN)
        farm.wait_for("four calls under way and four waiting at the worker",
                      lambda: server.in_flight() == 4 and counts(farm, batch_id).get("dispatched") == 8, every=0.02)

        farm.cli("pause", "--batch", str(batch_id))
        started = server.requests[GEMMA]  # counted when a call arrives: none may arrive from now on
        farm.kill("serve", signal.SIGKILL)
        farm.serve("serve-2")
        # What the worker held is handed back, and nothing of the batch is in flight.
        farm.wait_for("the held work to be handed back", lambda: counts(farm, batch_id).get("dispatched", 0) == 0)
        time.sleep(3)
        assert server.requests[GEMMA] == started, "a call of the paused batch started"
        handed_back = farm.db.execute("SELECT count(*) AS n FROM events WHERE batch_id = %s AND kind = 'handed_back'",
                                      (batch_id,)).fetchone()["n"]
        assert handed_back >= 4  # at least the four waiting at the worker's gate
        status = json.loads(farm.cli("status", "--batch", str(batch_id), "--json").stdout)
        assert (status["state"], status["reason"]) == ("paused", "user")

        farm.cli("resume", "--batch", str(batch_id))
        farm.wait_batch(batch_id)
    runs = farm.db.execute("SELECT status, count(*) AS n FROM runs WHERE batch_id = %s GROUP BY status",
                           (batch_id,)).fetchall()
    assert [(r["status"], r["n"]) for r in runs] == [("completed", 12)]
    # A hand-back used no attempt: every interaction completed at its first.
    attempts = farm.db.execute("SELECT max(attempt) AS m, count(*) AS n FROM interactions WHERE batch_id = %s",
                               (batch_id,)).fetchone()
    assert (attempts["m"], attempts["n"]) == (1, 36)
    assert server.served[GEMMA] == 24  # each model call made once


def test_a_cancelled_run_ends_cancelled_and_the_others_go_on(farm, tmp_path):
    with ModelServer(models=[GEMMA], latency=0.3, slots=2) as server:
        farm.serve()
        farm.gpu("gpu", server.url, concurrency=2)
        farm.scripts()
        farm.wait_workers("gpu", "scripts")
        batch_id = farm.submit(postings(tmp_path / "in.csv", 8), CHAIN)
        farm.wait_for("calls under way", lambda: server.requests[GEMMA] >= 1)
        first, last = (r["id"] for r in farm.db.execute(
            "(SELECT id FROM runs WHERE batch_id = %(b)s ORDER BY id LIMIT 1) UNION ALL "
            "(SELECT id FROM runs WHERE batch_id = %(b)s ORDER BY id DESC LIMIT 1)", {"b": batch_id}))
        said = farm.cli("cancel", "--run", str(first), "--run", str(last)).stdout
        assert "2 run(s)" in said
        farm.wait_batch(batch_id)
        runs = {r["id"]: r["status"] for r in farm.db.execute("SELECT id, status FROM runs WHERE batch_id = %s",
                                                                (batch_id,))}
    assert runs.pop(first) == "cancelled" and runs.pop(last) == "cancelled"
    assert set(runs.values()) == {"completed"}
    # Nothing of a cancelled run was done after the cancel, or what was is recorded as ignored.
    late = farm.db.execute("SELECT i.status FROM interactions i WHERE i.run_id = ANY(%s) AND i.status <> 'completed'",
                           ([first, last],)).fetchall()
    assert {r["status"] for r in late} <= {"cancelled"}
    again = farm.cli("cancel", "--run", str(first)).stdout
    assert "0 run(s)" in again  # ended already: left as it is
