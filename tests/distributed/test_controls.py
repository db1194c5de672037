"""Operating a batch on a running farm, by the commands a user types: pause (which
reaches work the workers already hold), resume, cancel of one run. Counted where it
matters: on the model server, which says whether a call started."""

from __future__ import annotations

import json
import shutil
import signal
import time

from tests.distributed.conftest import GEMMA, QWEN
from tests.distributed.farm import HERE, SCRIPTS, completions_per_interaction, postings
from tests.model_server import ModelServer

CHAIN = HERE / "workflows" / "chain.yaml"


def start_farm(farm, server_url: str, *, concurrency: int = 4, scripts=SCRIPTS) -> None:
    """serve, one GPU worker (`concurrency` slots, as many more held behind its gate) and a
    script worker; returns once both consume."""
    farm.serve()
    farm.gpu("gpu", server_url, concurrency=concurrency)
    farm.scripts(directory=scripts)
    farm.wait_workers("gpu", "scripts")


def counts(farm, batch_id: int) -> dict[str, int]:
    rows = farm.db.execute("SELECT status, count(*) AS n FROM interactions WHERE batch_id = %s GROUP BY status",
                           (batch_id,)).fetchall()
    return {r["status"]: r["n"] for r in rows}


def test_a_pause_stops_calls_the_workers_already_hold_and_outlives_a_restart_of_serve(farm, tmp_path):
    with ModelServer(models=[GEMMA], latency=1.5, slots=4) as server:
        start_farm(farm, server.url, concurrency=4)
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
    # Calls slow enough that the first run is still under way when the cancel arrives.
    with ModelServer(models=[GEMMA], latency=2.0, slots=2) as server:
        start_farm(farm, server.url, concurrency=2)
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


TWO_MODELS = HERE / "workflows" / "two_models.yaml"


def attempts_of(farm, batch_id: int) -> dict[str, int]:
    rows = farm.db.execute("SELECT i.step, count(*) AS n FROM attempts a JOIN interactions i ON i.id = a.interaction_id"
                           " WHERE a.batch_id = %s AND a.outcome <> 'ignored' GROUP BY i.step", (batch_id,)).fetchall()
    return {r["step"]: r["n"] for r in rows}


def test_retry_from_a_step_after_a_changed_prompt_calls_only_that_step_and_those_after_it(farm, tmp_path):
    workflow = tmp_path / "two_models.yaml"
    workflow.write_text(TWO_MODELS.read_text())
    with ModelServer(models=[GEMMA], latency=0.05) as a, ModelServer(models=[QWEN], latency=0.05) as b:
        farm.serve()
        farm.gpu("gpu-a", a.url)
        farm.gpu("gpu-b", b.url)
        farm.scripts()
        farm.wait_workers("gpu-a", "gpu-b", "scripts")
        batch_id = farm.submit(postings(tmp_path / "in.csv", 6), workflow)
        farm.wait_batch(batch_id)
        assert (a.served[GEMMA], b.served[QWEN]) == (6, 6)

        workflow.write_text(TWO_MODELS.read_text().replace('"Polish: {{', '"Polish carefully: {{'))
        assert "version 2" in farm.cli("workflow", "load", str(workflow), "--scripts-dir", str(SCRIPTS)).stdout
        said = farm.cli("retry", "--batch", str(batch_id), "--from-step", "polish", "--workflow-version", "latest").stdout
        assert "retried 6 run(s)" in said and "6 new visit(s)" in said
        farm.wait_batch(batch_id)
        # Only the changed step and the one after it ran again: counted per model, and the
        # first script ran once per row.
        assert (a.served[GEMMA], b.served[QWEN]) == (6, 12)
    assert attempts_of(farm, batch_id) == {"stage": 6, "draft": 6, "polish": 12, "final": 12}
    status = json.loads(farm.cli("status", "--batch", str(batch_id), "--json").stdout)
    assert status["runs"]["completed"] == 6
    prompts = farm.db.execute("SELECT input->>'prompt' AS p FROM interactions WHERE batch_id = %s AND step = 'polish'"
                              " AND NOT superseded", (batch_id,)).fetchall()
    assert len(prompts) == 6 and all(r["p"].startswith("Polish carefully: ") for r in prompts)


def test_a_script_that_always_fails_is_escalated_and_retry_failed_after_the_fix_finishes(farm, tmp_path):
    scripts = tmp_path / "scripts"
    shutil.copytree(SCRIPTS, scripts)
    fixed = (scripts / "collect.py").read_text()
    (scripts / "collect.py").write_text("import sys\nsys.exit('the archive is unreachable')\n")
    with ModelServer(models=[GEMMA], latency=0.02) as server:
        start_farm(farm, server.url, scripts=scripts)
        rows = postings(tmp_path / "in.csv", 40)
        done = farm.cli("submit", "--batch", str(rows), "--workflow", str(CHAIN), "--scripts-dir", str(scripts),
                        "--wait", "--json", check=False)
        # submit --wait does not wait for ever on a step that a person must fix.
        assert done.returncode == 1, done.stderr
        assert "escalated" in done.stderr and "final" in done.stderr
        batch_id = json.loads(done.stdout.strip().splitlines()[-1])["batch_id"]
        status = json.loads(farm.cli("status", "--batch", str(batch_id), "--json").stdout)
        assert status["state"] == "escalated" and status["escalations"][0]["step"] == "final"
        assert "the archive is unreachable" in status["escalations"][0]["examples"][0]["message"]
        # Ten in a row, and what the script worker had started beside them: not forty.
        assert 10 <= attempts_of(farm, batch_id)["final"] <= 16

        (scripts / "collect.py").write_text(fixed)
        said = farm.cli("retry", "--batch", str(batch_id), "--failed").stdout
        assert "escalation lifted: step(s) final" in said
        farm.wait_batch(batch_id)
        assert server.served[GEMMA] == 80  # no model call was made twice
    status = json.loads(farm.cli("status", "--batch", str(batch_id), "--json").stdout)
    assert (status["state"], status["runs"]["completed"]) == ("done", 40)


def test_retry_after_a_worker_was_killed_mid_call_finishes_what_it_lost(farm, tmp_path):
    workflow = tmp_path / "chain.yaml"
    workflow.write_text(CHAIN.read_text().replace("steps:", "defaults: {timeout: 2, retries: 0}\nsteps:", 1))
    with ModelServer(models=[GEMMA], latency=1.0, slots=2) as server:
        start_farm(farm, server.url, concurrency=2)
        batch_id = farm.submit(postings(tmp_path / "in.csv", 6), workflow)
        farm.wait_for("two calls under way", lambda: server.in_flight() == 2, every=0.02)
        farm.kill("gpu", signal.SIGKILL)
        # Nobody serves the model: what was sent is lost at its deadline, and the runs fail.
        farm.wait_batch(batch_id, timeout=120)
        lost = farm.db.execute("SELECT count(*) AS n FROM runs WHERE batch_id = %s AND status = 'failed'",
                               (batch_id,)).fetchone()["n"]
        assert lost > 0
        farm.gpu("gpu-2", server.url, concurrency=2)
        farm.wait_workers("gpu-2")
        said = farm.cli("retry", "--batch", str(batch_id)).stdout
        assert f"retried {lost} run(s)" in said
        farm.wait_batch(batch_id)
    runs = farm.db.execute("SELECT status, count(*) AS n FROM runs WHERE batch_id = %s GROUP BY status",
                           (batch_id,)).fetchall()
    assert [(r["status"], r["n"]) for r in runs] == [("completed", 6)]
    assert set(completions_per_interaction(farm.db, batch_id).values()) == {1}
