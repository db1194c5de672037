"""The GPU worker's end of residency: what it consumes, what it sends, what it lets go."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from common.messages import AiTask, HostPlacement, Placement
from gpu_worker.residency import MAX_LOADED, Residency, max_loaded_default

HOST = ("box", "127.0.0.1:11434")


def residency(**kwargs) -> Residency:
    return Residency(enabled=True, max_loaded=2, machine=HOST[0], server=HOST[1], **kwargs)


def say(r: Residency, models: list[str], num_ctx: dict | None = None, *, at: datetime | None = None,
        machine: str = HOST[0]) -> None:
    r.board.update(Placement(hosts=[HostPlacement(machine=machine, server=HOST[1], models=models,
                                                  num_ctx=num_ctx or {})], at=at or datetime.now(timezone.utc)))


def task(model: str = "gemma3:1b", **options) -> AiTask:
    return AiTask(interaction_id=1, attempt=1, run_id=1, batch_id=1, step="s", timeout_s=30, model=model,
                  prompt="p", options=options)


def test_nothing_is_consumed_before_serve_names_the_host_then_only_what_it_placed():
    r = residency()
    have = ["gemma3:1b", "qwen2.5:7b", "phi3:latest"]
    assert r.allowed(have) == []
    say(r, ["qwen2.5:7b"], machine="another-box")  # another host's word
    assert r.allowed(have) == []
    say(r, ["qwen2.5:7b", "phi3:latest"])
    assert r.allowed(have) == ["qwen2.5:7b", "phi3:latest"]


def test_with_no_word_from_serve_the_worker_goes_on_with_every_model():
    r = residency(first_word_s=0)
    assert r.allowed(["gemma3:1b", "phi3:latest"]) == ["gemma3:1b", "phi3:latest"]


def test_an_older_word_that_crossed_a_newer_one_is_ignored():
    r = residency()
    now = datetime.now(timezone.utc)
    say(r, ["phi3:latest"], at=now)
    say(r, ["gemma3:1b"], at=now - timedelta(seconds=1))
    assert r.placed() == frozenset({"phi3:latest"})


def test_calls_carry_the_farms_keep_alive_and_the_larger_fixed_context():
    r = residency(keep_alive="45m")
    say(r, ["gemma3:1b", "phi3:latest"], {"gemma3:1b": 8192, "phi3:latest": 4096})
    sent = r.prepare(task(num_ctx=2048, temperature=0))
    assert sent.keep_alive == "45m" and sent.options == {"num_ctx": 8192, "temperature": 0}
    assert r.prepare(task()).options == {"num_ctx": 8192}
    assert r.prepare(task(num_ctx=16384)).options == {"num_ctx": 16384}  # asks more: a reload no one can spare
    assert r.prepare(task("phi3")).options == {"num_ctx": 4096}  # Ollama reads phi3 as phi3:latest


def test_residency_off_sends_the_task_as_it_came_and_consumes_everything():
    r = Residency(enabled=False, max_loaded=1, machine=HOST[0], server=HOST[1])
    t = task(num_ctx=2048)
    assert r.prepare(t) is t
    assert r.allowed(["a:latest", "b:latest"]) == ["a:latest", "b:latest"]
    assert r.elsewhere(t) is None
    assert "max_loaded" not in r.describe()


def test_a_model_placed_elsewhere_is_handed_back_and_unloaded_once_its_calls_end():
    r = residency()
    say(r, ["gemma3:1b", "phi3:latest"])
    r.allowed(["gemma3:1b", "phi3:latest"])
    r.started("gemma3:1b")
    say(r, ["phi3:latest", "qwen2.5:7b"])
    assert "placed on another host" in r.elsewhere(task("gemma3:1b"))
    assert r.elsewhere(task("phi3")) is None
    assert r.to_release() == []  # a call of it is still running
    assert r.ended("gemma3:1b") is True
    assert r.to_release() == ["gemma3:1b"]
    r.released("gemma3:1b")
    assert r.to_release() == []


@pytest.mark.parametrize("value, expected, warns", [
    ("3", 3, False), ("", 1, True), ("abc", 1, True), ("0", 1, True), ("-2", 1, True),
    ("9" * 30, MAX_LOADED, True),
])
def test_how_many_models_the_host_holds(monkeypatch, value, expected, warns):
    monkeypatch.setenv("OLLAMA_MAX_LOADED_MODELS", value)
    held, warning = max_loaded_default(None)
    assert held == expected and (warning is not None) == warns
    assert max_loaded_default(5) == (5, None)
