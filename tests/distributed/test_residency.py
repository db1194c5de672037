"""Model residency on a running farm, against fake Ollama hosts that hold a limited number
of models and count every load: workers started as SPEC.md shows them (no --name), the
default timeouts; only --max-loaded says what each host holds, as a user would."""

from __future__ import annotations

import json
import signal

import pytest

from tests.distributed.farm import HERE, completions_per_interaction, postings
from tests.model_server import ModelServer

FOUR = ["gemma3:1b", "qwen2.5:7b", "phi3:latest", "gemma2:latest"]
FOUR_MODELS = HERE / "workflows" / "four_models.yaml"


def workflow(tmp_path, name: str, steps: list[tuple[str, str, dict]]) -> object:
    """A chain of AI steps (name, model, options) as a workflow file."""
    lines = [f"name: {name}", "steps:"]
    for i, (step, model, options) in enumerate(steps):
        lines += [f"  - name: {step}", f"    model: \"{model}\"", f"    prompt: \"{step} for {{{{ input.title }}}}\""]
        if options:
            lines.append(f"    options: {json.dumps(options)}")
        if i + 1 < len(steps):
            lines.append(f"    next: [{{when: \"*\", to: {steps[i + 1][0]}}}]")
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def all_done_once(farm, batch_id: int, runs: int) -> None:
    statuses = farm.db.execute("SELECT status, count(*) AS n FROM runs WHERE batch_id = %s GROUP BY status",
                               (batch_id,)).fetchall()
    assert [(r["status"], r["n"]) for r in statuses] == [("completed", runs)]
    done = completions_per_interaction(farm.db, batch_id)
    assert done and set(done.values()) == {1}, "an interaction was completed twice"


@pytest.mark.parametrize("broker_url", ["amqp", "redis", "filesystem"], indirect=True)
def test_two_hosts_holding_two_models_each_settle_and_a_host_killed_mid_switch_loses_nothing(farm, tmp_path, request):
    # The kill on RabbitMQ only: it gives a killed worker's unacknowledged messages back at
    # once. Redis keeps them for its visibility timeout and the local broker has taken
    # them, so there they come back at the step's deadline (docs/operations.md): right,
    # but minutes later.
    kill = request.node.callspec.params["broker_url"] == "amqp"
    servers = [ModelServer(models=FOUR, latency=0.02, slots=4, load_s=0.5, max_loaded=2) for _ in range(2)]
    with servers[0], servers[1]:
        farm.serve()
        farm.gpu("gpu-a", servers[0].url, named=False, max_loaded=2)
        farm.gpu("gpu-b", servers[1].url, named=False, max_loaded=2)
        farm.wait_for("both hosts to hear their placement", lambda: farm.db.execute(
            "SELECT count(*) AS n FROM workers WHERE placed IS NOT NULL").fetchone()["n"] == 2)
        batch_id = farm.submit(postings(tmp_path / "in.csv", 60), FOUR_MODELS)
        # Kill a host's worker right after serve moved a model (mid-switch: its prefetched
        # work for the model it lost is being handed back), and start it again as a
        # supervisor would.
        farm.wait_for("serve to move a model", lambda: "instead of" in farm.log("serve"), timeout=120)
        if kill:
            farm.kill("gpu-b", signal.SIGKILL)
            farm.gpu("gpu-b", servers[1].url, named=False, max_loaded=2)
        farm.wait_batch(batch_id)
        loads = [s.loads_total for s in servers]
        shown = farm.cli("status").stdout
    all_done_once(farm, batch_id, 60)
    # Four models on four spots: after the first loads and a few moves, each model stays.
    assert all(n <= 6 for n in loads), f"loads per host: {loads}"
    assert max(s.max_concurrent[m] for s in servers for m in FOUR) <= 4
    # status shows each host, what it holds and what serve placed there.
    assert "GPU hosts" in shown and "placed" in shown
    hosts = farm.db.execute("SELECT max_loaded, placed, resident FROM workers WHERE kind = 'ai' AND NOT stopping "
                            "AND last_seen > now() - interval '30 seconds'").fetchall()
    assert {h["max_loaded"] for h in hosts} == {2}
    assert all(h["placed"] is not None and len(h["placed"]) <= 2 for h in hosts)


def test_a_late_batch_for_a_model_no_host_holds_starts_within_the_bound(farm, tmp_path):
    """One host holding two models, busy with a long batch on both; a second batch needs a
    third. It must not wait for the first to end: it takes a turn within the bound."""
    a, b, c = "gemma3:1b", "qwen2.5:7b", "phi3:latest"
    with ModelServer(models=[a, b, c], latency=0.25, slots=2, load_s=0.3, max_loaded=2) as server:
        farm.serve(WAVEFARM_RESIDENCY_WAIT_S="8")
        # No --max-loaded: the host's own Ollama setting in the worker's environment.
        farm.gpu("gpu", server.url, named=False, concurrency=2, OLLAMA_MAX_LOADED_MODELS="2")
        long = farm.submit(postings(tmp_path / "long.csv", 60),
                           workflow(tmp_path, "long", [("one", a, {}), ("two", b, {})]))
        farm.wait_for("the long batch to run", lambda: farm.completed_count(long) >= 4)
        late = farm.submit(postings(tmp_path / "late.csv", 3, first=1000), workflow(tmp_path, "late", [("only", c, {})]))
        farm.wait_batch(late, timeout=120)
        long_left = farm.db.execute("SELECT count(*) AS n FROM runs WHERE batch_id = %s AND status = 'running'",
                                    (long,)).fetchone()["n"]
        assert long_left > 0, "the late batch waited for the long one to end"
        farm.wait_batch(long, timeout=240)
        max_loaded = farm.db.execute("SELECT max_loaded FROM workers WHERE kind = 'ai'").fetchone()["max_loaded"]
    assert max_loaded == 2
    all_done_once(farm, late, 3)
    all_done_once(farm, long, 60)
    assert "taking 1" not in farm.log("gpu")  # it read OLLAMA_MAX_LOADED_MODELS


def test_a_smaller_context_runs_under_the_larger_one_instead_of_reloading(farm, tmp_path):
    model = "gemma3:1b"
    with ModelServer(models=[model], latency=0.01, slots=4, load_s=0.2, max_loaded=1) as server:
        farm.serve()
        farm.gpu("gpu", server.url, named=False, max_loaded=1)
        path = workflow(tmp_path, "contexts", [("small", model, {"num_ctx": 2048}), ("large", model, {"num_ctx": 8192})])
        batch_id = farm.submit(postings(tmp_path / "in.csv", 10), path)
        farm.wait_batch(batch_id)
    all_done_once(farm, batch_id, 10)
    assert server.loads[model] == 1, f"loads: {server.load_log}"
    used = farm.db.execute(
        "SELECT DISTINCT a.metrics -> 'options' ->> 'num_ctx' AS used, i.input -> 'options' ->> 'num_ctx' AS asked "
        "FROM attempts a JOIN interactions i ON i.id = a.interaction_id WHERE i.batch_id = %s AND i.step = 'small'",
        (batch_id,)).fetchall()
    # The attempt says what ran; the interaction (and its cache key) keep what the step asked.
    assert [(r["used"], r["asked"]) for r in used] == [("8192", "2048")]
