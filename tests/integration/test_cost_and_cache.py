"""What a batch costs and the interaction cache, through the local executor against the
fake Ollama server over real HTTP (the one edge we fake; it counts what it served), on
the real database: usage per attempt across retries, prices in force, the cache's hits
and misses (another model digest, another option, another prompt, the same run), a
rerun that pays only for the changed step, and a credit limit."""

from __future__ import annotations

import textwrap
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from common.messages import AiTask, Failure, FailureClass, TaskResult, Usage, utcnow
from common.retries import Backoff, RetryPolicy
from gpu_worker.backends.ollama import OllamaBackend
from orchestrator import batches, cache, catalog, controls
from orchestrator.budget import Budget, over_budget
from orchestrator.controls import ControlRefused
from orchestrator.db import connect
from orchestrator.db.store import Store
from orchestrator.executor import LocalExecutor
from orchestrator.rerun import RetryRequest, retry
from orchestrator.workflow import load_text
from tests.integration.helpers import write_csv
from tests.model_server import ModelServer

MODEL = "gemma3:1b"
QUICK_RETRIES = RetryPolicy(Backoff(base_s=0.002, max_s=0.004))

CHAIN = """
name: {name}
defaults: {{cache: true}}
steps:
  - name: summary
    model: "gemma3:1b"
    prompt: "Summarise {{{{ input.x }}}}"
    next: [{{when: "*", to: grade}}]
  - name: grade
    model: "gemma3:1b"
    prompt: "{grade_prompt} {{{{ steps.summary.output }}}}"
    options: {{temperature: {temperature}}}
    next: [{{when: "*", to: tags}}]
  - name: tags
    model: "gemma3:1b"
    prompt: "Tags for {{{{ steps.grade.output }}}}"
"""


def chain(name: str = "chain", grade_prompt: str = "Grade", temperature: float = 0) -> str:
    return CHAIN.format(name=name, grade_prompt=grade_prompt, temperature=temperature)


def submit(conn, tmp_path: Path, text: str, rows: list[str], *, credit_limit: Decimal | None = None,
           csv_name: str = "in.csv") -> int:
    wf = load_text(textwrap.dedent(text))
    catalog.store(Store(conn), wf, text)
    path = write_csv(tmp_path / csv_name, ["x"], [[r] for r in rows])
    return batches.submit(Store(conn), path, wf.name, credit_limit=credit_limit).batch_id


def execute(conn, server: ModelServer, batch_id: int, concurrency: int = 4) -> None:
    with OllamaBackend(server.url, pool_size=concurrency) as backend:
        LocalExecutor(Store(conn), ai=backend, scripts_dir=None, concurrency=concurrency, idle_poll_s=0.01,
                      policy=QUICK_RETRIES).run(batch_id)


def by_step(conn, batch_id: int) -> dict[str, list[dict]]:
    """Each step's interactions, in the order of their rows' x (then of their visits)."""
    rows = conn.execute("SELECT i.id, i.run_id, i.step, i.status, i.output, i.cached_from FROM interactions i"
                        " JOIN runs r ON r.id = i.run_id WHERE i.batch_id = %s ORDER BY r.input->>'x', i.visit",
                        (batch_id,)).fetchall()
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["step"], []).append(r)
    return out


def run_statuses(conn, batch_id: int) -> list[str]:
    return [r["status"] for r in conn.execute("SELECT status FROM runs WHERE batch_id = %s ORDER BY id",
                                              (batch_id,)).fetchall()]


def test_a_second_batch_of_the_same_rows_on_an_identical_workflow_calls_no_model(conn, tmp_path):
    with ModelServer(models=[MODEL]) as server:
        first = submit(conn, tmp_path, chain("first"), ["a", "b", "c"])
        execute(conn, server, first)
        assert server.served[MODEL] == 9
        # The same file through a copy of the workflow under another name: new runs, same questions.
        second = submit(conn, tmp_path, chain("second"), ["a", "b", "c"])
        execute(conn, server, second)
        assert server.served[MODEL] == 9, "a cached question went to the model again"
    assert run_statuses(conn, second) == ["completed"] * 3
    old, new = by_step(conn, first), by_step(conn, second)
    for step in ("summary", "grade", "tags"):
        assert [i["output"] for i in new[step]] == [i["output"] for i in old[step]]
        assert [i["cached_from"] for i in new[step]] == [i["id"] for i in old[step]]
    # A hit has an attempt record with no usage of its own.
    usage = conn.execute("SELECT count(*) AS n, sum(prompt_tokens) AS tokens, min(worker) AS worker FROM attempts a"
                         " JOIN interactions i ON i.id = a.interaction_id WHERE i.batch_id = %s", (second,)).fetchone()
    assert (usage["n"], usage["tokens"], usage["worker"]) == (9, None, cache.CACHE_WORKER)


def test_another_model_digest_another_option_or_another_prompt_is_a_miss(conn, tmp_path):
    with ModelServer(models=[MODEL]) as server:
        execute(conn, server, submit(conn, tmp_path, chain("base"), ["a"]))
        assert server.served[MODEL] == 3
        # Another option on the second step: it and the step after it (whose prompt holds
        # its output) are asked again; the first step is a hit.
        changed = submit(conn, tmp_path, chain("hotter", temperature=0.7), ["a"])
        execute(conn, server, changed)
        steps = by_step(conn, changed)
        assert steps["summary"][0]["cached_from"] is not None
        assert steps["grade"][0]["cached_from"] is None
        assert server.served[MODEL] == 4 + (steps["tags"][0]["cached_from"] is None)
        # Another prompt on the second step: the same.
        served = server.served[MODEL]
        reworded = submit(conn, tmp_path, chain("reworded", grade_prompt="Mark"), ["a"])
        execute(conn, server, reworded)
        steps = by_step(conn, reworded)
        assert steps["summary"][0]["cached_from"] is not None and steps["grade"][0]["cached_from"] is None
        assert server.served[MODEL] >= served + 1
        # The model pulled again (another digest): nothing it answered before is reused.
        server.repull(MODEL)
        served = server.served[MODEL]
        again = submit(conn, tmp_path, chain("repulled"), ["a"])
        execute(conn, server, again)
        assert server.served[MODEL] == served + 3
        assert all(i["cached_from"] is None for rows in by_step(conn, again).values() for i in rows)


def test_a_step_without_cache_asks_again_and_a_loop_never_hits_its_own_run(conn, tmp_path):
    loop = """
name: loop
defaults: {cache: true, retries: 0}
steps:
  - name: ask
    model: "gemma3:1b"
    max_visits: 3
    on_max_visits: done
    prompt: "Same question for {{ input.x }}"
    next: [{when: "*", to: ask}]
  - name: done
    model: "gemma3:1b"
    cache: false
    prompt: "Done {{ input.x }}"
"""
    with ModelServer(models=[MODEL]) as server:
        first = submit(conn, tmp_path, loop, ["a"])
        execute(conn, server, first)
        # Three visits of one question in one run: each was asked (a loop samples again).
        assert server.served[MODEL] == 4
        assert all(i["cached_from"] is None for rows in by_step(conn, first).values() for i in rows)
        second = submit(conn, tmp_path, loop.replace("name: loop", "name: loop2"), ["a"])
        execute(conn, server, second)
        steps = by_step(conn, second)
        # Another run: the loop's visits are hits; `done` (cache: false) asks again.
        assert all(i["cached_from"] is not None for i in steps["ask"])
        assert steps["done"][0]["cached_from"] is None
        assert server.served[MODEL] == 5


def test_retry_from_a_step_whose_prompt_changed_pays_only_for_it_and_what_follows(conn, tmp_path):
    with ModelServer(models=[MODEL]) as server:
        batch_id = submit(conn, tmp_path, chain("chain"), ["a", "b"])
        execute(conn, server, batch_id)
        assert server.served[MODEL] == 6
        # A new version in which only the last step's prompt changed; the batch moves to
        # it and reruns from the first step: the first two steps are answered from the
        # cache (their superseded answers in the same run), only `tags` is asked.
        text = chain("chain").replace("Tags for", "Keywords for")
        catalog.store(Store(conn), load_text(text), text)
        plan = retry(Store(conn), RetryRequest(batch_id, from_step="summary", version="latest"))
        assert plan.done
        execute(conn, server, batch_id)
        assert server.served[MODEL] == 8
    assert run_statuses(conn, batch_id) == ["completed"] * 2
    live = conn.execute("SELECT step, cached_from IS NOT NULL AS hit FROM interactions WHERE batch_id = %s"
                        " AND NOT superseded ORDER BY id", (batch_id,)).fetchall()
    assert sorted((r["step"], r["hit"]) for r in live) == sorted(
        [("summary", True), ("grade", True), ("tags", False)] * 2)


class MeteredModel:
    """A model whose every call uses 1M prompt tokens, 100k output tokens and half an hour;
    the first attempt of every `fail_every`-th interaction answers text where JSON was
    asked (a failure that still used the model), its second a proper answer."""

    def __init__(self, fail_every: int = 1) -> None:
        self.seen: set[int] = set()
        self.fail_every = fail_every

    def complete(self, task: AiTask) -> TaskResult:
        now = utcnow()
        if task.interaction_id % self.fail_every == 0 and task.interaction_id not in self.seen:
            self.seen.add(task.interaction_id)
            return TaskResult(interaction_id=task.interaction_id, attempt=task.attempt, worker="metered",
                              failure=Failure(failure_class=FailureClass.INVALID_OUTPUT, message="not JSON"),
                              usage=Usage(prompt_tokens=1_000_000, output_tokens=100_000, call_s=1800.0),
                              started_at=now, finished_at=now)
        return TaskResult(interaction_id=task.interaction_id, attempt=task.attempt, worker="metered", output="ok",
                          usage=Usage(prompt_tokens=1_000_000, output_tokens=100_000, call_s=1800.0),
                          started_at=now, finished_at=now)

    def list_models(self) -> list[str]:
        return ["gemma3:1b"]


def set_price(conn, model: str, input_per_1m: str, output_per_1m: str, per_hour: str) -> None:
    conn.execute("INSERT INTO prices (model, input_per_1m, output_per_1m, per_hour) VALUES (wavefarm_model(%s), %s, %s, %s)",
                 (model, Decimal(input_per_1m), Decimal(output_per_1m), Decimal(per_hour)))


@pytest.mark.parametrize(("prices", "usage", "cost"), [
    # 1,000,000 prompt tokens at 0.5 + 200,000 output at 1.5 + an hour at 2.0/hour
    (("0.5", "1.5", "2.0"), (1_000_000, 200_000, 3600.0), Decimal("2.8")),
    ((None, "1", None), (5, None, None), Decimal(0)),
    (("3", None, None), (1, 9, 99.0), Decimal("0.000003")),
])
def test_the_cost_of_an_attempt_is_its_tokens_and_call_time_at_the_prices(conn, prices, usage, cost):
    got = conn.execute("SELECT wavefarm_cost(%s, %s, %s, %s, %s, %s) AS c",
                       (*(None if p is None else Decimal(p) for p in prices), *usage)).fetchone()["c"]
    assert got == cost


ONE_STEP = """
name: one
steps:
  - name: only
    model: gemma3
    prompt: "Answer {{ input.x }}"
"""


def test_each_attempt_keeps_its_usage_and_its_cost_at_the_prices_in_force(conn, tmp_path):
    # `gemma3` in the workflow is `gemma3:latest` on the hosts: priced under either name.
    set_price(conn, "gemma3:latest", "0.5", "1.5", "2")
    batch_id = submit(conn, tmp_path, ONE_STEP, ["a", "b"])
    LocalExecutor(Store(conn), ai=MeteredModel(), scripts_dir=None, idle_poll_s=0.01, policy=QUICK_RETRIES).run(batch_id)
    attempts = conn.execute("SELECT a.attempt, a.outcome, a.model, a.prompt_tokens, a.cost FROM attempts a"
                            " WHERE a.batch_id = %s ORDER BY a.interaction_id, a.attempt", (batch_id,)).fetchall()
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "failed"), (2, "completed")] * 2
    # 1M prompt tokens at 0.5 + 100k output at 1.5 + half an hour at 2/hour = 0.5 + 0.15 + 1.0
    assert {a["model"] for a in attempts} == {"gemma3:latest"}
    assert [a["cost"] for a in attempts] == [Decimal("1.65")] * 4
    assert conn.execute("SELECT spent FROM batches WHERE id = %s", (batch_id,)).fetchone()["spent"] == Decimal("6.6")
    # A new price applies from now on: what was recorded keeps its cost.
    set_price(conn, "gemma3", "5", "15", "20")
    assert conn.execute("SELECT sum(cost) AS c FROM attempts WHERE batch_id = %s", (batch_id,)).fetchone()["c"] == \
        Decimal("6.6")


def test_a_credit_limit_pauses_the_batch_and_a_plain_resume_is_refused(conn, db_url, tmp_path):
    set_price(conn, "gemma3", "0.5", "1.5", "2")  # 1.65 an attempt with MeteredModel
    batch_id = submit(conn, tmp_path, ONE_STEP, [str(i) for i in range(20)], credit_limit=Decimal("5"))
    # The executor waits for a paused batch to be resumed, as `submit --local` does.
    worker_conn = connect(db_url)
    # Every third interaction fails once: fewer failures in a row than escalate a step.
    executor = LocalExecutor(Store(worker_conn), ai=MeteredModel(fail_every=3), scripts_dir=None, concurrency=1,
                             idle_poll_s=0.01, policy=QUICK_RETRIES)
    thread = threading.Thread(target=executor.run, args=(batch_id,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while Store(conn).batch(batch_id).paused_at is None or in_flight(conn, batch_id):
            assert time.monotonic() < deadline, "the batch did not stop at its credit limit"
            time.sleep(0.05)
        batch = Store(conn).batch(batch_id)
        assert (batch.pause_reason, batch.credit_limit) == ("budget_exceeded", Decimal("5"))
        # The limit plus at most what was in flight (here one call: the credit left paid for
        # no more).
        assert Decimal("5") <= batch.spent <= Decimal("5") + Decimal("1.65")
        with pytest.raises(ControlRefused, match="--credit-limit"):
            controls.resume(Store(conn), batch_id)
        with pytest.raises(ControlRefused, match="spent"):
            controls.resume(Store(conn), batch_id, credit_limit=Decimal("1"))
        controls.resume(Store(conn), batch_id, credit_limit=Decimal("1000"))
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        worker_conn.close()
    assert run_statuses(conn, batch_id) == ["completed"] * 20
    assert Store(conn).batch(batch_id).paused_at is None


def in_flight(conn, batch_id: int) -> int:
    return conn.execute("SELECT count(*) AS n FROM interactions WHERE batch_id = %s AND status = 'dispatched'",
                        (batch_id,)).fetchone()["n"]


def test_a_credit_limit_of_zero_on_a_priced_model_pauses_at_once(conn, tmp_path):
    set_price(conn, "gemma3", "0.5", "1.5", "2")
    batch_id = submit(conn, tmp_path, ONE_STEP, ["a"], credit_limit=Decimal("0"))
    budget = Budget.read(Store(conn), [(batch_id, "ai", "gemma3")])
    assert budget.allow(batch_id, "ai", "gemma3", 8) == 0
    assert over_budget(Store(conn), budget.spent_all) == [batch_id]
    assert Store(conn).batch(batch_id).pause_reason == "budget_exceeded"


def test_dispatch_puts_no_more_in_flight_than_the_credit_left_pays_for(conn, tmp_path):
    set_price(conn, "gemma3", "0.5", "1.5", "2")
    batch_id = submit(conn, tmp_path, ONE_STEP, [str(i) for i in range(10)], credit_limit=Decimal("10"))
    # Nothing costed yet: one call at a time until the first cost is known.
    budget = Budget.read(Store(conn), [(batch_id, "ai", "gemma3")])
    assert budget.allow(batch_id, "ai", "gemma3", 8) == 1
    budget.spend(batch_id, "ai", "gemma3", 1)
    assert budget.allow(batch_id, "ai", "gemma3", 8) == 0
    # Two attempts recorded at 1.65 each: 10 - 3.3 = 6.7 left, four more calls fit, not five.
    conn.execute("INSERT INTO attempts (interaction_id, batch_id, attempt, outcome, model, cost)"
                 " SELECT id, batch_id, 1, 'ignored', 'gemma3:latest', 1.65 FROM interactions WHERE batch_id = %s"
                 " ORDER BY id LIMIT 2", (batch_id,))
    conn.execute("UPDATE batches SET spent = 3.3 WHERE id = %s", (batch_id,))
    budget = Budget.read(Store(conn), [(batch_id, "ai", "gemma3")])
    assert budget.allow(batch_id, "ai", "gemma3", 8) == 4
    budget.spend(batch_id, "ai", "gemma3", 4)
    assert budget.allow(batch_id, "ai", "gemma3", 8) == 0  # 0.1 left, and calls are in flight
