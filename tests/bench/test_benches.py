"""Every bench runs as README.md's "Measured" tables and docs/performance.md run it
(`.venv/bin/python -m bench.NAME` from the repository root), at a tiny size, and prints
its figures, so that none breaks silently again (a workflow file that moved, a function
renamed under it). No figure is judged here: a test never asserts timing; the figures
themselves are taken by hand with the benches' default sizes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_worker import local_model
from tests.conftest import admin_url
from tests.distributed.farm import listening
from tests.real_model.conftest import NOT_INSTALLED

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"\d[\d,]*(?:\.\d+)?"


def bench(module: str, *args: str) -> str:
    """`python -m bench.MODULE ARGS` from the repository root; its standard output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVEFARM_")}
    # The benches make their scratch databases where the tests make theirs.
    env["WAVEFARM_BENCH_ADMIN_URL"] = admin_url()
    proc = subprocess.run([sys.executable, "-m", f"bench.{module}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"bench.{module} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    # Each bench ends with the command that reproduces its figures, and the load it ran under.
    assert f"command: .venv/bin/python -m bench.{module} {' '.join(args)}" in proc.stdout, proc.stdout
    assert re.search(rf"load average \(1 min\) before {NUMBER}, after {NUMBER}", proc.stdout), proc.stdout
    return proc.stdout


SERVICES = {"rabbitmq": (5672, "RabbitMQ"), "redis": (6379, "Redis")}


def needs(*services: str) -> None:
    """bench.farm and bench.real_model run a farm on RabbitMQ (a vhost of their own, made
    with rabbitmqctl); bench.farm's plain Celery chain reports its end through Redis."""
    for port, name in (SERVICES[s] for s in services):
        if not listening(port):
            pytest.skip(f"{name} is not running on 127.0.0.1:{port}")
    if "rabbitmq" in services and shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on PATH")


def test_submit_prints_time_rate_and_memory_for_each_size():
    out = bench("submit_100k", "200", "500")
    lines = re.findall(rf"submit +(\d+) rows \( *{NUMBER} MB\): +{NUMBER} s, +{NUMBER} rows/s, peak RSS {NUMBER} MiB",
                       out)
    assert lines == ["200", "500"], out
    assert re.search(r"Postgres \d+.*: shared_buffers ", out), out


def test_status_prints_the_plans_and_three_timed_runs():
    out = bench("status_1m", "2000")
    assert "filled 2,000 interactions (1,000 in batch 1)" in out, out
    for query in ("batch_interaction_counts", "batch_run_counts"):
        assert re.search(rf"-- {query}\n(.+\n)*?Execution Time: {NUMBER} ms", out), out
    assert len(re.findall(rf"orchestrator status --batch 1 --json: {NUMBER} s \(whole process\)", out)) == 3, out


def test_apply_results_applies_every_result_one_and_fifty_per_transaction():
    out = bench("apply_results", "20")
    # 20 runs of four interactions each (a, then b and c, then d): 80 results each way.
    for per_transaction in (1, 50):
        assert re.search(rf"^ *{per_transaction} result\(s\)/transaction: 80 results in {NUMBER} s = {NUMBER} results/s$",
                         out, re.M), out


def test_farm_prints_each_figure_beside_the_plain_chain():
    needs("rabbitmq", "redis")
    out = bench("farm", "--records", "4", "--steps", "2", "--hosts", "1", "--slots", "2",
                "--chain-steps", "3", "--chain-repeats", "1")
    # The figures the README quotes, each for wavefarm and for the plain Celery chain.
    for row in ("utilisation", "records/s", "CPU ms per call: workers", "CPU ms per call: total",
                "per-step overhead ms (median)"):
        assert re.search(rf"^  {re.escape(row)} +{NUMBER} +{NUMBER}$", out, re.M), f"{row!r} missing:\n{out}"


def test_real_model_prints_direct_and_farm_speed_and_their_ratio():
    if not local_model.available():
        pytest.skip(NOT_INSTALLED)
    needs("rabbitmq")
    out = bench("real_model", "--records", "2", "--max-tokens", "4")
    for label in ("direct", "farm", "direct-2"):
        assert re.search(rf"^{label} +2 calls, {NUMBER} tokens in +{NUMBER} s: +{NUMBER} tok/s", out, re.M), out
    assert re.search(rf"overhead ratio \(direct tok/s / farm tok/s\): {NUMBER}", out), out


def test_residency_prints_loads_makespan_and_utilisation_with_residency_on_and_off():
    needs("rabbitmq")
    out = bench("residency", "--only", "2x2", "--records", "12", "--load", "0.3")
    # How utilisation and the ideal are defined, then one line per mode.
    assert "utilisation = busy model-call seconds" in out, out
    for mode in ("on ", "off"):
        assert re.search(rf"^2x2 +residency {mode}: 12 records, {NUMBER} calls, makespan {NUMBER} s "
                         rf"\(no-swap ideal {NUMBER} s\), utilisation {NUMBER}; loads per host {NUMBER}/{NUMBER} "
                         rf"\(total {NUMBER}\), evictions {NUMBER}", out, re.M), f"residency {mode} missing:\n{out}"
    assert re.search(rf"^2x2 +residency on : .*placement switches {NUMBER}$", out, re.M), out
