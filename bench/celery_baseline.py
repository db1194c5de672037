"""The baseline for bench/farm.py: a plain Celery chain, one task per AI step.

Each worker process stands next to one fake model server (BENCH_MODEL_URL) and every
task it runs calls that server over HTTP with requests, as a GPU worker does. All
workers consume one queue (the workflow uses one model that every host serves, as
wavefarm's per-model queue `ai.<model>` is shared by every GPU worker of that model).

    BENCH_BROKER_URL=amqp://... BENCH_MODEL_URL=http://127.0.0.1:PORT \\
        celery -A bench.celery_baseline worker --pool threads --concurrency 4 -Q bench.baseline

Plain means Celery's defaults: early acks, prefetch multiplier 4, no task events, no
result backend (a chain passes each result to the next task inside the message, it
needs no backend). The last task of a chain pushes its finishing time to a Redis list
(`done_key`), which is how the bench knows when every chain has ended.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import redis
import requests
from celery import Celery, chain
from celery.signals import worker_ready
from requests.adapters import HTTPAdapter

QUEUE = "bench.baseline"
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench_baseline", broker=BROKER_URL, set_as_current=False)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_local = threading.local()


def _session() -> requests.Session:
    # One pooled session for the process would do as well; a session per pool thread
    # keeps each thread on its own keep-alive connection, like the GPU worker's pool.
    s = getattr(_local, "session", None)
    if s is None:
        s = requests.Session()
        s.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=0))
        _local.session = s
    return s


_redis: redis.Redis | None = None


def _done(key: str) -> None:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(REDIS_URL)
    _redis.rpush(key, repr(time.time()))


def prompt(i: int, title: str, prev: str) -> str:
    """The same prompts as the wavefarm workflow in bench/farm.py renders."""
    return f"Step {i} for {title}: {prev}"


@app.task(name="bench.step")
def step(prev: str, i: int, title: str, model: str, done_key: str | None = None) -> str:
    url = os.environ["BENCH_MODEL_URL"]
    body = {"model": model, "messages": [{"role": "user", "content": prompt(i, title, prev)}], "stream": False}
    response = _session().post(url + "/api/chat", json=body, timeout=(5, 60))
    response.raise_for_status()
    out = response.json()["message"]["content"]
    if done_key:
        _done(done_key)
    return out


def record_chain(title: str, description: str, steps: int, model: str, done_key: str):
    """step 1 gets the record; step i gets step i-1's output (Celery prepends it)."""
    sigs = [step.s(description, 1, title, model, done_key if steps == 1 else None)]
    sigs += [step.s(i, title, model, done_key if i == steps else None) for i in range(2, steps + 1)]
    return chain(*sigs)


@worker_ready.connect
def _ready(**_: object) -> None:
    path = os.environ.get("BENCH_READY_FILE")
    if path:
        Path(path).write_text(str(os.getpid()))
