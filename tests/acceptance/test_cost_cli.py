"""The cost commands as a user types them: prices set/list, status's cost section, the
budget_exceeded pause, export --cost, cache stats/clear and show, against real Postgres
(the batches run in process with a fake model server that answers with usage)."""

from __future__ import annotations

import csv
import io
import json

from orchestrator.db.store import Store
from orchestrator.results import apply_results
from orchestrator.catalog import WorkflowCache
from orchestrator.states import claim_pending
from orchestrator.tasks import task_or_failure
from tests.acceptance.test_cli import cli
from tests.integration.test_cost import CACHED, QUICK, TWO_MODELS, CountingServer, execute, submit


def test_prices_set_carries_over_what_it_does_not_name_and_list_shows_the_canonical_name(db_url):
    cli(db_url, "prices", "set", "gemma2", "--input-per-1m", "0.5", "--per-hour", "2")
    said = cli(db_url, "prices", "set", "gemma2:latest", "--output-per-1m", "1.5").stdout
    assert "gemma2:latest: 0.5 per 1M input tokens, 1.5 per 1M output tokens, 2 per hour" in said
    (row,) = json.loads(cli(db_url, "prices", "list", "--json").stdout)
    assert row["model"] == "gemma2:latest" and (row["input_per_1m"], row["output_per_1m"], row["per_hour"]) == (0.5, 1.5, 2)
    table = cli(db_url, "prices", "list").stdout
    assert "gemma2:latest" in table and "1.5" in table


def test_prices_set_refuses_hostile_values_saying_what_and_where(db_url):
    for args, what in [(["--input-per-1m", "nan"], "--input-per-1m"), (["--output-per-1m", "1e400"], "--output-per-1m"),
                       (["--per-hour", "-1"], "--per-hour"), (["--per-hour", "inf"], "--per-hour"), ([], "at least one")]:
        proc = cli(db_url, "prices", "set", "m:1", *args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert what in proc.stderr, proc.stderr
    bad = cli(db_url, "prices", "set", "a\x1bb", "--per-hour", "1", check=False)
    assert bad.returncode == 2 and "control characters" in bad.stderr
    assert json.loads(cli(db_url, "prices", "list", "--json").stdout) == []  # nothing stored
    markup = "[bold red]x[/bold red]"
    cli(db_url, "prices", "set", markup, "--per-hour", "1")
    assert f"{markup}:latest" in cli(db_url, "prices", "list").stdout  # a name shown as it is, never as markup


def test_status_shows_the_cost_by_model_and_step_and_the_unpriced(conn, db_url, tmp_path):
    cli(db_url, "prices", "set", "m:1", "--input-per-1m", "1000")
    batch = submit(conn, tmp_path, TWO_MODELS, [["1", "a"], ["2", "a"]])
    server = CountingServer()
    execute(conn, server, batch)
    text = cli(db_url, "status", "--batch", str(batch)).stdout
    assert "cost by model" in text and "cost by step" in text and "m:1" in text
    assert "no price: costs 0" in text and "free:latest" in text
    data = json.loads(cli(db_url, "status", "--batch", str(batch), "--json").stdout)
    assert data["usage"]["prompt_tokens"] == server.prompt_tokens
    assert data["cost"]["cost_per_completed_run"] == data["cost"]["total"]["cost"] / 2
    assert f"{data['cost']['total']['cost']:g}"[:5] in text.replace(",", "")


def test_a_batch_paused_for_its_credit_limit_says_so_and_how_to_go_on(conn, db_url, tmp_path):
    cli(db_url, "prices", "set", "m:1", "--per-hour", "3600")
    batch = submit(conn, tmp_path, TWO_MODELS, [["1", "a"], ["2", "a"]])
    conn.execute("UPDATE batches SET credit_limit = 1 WHERE id = %s", (batch,))
    with conn.transaction():
        (claimed,) = claim_pending(Store(conn), limit=1, batch_id=batch)
    apply_results(Store(conn), [CountingServer().complete(task_or_failure(claimed))], WorkflowCache(), QUICK)
    text = cli(db_url, "status", "--batch", str(batch)).stdout
    assert "budget_exceeded" in text
    assert f"orchestrator resume --batch {batch} --credit-limit NEW" in text
    assert "credit: limit 1, spent 1.5, over by 0.5" in text
    data = json.loads(cli(db_url, "status", "--batch", str(batch), "--json").stdout)
    assert data["reason"] == "budget_exceeded" and data["cost"]["budget_exceeded"]
    assert data["forecast"]["spent"] == 1.5


def test_export_cost_adds_the_columns_and_cache_commands_and_show_tell_of_hits(conn, db_url, tmp_path):
    cli(db_url, "prices", "set", "m:1", "--input-per-1m", "1", "--output-per-1m", "1")
    first = submit(conn, tmp_path, CACHED, [["1", "a"]], "first.csv")
    server = CountingServer()
    execute(conn, server, first)
    second = submit(conn, tmp_path, CACHED, [["1", "b"]], "second.csv")
    execute(conn, server, second)

    rows = list(csv.DictReader(io.StringIO(cli(db_url, "export", "--batch", str(first), "--format", "csv",
                                               "--cost").stdout)))
    assert float(rows[0]["cost"]) > 0 and int(rows[0]["prompt_tokens"]) == server.prompt_tokens
    plain = json.loads(cli(db_url, "export", "--batch", str(first)).stdout.splitlines()[0])
    assert "cost" not in plain

    (stats,) = json.loads(cli(db_url, "cache", "stats", "--json").stdout)
    assert stats["model"] == "m:1" and stats["entries"] == 1 and stats["hits"] == 1
    assert stats["saved_prompt_tokens"] == server.prompt_tokens and stats["saved_cost"] > 0
    assert "m:1" in cli(db_url, "cache", "stats").stdout

    run = conn.execute("SELECT id FROM runs WHERE batch_id = %s", (second,)).fetchone()["id"]
    source = conn.execute("SELECT id, run_id FROM interactions WHERE batch_id = %s", (first,)).fetchone()
    shown = cli(db_url, "show", str(run)).stdout
    assert (f"answered from the cache: the output of interaction {source['id']} of run {source['run_id']} "
            f"in batch {first}") in shown
    assert "attempts" in shown

    assert "forgot 1 cache entry" in cli(db_url, "cache", "clear", "--model", "m:1").stdout
    # The answers are forgotten; the hits they served stay in the history.
    (stats,) = json.loads(cli(db_url, "cache", "stats", "--json").stdout)
    assert (stats["entries"], stats["hits"]) == (0, 1)
    assert "forgot 0 cache entries older than 3 day(s)" in cli(db_url, "cache", "clear", "--older-than", "3").stdout
    assert cli(db_url, "cache", "clear", "--model", "x\x01", check=False).returncode == 2
