"""What a batch cost, through the real code path: the local executor runs batches against
a fake model server that answers with usage (and counts what it served); `status`'s
figures (overview.batch_status), the forecast, export --cost, the cache's savings and
`show` are read back against what the server counted and the prices set."""

from __future__ import annotations

import itertools
import textwrap
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from common.messages import AiTask, Failure, FailureClass, TaskResult, Usage, utcnow
from common.retries import Backoff, RetryPolicy
from orchestrator import batches, cache, catalog, overview, prices
from orchestrator.catalog import WorkflowCache
from orchestrator.db.store import Store
from orchestrator.executor import LocalExecutor
from orchestrator.results import apply_results
from orchestrator.states import claim_pending
from orchestrator.tasks import task_or_failure
from orchestrator.workflow import load_text
from tests.integration.helpers import write_csv

QUICK = RetryPolicy(Backoff(base_s=0.002, max_s=0.004))

TWO_MODELS = """
name: costed
defaults: {retries: 2}
steps:
  - name: draft
    model: "m:1"
    prompt: "draft {{ input.x }}"
    next: [{when: "*", to: check}]
  - name: check
    model: "free"
    prompt: "check {{ steps.draft.output }}"
"""

CACHED = """
name: cached
steps:
  - name: ask
    model: "m:1"
    cache: true
    prompt: "ask {{ input.x }}"
"""


class CountingServer:
    """A model server that answers every call with usage, fails the first call of each
    `flaky` prompt once (with usage: the server did the work), and counts what it served."""

    def __init__(self, flaky: set[str] = frozenset()) -> None:
        self.flaky = set(flaky)
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.calls = 0
        self._lock = threading.Lock()
        self._n = itertools.count(1)

    def complete(self, task: AiTask) -> TaskResult:
        n = next(self._n)
        usage = Usage(prompt_tokens=100 + n, output_tokens=10 + n, call_s=1.5)
        with self._lock:
            self.calls += 1
            self.prompt_tokens += usage.prompt_tokens
            self.output_tokens += usage.output_tokens
            fail = task.prompt in self.flaky
            self.flaky.discard(task.prompt)
        if fail:
            return TaskResult(interaction_id=task.interaction_id, attempt=task.attempt, usage=usage, worker="fake",
                              failure=Failure(failure_class=FailureClass.SERVER_ERROR, message="hiccup"))
        return TaskResult(interaction_id=task.interaction_id, attempt=task.attempt, output=f"ok {task.prompt}",
                          usage=usage, worker="fake", started_at=utcnow(), finished_at=utcnow())

    def list_models(self) -> list[str]:
        return ["m:1", "free:latest"]


def submit(conn, tmp_path: Path, text: str, rows: list[list[str]], name: str = "in.csv") -> int:
    wf = load_text(textwrap.dedent(text))
    catalog.store(Store(conn), wf, text)
    return batches.submit(Store(conn), write_csv(tmp_path / name, ["x", "y"], rows), wf.name).batch_id


def execute(conn, server: CountingServer, batch_id: int) -> None:
    LocalExecutor(Store(conn), ai=server, scripts_dir=None, concurrency=2, idle_poll_s=0.01,
                  policy=QUICK).run(batch_id)


def price(conn, model: str, **amounts: str) -> None:
    prices.set_price(Store(conn), model, **{k: Decimal(v) for k, v in amounts.items()})


def attempts_sum(conn, batch_id: int, model: str) -> dict:
    return conn.execute(
        "SELECT sum(prompt_tokens) AS p, sum(output_tokens) AS o, sum(call_s) AS s, count(*) AS n"
        " FROM attempts WHERE batch_id = %s AND model = %s", (batch_id, model)).fetchone()


def test_status_counts_every_attempt_costs_them_at_their_prices_and_flags_the_unpriced(conn, tmp_path):
    price(conn, "m:1", input_per_1m="0.5", output_per_1m="1.5", per_hour="2.0")
    batch = submit(conn, tmp_path, TWO_MODELS, [["1", "a"], ["2", "a"], ["3", "a"]])
    server = CountingServer(flaky={"draft 2"})
    execute(conn, server, batch)

    # A late duplicate of a completed attempt: recorded as ignored, its usage counted too.
    done = conn.execute("SELECT id, attempt FROM interactions WHERE batch_id = %s AND step = 'draft'"
                        " ORDER BY id LIMIT 1", (batch,)).fetchone()
    late = TaskResult(interaction_id=done["id"], attempt=done["attempt"], output="again", worker="fake",
                      usage=Usage(prompt_tokens=7, output_tokens=3, call_s=0.5))
    assert apply_results(Store(conn), [late], WorkflowCache(), QUICK)["ignored"] == 1
    server.prompt_tokens += 7
    server.output_tokens += 3

    status = overview.batch_status(Store(conn), batch)
    c = status["cost"]
    # The tokens are the server's own count: retries and the ignored duplicate included.
    assert status["usage"]["prompt_tokens"] == c["total"]["prompt_tokens"] == server.prompt_tokens
    assert status["usage"]["output_tokens"] == c["total"]["output_tokens"] == server.output_tokens
    assert c["total"]["attempts"] == server.calls + 1 == 8  # 3 + 3 calls, one retry, one late duplicate

    by_model = {m["model"]: m for m in c["models"]}
    assert set(by_model) == {"m:1", "free:latest"}  # canonical names
    paid = by_model["m:1"]
    sums = attempts_sum(conn, batch, "m:1")
    expected = (Decimal("0.5") * sums["p"] + Decimal("1.5") * sums["o"]) / 1_000_000 + Decimal("2.0") * Decimal(
        repr(sums["s"])) / 3600
    assert paid["attempts"] == 5 and paid["unpriced"] is False
    assert paid["cost"] == pytest.approx(float(expected))
    assert paid["model_s"] == pytest.approx(sums["s"])
    free = by_model["free:latest"]
    assert free["unpriced"] is True and free["unpriced_attempts"] == 3 and free["cost"] == 0
    assert c["total"]["cost"] == pytest.approx(float(expected))
    assert c["spent"] == pytest.approx(float(expected))  # the batch's own spend agrees
    assert c["cost_per_completed_run"] == pytest.approx(float(expected) / 3)
    assert c["credit_limit"] is None and c["left"] is None and not c["budget_exceeded"]

    steps = {s["step"]: s for s in c["steps"]}
    assert steps["draft"]["models"] == ["m:1"] and steps["draft"]["attempts"] == 5
    assert steps["check"]["prompt_tokens"] == attempts_sum(conn, batch, "free:latest")["p"]

    # Done: nothing left to pay for.
    assert status["forecast"]["to_go"] == 0 and status["forecast"]["spent"] == pytest.approx(float(expected))


def test_a_price_set_later_does_not_rewrite_what_was_recorded(conn, tmp_path):
    batch = submit(conn, tmp_path, TWO_MODELS, [["1", "a"]])
    execute(conn, CountingServer(), batch)
    price(conn, "m:1", input_per_1m="1000")
    price(conn, "m:1", output_per_1m="2")  # carried: input stays 1000
    (row,) = prices.in_force(Store(conn))
    assert (row.model, row.input_per_1m, row.output_per_1m, row.per_hour) == ("m:1", 1000, 2, None)
    c = overview.batch_status(Store(conn), batch)["cost"]
    assert c["total"]["cost"] == 0 and c["total"]["unpriced"] is True


def test_gemma2_and_gemma2_latest_are_one_model(conn):
    price(conn, "gemma2", input_per_1m="0.5")
    price(conn, "gemma2:latest", per_hour="3")
    (row,) = prices.in_force(Store(conn))
    assert (row.model, row.input_per_1m, row.per_hour) == ("gemma2:latest", Decimal("0.5"), 3)


def test_a_credit_limit_reached_says_budget_exceeded_and_how_to_go_on(conn, tmp_path):
    price(conn, "m:1", per_hour="3600")  # a call of 1.5 s costs 1.5
    batch = submit(conn, tmp_path, TWO_MODELS, [["1", "a"], ["2", "a"], ["3", "a"], ["4", "a"]])
    conn.execute("UPDATE batches SET credit_limit = 2 WHERE id = %s", (batch,))
    server = CountingServer()
    for _ in range(2):  # one call at a time, as dispatch would with the credit left
        with conn.transaction():
            (claimed,) = claim_pending(Store(conn), limit=1, batch_id=batch)
        apply_results(Store(conn), [server.complete(task_or_failure(claimed))], WorkflowCache(), QUICK)
    status = overview.batch_status(Store(conn), batch)
    assert status["state"] == "paused" and status["reason"] == "budget_exceeded"
    c = status["cost"]
    assert c["budget_exceeded"] and c["credit_limit"] == 2 and c["spent"] == pytest.approx(3.0)
    assert c["left"] == pytest.approx(-1.0)
    f = status["forecast"]
    assert f["spent"] == pytest.approx(3.0) and f["credit_limit"] == 2 and f["to_go"] is None  # no run ended yet


def test_cache_hits_say_what_they_saved_and_show_names_the_source(conn, tmp_path):
    price(conn, "m:1", input_per_1m="1", output_per_1m="1")
    first = submit(conn, tmp_path, CACHED, [["1", "a"], ["2", "a"]], "first.csv")
    server = CountingServer()
    execute(conn, server, first)
    calls = server.calls
    second = submit(conn, tmp_path, CACHED, [["1", "b"], ["2", "b"]], "second.csv")
    execute(conn, server, second)
    assert server.calls == calls  # both answered from the cache

    c = overview.batch_status(Store(conn), second)["cost"]
    source = overview.batch_status(Store(conn), first)["cost"]["total"]
    t = c["total"]
    assert t["cache_hits"] == 2 and t["prompt_tokens"] == 0 and t["cost"] == 0
    assert (t["saved_prompt_tokens"], t["saved_output_tokens"]) == (source["prompt_tokens"], source["output_tokens"])
    assert t["saved_cost"] == pytest.approx(source["cost"])

    stats = {s.model: s for s in cache.stats(Store(conn))}
    assert stats["m:1"].entries == 2 and stats["m:1"].hits == 2
    assert stats["m:1"].saved_prompt_tokens == source["prompt_tokens"]
    assert float(stats["m:1"].saved_cost) == pytest.approx(source["cost"])

    run = conn.execute("SELECT id FROM runs WHERE batch_id = %s ORDER BY id LIMIT 1", (second,)).fetchone()["id"]
    story = overview.run_story(Store(conn), run)
    (hit,) = story["interactions"]
    origin = conn.execute("SELECT run_id, batch_id FROM interactions WHERE id = %s", (hit["cached_from"],)).fetchone()
    assert hit["cached_from_run"] == origin["run_id"] and hit["cached_from_batch"] == first
    assert story["attempts"][0]["worker"] == "cache" and story["attempts"][0]["cost"] == 0

    assert cache.clear(Store(conn), model="m:1") == 2
    assert conn.execute("SELECT count(*) AS n FROM interactions WHERE batch_id = %s AND output IS NOT NULL",
                        (second,)).fetchone()["n"] == 2  # the outputs stay


def test_export_cost_gives_each_run_its_cost_and_tokens(conn, tmp_path):
    price(conn, "m:1", input_per_1m="1")
    batch = submit(conn, tmp_path, TWO_MODELS, [["1", "a"], ["2", "a"]])
    execute(conn, CountingServer(), batch)
    records = list(overview.export_batch(Store(conn), batch, with_cost=True))
    for r in records:
        want = conn.execute(
            "SELECT sum(a.prompt_tokens) AS p, sum(a.output_tokens) AS o, coalesce(sum(a.cost), 0) AS c"
            " FROM attempts a JOIN interactions i ON i.id = a.interaction_id WHERE i.run_id = %s",
            (r["run_id"],)).fetchone()
        assert (r["prompt_tokens"], r["output_tokens"]) == (want["p"], want["o"])
        assert r["cost"] == pytest.approx(float(want["c"])) and r["cost"] > 0
    assert "cost" not in next(iter(overview.export_batch(Store(conn), batch)))


def test_prometheus_counts_tokens_seconds_cost_and_hits_per_model_and_a_purge_takes_nothing_back(conn, db_url,
                                                                                                  tmp_path):
    from orchestrator import retention
    from orchestrator.db import open_pool
    from orchestrator.metrics import FarmCollector
    from tests.integration.test_progress import labels, scrape

    price(conn, "m:1", input_per_1m="1", per_hour="36")
    first = submit(conn, tmp_path, CACHED, [["1", "a"], ["2", "a"]], "first.csv")
    server = CountingServer()
    execute(conn, server, first)
    second = submit(conn, tmp_path, CACHED, [["1", "b"]], "second.csv")
    execute(conn, server, second)
    pool = open_pool(db_url, size=1)
    try:
        got = scrape(FarmCollector(pool))
        m = labels(model="m:1")
        assert got[("wavefarm_model_tokens_total", labels(model="m:1", kind="prompt"))] == server.prompt_tokens
        assert got[("wavefarm_model_tokens_total", labels(model="m:1", kind="output"))] == server.output_tokens
        assert got[("wavefarm_model_seconds_total", m)] == pytest.approx(1.5 * server.calls)
        assert got[("wavefarm_model_cost_total", m)] == pytest.approx(server.prompt_tokens / 1e6 + 0.015 * server.calls)
        assert got[("wavefarm_cache_hits_total", m)] == 1
        assert got[("wavefarm_model_attempts_total", m)] == server.calls + 1
        retention.purge(Store(conn), first)
        assert scrape(FarmCollector(pool))[("wavefarm_model_tokens_total", labels(model="m:1", kind="prompt"))] \
            == server.prompt_tokens  # a counter never goes down
    finally:
        pool.close()
