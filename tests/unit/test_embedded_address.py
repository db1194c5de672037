"""A script worker finds the embedded Postgres's URL from its files alone (no server
package, no driver): only while a postmaster of that data directory runs and is ready.
A real process stands in for the postmaster: what counts is its pid and where it works."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from common.embedded_address import running_url


@pytest.fixture
def data(tmp_path) -> Path:
    (tmp_path / "postgres").mkdir()
    return tmp_path


@pytest.fixture
def postmaster(data):
    """A process working in the data directory, as a postmaster does."""
    proc = subprocess.Popen(["sleep", "300"], cwd=data / "postgres")
    yield proc
    proc.kill()
    proc.wait()


def pid_file(data: Path, pid: int, port: int, status: str) -> None:
    pgdata = data / "postgres"
    (pgdata / "postmaster.pid").write_text(f"{pid}\n{pgdata}\n{int(time.time())}\n{port}\n\n127.0.0.1\n  0  0\n{status}\n")


def test_the_url_of_a_ready_server_names_the_passfile_and_no_secret(data, postmaster):
    pid_file(data, postmaster.pid, 54321, "ready")
    url = running_url(data)
    assert url == f"postgresql://wavefarm@127.0.0.1:54321/wavefarm?passfile={data / 'postgres.pass'}"


def test_no_url_while_the_server_starts_or_stops(data, postmaster):
    pid_file(data, postmaster.pid, 54321, "starting")
    assert running_url(data) is None
    pid_file(data, postmaster.pid, 54321, "stopping")
    assert running_url(data) is None


def test_no_url_from_a_stale_pid_file_naming_another_process(data, tmp_path_factory):
    elsewhere = subprocess.Popen(["sleep", "300"], cwd=tmp_path_factory.mktemp("elsewhere"))
    try:
        pid_file(data, elsewhere.pid, 54321, "ready")
        assert running_url(data) is None
    finally:
        elsewhere.kill()
        elsewhere.wait()


def test_no_url_without_a_server(data):
    assert running_url(data) is None
