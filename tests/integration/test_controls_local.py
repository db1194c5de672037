"""The controls with the local executor (`submit --local`, `serve --local`): a pause from
another process stops every call of the batch that has not started, what the executor
had claimed goes back unstarted, and resume goes on; nothing is done twice."""

from __future__ import annotations

import threading
import time

from orchestrator import controls
from orchestrator.db import connect
from orchestrator.db.store import Store
from orchestrator.executor import LocalExecutor
from tests.integration.test_engine import QUICK_RETRIES, ScriptedModel, scripts_dir, start  # noqa: F401

CHAIN = """
name: chain3
steps:
  - {name: a, model: "m:1", prompt: "a {{ input.x }}", next: [{when: "*", to: b}]}
  - {name: b, model: "m:1", prompt: "b {{ steps.a.output }}", next: [{when: "*", to: c}]}
  - {name: c, model: "m:1", prompt: "c {{ steps.b.output }}"}
"""


def _open(conn, batch: int) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) AS n FROM interactions WHERE batch_id = %s GROUP BY status",
                        (batch,)).fetchall()
    return {r["status"]: r["n"] for r in rows}


def _until(what: str, predicate, timeout: float = 30.0) -> None:
    until = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < until, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_pause_stops_the_local_executor_before_its_next_call_and_resume_goes_on(conn, db_url, tmp_path, scripts_dir):
    batch = start(conn, tmp_path, CHAIN, [[str(n)] for n in range(10)])
    model = ScriptedModel(lambda t: (time.sleep(0.1), f"out {t.prompt}")[1])
    own = connect(db_url)
    executor = LocalExecutor(Store(own), ai=model, scripts_dir=scripts_dir, concurrency=2, idle_poll_s=0.05,
                             policy=QUICK_RETRIES)
    done = threading.Thread(target=executor.run, args=(batch,), daemon=True)
    done.start()
    try:
        _until("calls under way", lambda: len(model.calls) >= 3)
        controls.pause(Store(conn), batch)
        # What was running finishes; what the executor had claimed goes back unstarted.
        _until("nothing of the batch in flight", lambda: _open(conn, batch).get("dispatched", 0) == 0)
        started = len(model.calls)
        time.sleep(1.0)  # several of the executor's readings of the holds
        assert len(model.calls) == started, "a call of the paused batch started"
        assert done.is_alive()  # a paused batch is waited for, not given up
        controls.resume(Store(conn), batch)
        done.join(timeout=60)
        assert not done.is_alive()
    finally:
        own.close()
    assert _open(conn, batch) == {"completed": 30}
    assert len(model.calls) == 30  # each call made once: a hand-back used no attempt
    assert conn.execute("SELECT max(attempt) AS m FROM interactions WHERE batch_id = %s", (batch,)).fetchone()["m"] == 1
