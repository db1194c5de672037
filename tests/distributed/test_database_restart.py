"""The commands that stay on the database for a whole batch (`submit --wait` watching a
farm, `submit --local` running the batch itself) through a Postgres restart: one line
saying the database was lost, a wait, and the batch carried on to its normal end and
exit status. The Postgres is the test's own, so restarting it disturbs nobody."""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import ExitStack

import psycopg
import pytest

from orchestrator.db import connect
from orchestrator.db.migrate import upgrade
from tests.distributed.conftest import GEMMA
from tests.distributed.farm import BIN, Farm, broker, postings
from tests.model_server import ModelServer
from tests.private_services import PrivatePostgres

ROWS = 40
# Every run completes, so the exit status tells a finished batch (0) from a crash (1).
WORKFLOW = """\
name: two_calls
steps:
  - name: summary
    model: "gemma3:1b"
    prompt: "Summarise {{ input.title }} at {{ input.company }}."
    next: [{when: "*", to: check}]
  - name: check
    model: "gemma3:1b"
    prompt: "Check this summary: {{ steps.summary.output }}"
"""


def runs_by_status(url: str) -> dict[str, int]:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    except psycopg.OperationalError:
        return {}  # restarting


@pytest.mark.parametrize("mode", ["wait", "local"])
def test_a_database_restart_under_submit_is_waited_for_and_the_batch_goes_on(tmp_path, mode):
    with PrivatePostgres.running() as pg, ModelServer(models=[GEMMA], latency=0.2, slots=4) as server, \
         ExitStack() as stack:
        conn = connect(pg.url)
        upgrade(conn)
        conn.close()
        (tmp_path / "two_calls.yaml").write_text(WORKFLOW)
        argv = [str(BIN / "orchestrator"), "submit", "--batch", str(postings(tmp_path / "rows.csv", ROWS)),
                "--workflow", str(tmp_path / "two_calls.yaml")]
        if mode == "wait":  # a farm runs the batch; submit watches it
            farm = Farm(pg.url, stack.enter_context(broker("amqp")), tmp_path)
            stack.callback(farm.stop_all)
            farm.serve()
            farm.gpu("gpu", server.url)
            farm.wait_workers("gpu")
            argv.append("--wait")
        else:
            argv += ["--local", "--ollama-url", server.url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAVEFARM_")}
        stderr = (tmp_path / "submit.err").open("w+")
        submit = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                  env={**env, "WAVEFARM_DATABASE_URL": pg.url})
        stack.callback(lambda: submit.poll() is None and submit.kill())

        for _ in range(600):  # mid-batch: some runs ended, most still running
            if runs_by_status(pg.url).get("completed", 0) >= 2 or submit.poll() is not None:
                break
            time.sleep(0.1)
        assert submit.poll() is None, "the batch ended before the restart"
        pg.restart()

        submit.communicate(timeout=240)
        stderr.seek(0)
        said = stderr.read()
        assert "Traceback" not in said, said
        assert submit.returncode == 0, said  # every run completed
        assert said.count("lost the database") == 1, said
        assert "AdminShutdown" in said and "waiting for it to come back" in said, said
        assert "the database is back" in said, said
        assert runs_by_status(pg.url) == {"completed": ROWS}
