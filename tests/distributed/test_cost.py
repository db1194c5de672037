"""What a batch costs, its credit limit and the interaction cache on a running farm, by the
commands a user types, with workers started as SPEC.md shows them (no --name) and the
default timeouts. Counted where it matters: on the model server, which says how many
calls it answered and how many tokens it reported."""

from __future__ import annotations

import json
import time
from decimal import Decimal

from tests.distributed.conftest import GEMMA
from tests.distributed.farm import HERE, READY, SCRIPTS, postings
from tests.model_server import ModelServer

CHAIN = HERE / "workflows" / "chain.yaml"


def cached_copy(tmp_path, name: str):
    """chain.yaml under another name, with the cache on for the whole workflow."""
    text = CHAIN.read_text().replace("name: chain", f"name: {name}\ndefaults: {{cache: true}}", 1)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def start(farm, server_url: str) -> None:
    farm.serve()
    farm.gpu("gpu-a", server_url, concurrency=2, named=False)
    farm.gpu("gpu-b", server_url, concurrency=2, named=False)
    farm.scripts(named=False)
    farm.wait_for("two GPU workers and a script worker", lambda: farm.db.execute(
        "SELECT count(*) FILTER (WHERE kind = 'ai') AS ai, count(*) FILTER (WHERE kind = 'script') AS s"
        f" FROM workers WHERE {READY}").fetchone() == {"ai": 2, "s": 1})


def test_tokens_match_the_server_and_a_second_identical_batch_calls_no_model(farm, tmp_path):
    with ModelServer(models=[GEMMA], latency=0.05) as server:
        start(farm, server.url)
        farm.cli("prices", "set", "gemma3:1b", "--input-per-1m", "2", "--output-per-1m", "6")
        rows = postings(tmp_path / "in.csv", 12)
        first = farm.submit(rows, cached_copy(tmp_path, "costed"), SCRIPTS)
        farm.wait_batch(first)
        status = json.loads(farm.cli("status", "--batch", str(first), "--json").stdout)
        # The batch's token totals are what the model server counted.
        assert status["usage"]["prompt_tokens"] == server.prompt_tokens[GEMMA]
        assert status["usage"]["output_tokens"] == server.output_tokens[GEMMA]
        expected = (Decimal(server.prompt_tokens[GEMMA]) * 2 + Decimal(server.output_tokens[GEMMA]) * 6) / 1_000_000
        assert abs(Decimal(str(status["cost"]["total"]["cost"])) - expected) < Decimal("1e-9")
        calls = server.served[GEMMA]
        assert calls == 24

        second = farm.submit(rows, cached_copy(tmp_path, "costed_again"), SCRIPTS)
        farm.wait_batch(second)
        assert server.requests[GEMMA] == calls, "the second batch called the model"
    runs = farm.db.execute("SELECT status, count(*) AS n FROM runs WHERE batch_id = %s GROUP BY status",
                           (second,)).fetchall()
    assert [(r["status"], r["n"]) for r in runs] == [("completed", 12)]
    hits = farm.db.execute("SELECT count(*) AS n FROM interactions WHERE batch_id = %s AND cached_from IS NOT NULL",
                           (second,)).fetchone()["n"]
    assert hits == 24
    shown = farm.cli("status", "--batch", str(second)).stdout
    assert "cache" in shown.lower()


def test_a_credit_limit_pauses_the_batch_within_the_limit_plus_what_was_in_flight(farm, tmp_path):
    with ModelServer(models=[GEMMA], latency=0.3, slots=4) as server:
        start(farm, server.url)
        # 36 an hour of call time: about 0.003 a call of 0.3 s.
        farm.cli("prices", "set", "gemma3:1b", "--per-hour", "36")
        farm.cli("workflow", "load", str(CHAIN), "--scripts-dir", str(SCRIPTS))
        done = farm.cli("submit", "--batch", str(postings(tmp_path / "in.csv", 40)), "--workflow", "chain",
                        "--credit-limit", "0.05", "--json")
        batch_id = json.loads(done.stdout.strip().splitlines()[-1])["batch_id"]
        farm.wait_for("the batch to stop at its credit limit", lambda: farm.db.execute(
            "SELECT pause_reason FROM batches WHERE id = %s", (batch_id,)).fetchone()["pause_reason"] == "budget_exceeded",
            timeout=120)
        farm.wait_for("the calls in flight to finish", lambda: farm.db.execute(
            "SELECT count(*) AS n FROM interactions WHERE batch_id = %s AND status = 'dispatched'",
            (batch_id,)).fetchone()["n"] == 0)
        time.sleep(1)
        spent = farm.db.execute("SELECT spent FROM batches WHERE id = %s", (batch_id,)).fetchone()["spent"]
        most = farm.db.execute("SELECT max(cost) AS c FROM attempts WHERE batch_id = %s", (batch_id,)).fetchone()["c"]
        # Dispatch put no more in flight than the credit left could pay for: the overshoot
        # is what was in flight when the limit was reached (here, at most the 8 slots' worth).
        assert Decimal("0.05") <= spent <= Decimal("0.05") + 8 * most
        calls = server.served[GEMMA]
        assert calls < 40 * 2
        status = json.loads(farm.cli("status", "--batch", str(batch_id), "--json").stdout)
        assert (status["state"], status["reason"]) == ("paused", "budget_exceeded")

        refused = farm.cli("resume", "--batch", str(batch_id), check=False)
        assert refused.returncode != 0 and "--credit-limit" in refused.stderr
        time.sleep(1)
        assert server.served[GEMMA] == calls, "a call started while the batch was stopped at its limit"
        farm.cli("resume", "--batch", str(batch_id), "--credit-limit", "100")
        farm.wait_batch(batch_id)
    runs = farm.db.execute("SELECT status, count(*) AS n FROM runs WHERE batch_id = %s GROUP BY status",
                           (batch_id,)).fetchall()
    assert [(r["status"], r["n"]) for r in runs] == [("completed", 40)]
