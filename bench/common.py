"""Shared by the benchmarks: a scratch database, a postings CSV of any size, and the
conditions a figure was taken under (the load on the machine, Postgres's settings)."""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from orchestrator.db import connect
from orchestrator.db.migrate import upgrade

ADMIN_URL = os.environ.get("WAVEFARM_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# The settings that move the database-bound figures (submit, status, apply).
POSTGRES_SETTINGS = ("shared_buffers", "synchronous_commit", "max_parallel_workers_per_gather", "jit")


@contextmanager
def scratch_database() -> Iterator[str]:
    name = f"wavefarm_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    # Only the path names the database: an embedded server's URL carries a passfile query.
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    try:
        with connect(url) as conn:
            upgrade(conn)
        yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def write_postings(path: Path, rows: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["posting_id", "title", "company", "description"])
        for i in range(rows):
            w.writerow([str(i), f"Data analyst {i}", f"Company {i % 97}",
                        f"Posting {i}: we need SQL, Python and reporting. " * 6])
    return path


def run(args: list, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run one command of the farm, its output captured; should it fail, stop the bench
    with what the command said (a CalledProcessError alone hides why)."""
    proc = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{shlex.join(str(a) for a in args)} exited {proc.returncode}:\n{proc.stderr.strip()}")
    return proc


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a size)."""
    try:
        n = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return n


class Conditions:
    """What a bench's figures were taken under, printed after them: the machine's load
    before and after (other work on a shared machine moves every figure), how long the
    whole bench took, and the command that reproduces it."""

    def __init__(self, module: str, argv: list[str] | None = None) -> None:
        args = sys.argv[1:] if argv is None else argv
        self.command = f".venv/bin/python -m {module} {shlex.join(args)}".rstrip()
        self.started = time.monotonic()
        self.load_before = os.getloadavg()[0]

    def summary(self) -> str:
        return (f"whole bench {time.monotonic() - self.started:.0f} s; load average (1 min) before "
                f"{self.load_before:.2f}, after {os.getloadavg()[0]:.2f} (other work on the machine skews every figure)")

    def print(self, what: str = "", postgres: psycopg.Connection | None = None) -> None:
        print(f"\n{what}{'; ' if what else ''}{os.cpu_count()} CPUs; {self.summary()}")
        if postgres is not None:
            print(postgres_line(postgres))
        print(f"command: {self.command}")


def postgres_line(conn: psycopg.Connection) -> str:
    version = conn.execute("SELECT current_setting('server_version') AS v").fetchone()["v"]
    settings = ", ".join(
        f"{name} {conn.execute('SELECT current_setting(%s) AS v', (name,)).fetchone()['v']}"
        for name in POSTGRES_SETTINGS)
    return f"Postgres {version}: {settings}"
