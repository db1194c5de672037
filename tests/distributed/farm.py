"""A whole farm on this machine for a test: `orchestrator serve`, GPU workers and a
script worker as real processes, on a real broker, against real Postgres, with model
servers that speak Ollama's HTTP API. Each test gets its own database and its own
broker namespace (a RabbitMQ vhost or a Redis database), so a message left over by
one test can never reach another."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from common.local_broker import local_broker_url
from common.supervisor import Supervisor
from orchestrator import batches, catalog
from orchestrator.db import connect
from orchestrator.db.store import Store
from orchestrator.workflow import load_file

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SCRIPTS = HERE / "scripts"
WORKFLOW = HERE / "workflows" / "screening.yaml"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def close_connections(vhost: str) -> None:
    """What a RabbitMQ restart does to its clients, for one vhost only: the broker closes
    every connection (and with them the exclusive queues)."""
    listing = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "vhost"], check=True,
                             capture_output=True, text=True, timeout=120).stdout
    for line in listing.splitlines():
        pid, _, conn_vhost = line.partition("\t")
        if conn_vhost.strip() == vhost:
            rabbitmqctl("close_connection", pid.strip(), "wavefarm test: broker restart")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


@contextmanager
def broker(kind: str) -> Iterator[str]:
    if kind == "filesystem":  # the local broker of the zero-setup mode: a directory of its own
        with tempfile.TemporaryDirectory(prefix="wavefarm-broker-") as directory:
            yield local_broker_url(Path(directory))
        return
    # The farm tests need a real broker; on a machine without one they say so and skip
    # (`.ci/run` starts RabbitMQ and Redis).
    port = 5672 if kind == "amqp" else 6379
    if not listening(port):
        pytest.skip(f"{'RabbitMQ' if kind == 'amqp' else 'Redis'} is not running on 127.0.0.1:{port}")
    if kind == "amqp":
        vhost = f"wf_{uuid.uuid4().hex[:10]}"
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        try:
            yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        finally:
            rabbitmqctl("delete_vhost", vhost)
    else:
        import redis

        db = _claim_redis_db()
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        client.flushdb()
        try:
            yield f"redis://127.0.0.1:6379/{db}"
        finally:
            client.flushdb()
            redis.Redis(host="127.0.0.1", port=6379, db=0).delete(_REDIS_CLAIM.format(db))


_REDIS_CLAIM = "wavefarm-tests:db:{}"


def _claim_redis_db() -> int:
    """A Redis database (1-15) no other test process is using: claimed with SET NX in
    database 0 (the claim expires if its test process dies), so two test sessions on one
    machine never flush each other's queues."""
    import redis

    admin = redis.Redis(host="127.0.0.1", port=6379, db=0)
    for _ in range(600):
        for db in range(1, 16):
            if admin.set(_REDIS_CLAIM.format(db), os.getpid(), nx=True, ex=1800):
                return db
        time.sleep(1)
    raise AssertionError("no free Redis database for the test in 10 minutes")


def postings(path: Path, n: int, first: int = 0) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["posting_id", "title", "company", "description"])
        for i in range(first, first + n):
            w.writerow([str(i), f"Role {i}", f"Company {i % 7}", f"Posting {i}: SQL, Python, care for detail."])
    return path


# A worker ready for work: one that consumes, or a GPU worker that heard serve's placement
# (it consumes nothing until there is work for its host's models).
READY = "(cardinality(queues) > 0 OR placed IS NOT NULL)"


class Farm:
    def __init__(self, db_url: str, broker_url: str, logs: Path) -> None:
        self.db_url = db_url
        self.broker_url = broker_url
        self.logs = logs
        self.supervisor = Supervisor(logs)
        self._db = connect(db_url)

    @property
    def db(self) -> psycopg.Connection:
        """The test's own connection, reopened after a test restarted Postgres."""
        if self._db.closed or self._db.broken:
            self._db = connect(self.db_url)
        return self._db

    # -- processes ------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WAVEFARM_")}
        env.update(WAVEFARM_BROKER_URL=self.broker_url, **extra)
        return env

    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        """The farm's live processes by name."""
        return {name: p.popen for name, p in self.supervisor.processes.items()}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        return self.supervisor.start(name, argv, env=env).popen

    def serve(self, name: str = "serve", *, metrics_port: int | None = None, **env: str) -> subprocess.Popen:
        metrics = ["--metrics-port", str(metrics_port)] if metrics_port else []
        return self.start(name, [str(BIN / "orchestrator"), "serve", *metrics],
                          self.env(WAVEFARM_DATABASE_URL=self.db_url, **env))

    # `named=False` starts a worker as SPEC.md shows, without --name: it takes its default
    # name, and `name` only labels the process and its log here.
    # `max_loaded`: what the host's Ollama holds at once (--max-loaded); unset, the worker's
    # default (1, with a warning), as a user who did not say gets.
    def gpu(self, name: str, server_url: str, *, concurrency: int = 4, models: str = "auto",
            metrics_port: int | None = None, api: str = "ollama", named: bool = True,
            max_loaded: int | None = None, residency: str | None = None, **env: str) -> subprocess.Popen:
        extra = ["--metrics-port", str(metrics_port)] if metrics_port else []
        extra += ["--max-loaded", str(max_loaded)] if max_loaded else []
        extra += ["--residency", residency] if residency else []
        # No database URL: a GPU host has the broker only.
        return self.start(name, [str(BIN / "gpu-worker"), f"--{api}-url", server_url,
                                 *(["--name", name] if named else []), "--concurrency", str(concurrency),
                                 "--models", models, "--probe-interval", "1", *extra], self.env(**env))

    def scripts(self, name: str = "scripts", directory: Path = SCRIPTS, *, database: bool = False,
                named: bool = True) -> subprocess.Popen:
        # Scripts that save to the database get its URL, as a deployment would give it.
        env = self.env(WAVEFARM_DATABASE_URL=self.db_url) if database else self.env()
        return self.start(name, [str(BIN / "script-worker"), "--scripts-dir", str(directory),
                                 *(["--name", name] if named else []), "--concurrency", "2"], env)

    def start_standard(self, host_a: str, host_b: str, *, serves: tuple[str, ...] = ("serve",),
                       residency: str | None = None) -> None:
        """serve, a GPU worker on each of two hosts, a script worker; returns once all are ready."""
        for name in serves:
            self.serve(name)
        self.gpu("gpu-a", host_a, residency=residency)
        self.gpu("gpu-b", host_b, residency=residency)
        self.scripts()
        self.wait_workers("gpu-a", "gpu-b", "scripts")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.supervisor.stop(name, sig, grace_s=30)

    def stop_all(self) -> None:
        self.supervisor.stop_all()
        self._db.close()

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    # -- waiting --------------------------------------------------------------------
    def wait_for(self, what: str, predicate, timeout: float = 60.0, every: float = 0.2):
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            try:
                value = predicate()
            except (psycopg.OperationalError, psycopg.InterfaceError):
                value = None  # Postgres is restarting under the test: ask again
            if value:
                return value
            time.sleep(every)
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs.glob("*.log"))
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")

    def wait_workers(self, *names: str) -> None:
        def ready() -> bool:
            rows = self.db.execute(f"SELECT name FROM workers WHERE {READY} AND NOT stopping").fetchall()
            return set(names) <= {r["name"] for r in rows}

        self.wait_for(f"workers {', '.join(names)} to be ready", ready)

    def completed_count(self, batch_id: int) -> int:
        return self.db.execute("SELECT count(*) AS n FROM interactions WHERE batch_id = %s AND status = 'completed'",
                               (batch_id,)).fetchone()["n"]

    def wait_batch(self, batch_id: int, timeout: float = 240.0) -> None:
        def ended() -> bool:
            row = self.db.execute("SELECT count(*) FILTER (WHERE status = 'running') AS running FROM runs "
                                  "WHERE batch_id = %s", (batch_id,)).fetchone()
            return row["running"] == 0

        self.wait_for(f"batch {batch_id} to end", ended, timeout=timeout, every=0.5)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """An `orchestrator` command, as a user types it beside the running farm."""
        done = subprocess.run([str(BIN / "orchestrator"), *args], env=self.env(WAVEFARM_DATABASE_URL=self.db_url),
                              capture_output=True, text=True, timeout=120)
        if check:
            assert done.returncode == 0, f"orchestrator {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
        return done

    # -- work -----------------------------------------------------------------------
    def submit(self, csv_path: Path, workflow: Path = WORKFLOW, scripts_dir: Path = SCRIPTS,
               key: str | None = None) -> int:
        wf = load_file(workflow, scripts_dir)
        catalog.store(Store(self.db), wf, workflow.read_text())
        return batches.submit(Store(self.db), csv_path, wf.name, key_column=key).batch_id


def outcomes(conn: psycopg.Connection, batch_id: int) -> dict[str, tuple]:
    """Per row: run status, and every step's latest output: what a correct farm must agree on."""
    rows = conn.execute(
        """SELECT r.input->>'posting_id' AS key, r.status,
                  (SELECT jsonb_object_agg(step, output) FROM (
                       SELECT DISTINCT ON (step) step, output FROM interactions
                       WHERE run_id = r.id AND status = 'completed' ORDER BY step, visit DESC) o) AS outputs
           FROM runs r WHERE r.batch_id = %s""", (batch_id,)).fetchall()
    return {r["key"]: (r["status"], r["outputs"]) for r in rows}


def completions_per_interaction(conn: psycopg.Connection, batch_id: int) -> dict[int, int]:
    """How many times each interaction was recorded completed (the events log): must be once."""
    rows = conn.execute(
        """SELECT i.id, count(e.id) FILTER (WHERE e.kind = 'completed') AS n
           FROM interactions i LEFT JOIN events e ON e.interaction_id = i.id
           WHERE i.batch_id = %s AND i.status = 'completed' GROUP BY i.id""", (batch_id,)).fetchall()
    return {r["id"]: r["n"] for r in rows}
