"""The fake model server holds models like Ollama's scheduler: a limited number resident
(OLLAMA_MAX_LOADED_MODELS), loads one at a time, the least recently used idle model evicted
to make room, a reload for other runner options, keep_alive unloads; counted, so tests and
benchmarks can count model swaps. Driven by the official `ollama` client over real HTTP.

Timings are checked as lower bounds from the server's own load_log (a load that must wait
for something begins at least that long after it), never as tight windows.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest

from tests.model_server import ModelServer

A, B, C = "gemma3:1b", "qwen2.5:7b", "llama3.2:3b"
LOAD_S = 0.05
ROOT = Path(__file__).resolve().parents[2]


def chat(client: ollama.Client, model: str, prompt: str = "hi", **kw) -> ollama.ChatResponse:
    return client.chat(model=model, messages=[{"role": "user", "content": prompt}], **kw)


def resident(client: ollama.Client) -> list[str]:
    return [m.model for m in client.ps().models]


def load_times(srv: ModelServer, model: str) -> list[float]:
    return [at for at, name, _ in srv.load_log if name == model]


def wait_until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_the_least_recently_used_idle_model_makes_room():
    with ModelServer(models=[A, B, C], max_loaded=2, load_s=LOAD_S) as srv, ollama.Client(host=srv.url) as client:
        seen = []
        for model in (A, B, C):
            assert chat(client, model).load_duration > 0  # each one loaded
            seen.append(resident(client))
        assert seen == [[A], [A, B], [B, C]]  # C pushed out A, the least recently used
        assert srv.loads == {A: 1, B: 1, C: 1} and srv.evictions == {A: 1}
        assert chat(client, C).load_duration == 0  # resident: no load
        assert chat(client, A).load_duration > 0  # back again: it pushes out B, now the least recently used
        assert sorted(resident(client)) == sorted([A, C]) and srv.loaded() == resident(client)
        assert srv.loads == {A: 2, B: 1, C: 1} and srv.loads_total == 4
        assert srv.evictions == {A: 1, B: 1}
        assert [model for _, model, _ in srv.load_log] == [A, B, C, A]
        srv.reset_stats()
        assert srv.loads_total == 0 and not srv.evictions and srv.load_log == []


def test_a_busy_model_is_not_evicted_and_a_call_waits_for_an_idle_one():
    # The pool outermost: on a failure the server stops first, which ends the hung call.
    with ThreadPoolExecutor(2) as pool, ModelServer(models=[A, B, C], max_loaded=2, load_s=LOAD_S) as srv, \
            ollama.Client(host=srv.url) as client, ollama.Client(host=srv.url, timeout=30) as stuck:
        # A call on A that holds it (a hang, until its client gives up or the server stops).
        srv.set_fault(A, "hang")
        held = pool.submit(chat, stuck, A)
        wait_until(lambda: srv.in_flight(A) == 1)
        srv.clear_faults()
        chat(client, B)  # B ends after A began: A is the least recently used, but busy
        chat(client, C)
        assert srv.evictions == {B: 1} and sorted(srv.loaded()) == sorted([A, C])
        assert srv.in_flight(A) == 1  # A was busy all along

        # Now every resident model is busy: a call for B waits until one is idle.
        srv.set_fault(C, "hang")
        with ollama.Client(host=srv.url, timeout=0.4) as impatient:
            asked = time.monotonic()
            gave_up = pool.submit(chat, impatient, C)
            wait_until(lambda: srv.in_flight(C) == 1)
            srv.clear_faults()
            chat(client, B)
            with pytest.raises(httpx.TimeoutException):
                gave_up.result()
        assert srv.evictions == {B: 1, C: 1}  # C once its call ended; A, still busy, never
        assert sorted(srv.loaded()) == sorted([A, B]) and srv.in_flight(A) == 1
        # B's second load began once C's hung call ended: after its client gave up, 0.4 s on.
        assert load_times(srv, B)[1] - asked >= 0.4
        srv.stop()
        with pytest.raises(httpx.HTTPError):
            held.result(timeout=5)


def test_with_every_model_busy_a_third_waits_for_the_first_call_to_end():
    latency = 0.3
    with ModelServer(models=[A, B, C], max_loaded=2, load_s=LOAD_S, latency=latency) as srv, \
            ollama.Client(host=srv.url) as client, ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(chat, client, m) for m in (A, B)]
        wait_until(lambda: srv.in_flight() == 2)
        chat(client, C)
        assert all(f.result().done for f in busy)
        first = min(load_times(srv, A)[0], load_times(srv, B)[0])
        # C's load waited for a call to end: each holds its model for load_s + latency after its load began.
        assert load_times(srv, C)[0] - first >= LOAD_S + latency
        assert sum(srv.evictions.values()) == 1 and len(srv.loaded()) == 2 and srv.loads_total == 3


def test_loads_happen_one_at_a_time_across_the_server():
    load_s = 0.2
    with ModelServer(models=[A, B], load_s=load_s) as srv, ollama.Client(host=srv.url) as client, \
            ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda m: chat(client, m), [A, B, A, B]))  # first calls of two models at once
        assert srv.loads == {A: 1, B: 1}  # concurrent first calls of a model share its load
        (first, _, _), (second, _, _) = srv.load_log
        assert second - first >= load_s  # the second load waited for the first to finish
        assert sum(a.load_duration > 0 for a in answers) == 2
        assert not srv.evictions  # no limit: max_loaded None


def test_other_runner_options_reload_the_model():
    with ModelServer(models=[A], load_s=LOAD_S) as srv, ollama.Client(host=srv.url) as client:
        chat(client, A)
        chat(client, A, options={"num_predict": 3, "temperature": 0.2})  # not runner options
        assert srv.loads[A] == 1 and client.ps().models[0].context_length == 4096
        chat(client, A, options={"num_ctx": 8192})
        assert srv.loads[A] == 2 and client.ps().models[0].context_length == 8192
        chat(client, A, options={"num_ctx": 8192})
        assert srv.loads[A] == 2  # the same options share the resident copy
        chat(client, A, options={"num_ctx": 4096})  # the default, spelled out
        chat(client, A)
        assert srv.loads[A] == 3
        httpx.post(f"{srv.url}/v1/chat/completions",  # the OpenAI API asks for the default options
                   json={"model": A, "messages": [{"role": "user", "content": "hi"}]}).raise_for_status()
        chat(client, A, options={"num_batch": 256})
        assert srv.loads[A] == 4 and not srv.evictions  # a reload is no eviction
        assert [opts for _, _, opts in srv.load_log] == [
            {"num_ctx": 4096}, {"num_ctx": 8192}, {"num_ctx": 4096}, {"num_ctx": 4096, "num_batch": 256}]


def test_a_reload_waits_for_the_calls_in_progress():
    latency = 0.3
    with ModelServer(models=[A], load_s=LOAD_S, latency=latency) as srv, ollama.Client(host=srv.url) as client, \
            ThreadPoolExecutor(1) as pool:
        running = pool.submit(chat, client, A)
        wait_until(lambda: srv.in_flight(A) == 1)
        big = chat(client, A, options={"num_ctx": 8192})
        assert running.result().done and big.load_duration > 0
        default, bigger = load_times(srv, A)
        assert bigger - default >= LOAD_S + latency  # after the first call (load, then latency) ended


def test_keep_alive_zero_unloads_and_the_next_call_loads_again():
    with ModelServer(models=[A, B], load_s=LOAD_S) as srv, ollama.Client(host=srv.url) as client:
        loaded = client.generate(model=A)  # no prompt: only loads
        assert loaded.done_reason == "load" and loaded.load_duration > 0 and resident(client) == [A]
        unloaded = client.generate(model=A, keep_alive=0)
        assert unloaded.done_reason == "unload" and resident(client) == []
        client.generate(model=B, keep_alive=0)  # not resident: nothing to load or unload
        assert srv.loads == {A: 1}
        chat(client, A)
        assert srv.loads == {A: 2} and resident(client) == [A]


def test_keep_alive_zero_on_a_busy_model_unloads_it_when_its_calls_end():
    with ModelServer(models=[A], load_s=LOAD_S, latency=0.3) as srv, ollama.Client(host=srv.url) as client, \
            ThreadPoolExecutor(1) as pool:
        running = pool.submit(chat, client, A)
        wait_until(lambda: srv.in_flight(A) == 1)
        assert client.generate(model=A, keep_alive=0).done_reason == "unload"
        assert resident(client) == [A]  # still busy
        assert running.result().done
        assert resident(client) == [] and srv.loads == {A: 1}


def test_a_model_unused_for_its_keep_alive_loads_again():
    with ModelServer(models=[A], load_s=LOAD_S) as srv, ollama.Client(host=srv.url) as client:
        chat(client, A, keep_alive=0.2)
        assert resident(client) == [A]
        time.sleep(0.3)
        assert resident(client) == [] and srv.loaded() == []
        assert chat(client, A).load_duration > 0 and srv.loads == {A: 2} and not srv.evictions


def test_no_limit_holds_every_model():
    with ModelServer(models=[A, B, C]) as srv, ollama.Client(host=srv.url) as client:
        for model in (A, B, C, A):
            chat(client, model)
        assert resident(client) == [A, B, C] and srv.loads == {A: 1, B: 1, C: 1} and not srv.evictions


def test_max_loaded_must_be_positive():
    with pytest.raises(ValueError, match="max_loaded"):
        ModelServer(models=[A], max_loaded=0)


def test_the_cli_takes_max_loaded():
    proc = subprocess.Popen([sys.executable, "-m", "tests.model_server", "--port", "0", "--models", f"{A},{B}",
                             "--max-loaded", "1"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stderr is not None
        url = re.search(r"http://\S+", proc.stderr.readline()).group(0)
        with ollama.Client(host=url) as client:
            chat(client, A)
            chat(client, B)
            assert resident(client) == [B]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_stop_returns_promptly_with_a_call_waiting_for_room():
    done = threading.Event()
    with ThreadPoolExecutor(2) as pool, ModelServer(models=[A, B], max_loaded=1) as srv, \
            ollama.Client(host=srv.url, timeout=10) as client:
        srv.set_fault(A, "hang")
        held = pool.submit(chat, client, A)
        wait_until(lambda: srv.in_flight(A) == 1)
        waiting = pool.submit(lambda: (chat(client, B), done.set()))
        time.sleep(0.1)
        assert not done.is_set()  # B waits for A, which never ends
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 1.0
        for pending in (held, waiting):
            with pytest.raises(httpx.HTTPError):
                pending.result(timeout=5)
        assert srv.loads == {A: 1}
