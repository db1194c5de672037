"""The process supervisor that the demo, the built-in model and the tests' farms share:
real processes, real signals, real log files."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from common.supervisor import Process, ProcessDied, Supervisor

# Prints its pid and its child's, ignores SIGTERM (as a worker stuck in a call would),
# and leaves a grandchild in its process group.
STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("pids", child.pid, flush=True)
    time.sleep(600)
""")


def wait_stopped(process: Process) -> None:
    until = time.monotonic() + 30
    while process.alive() and time.monotonic() < until:
        time.sleep(0.05)


def wait_for_line(log: Path, prefix: str) -> str:
    until = time.monotonic() + 30
    while time.monotonic() < until:
        for line in log.read_text().splitlines():
            if line.startswith(prefix):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line {prefix!r} in {log}:\n{log.read_text()}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_process_that_died_is_reported_with_its_exit_and_the_end_of_this_starts_log(tmp_path):
    with Supervisor(tmp_path) as supervisor:
        wait_stopped(supervisor.start("worker", [sys.executable, "-c", "print('first start')"]))
        worker = supervisor.start("worker", [sys.executable, "-c",
                                             "import sys; print('cannot reach the broker'); sys.exit(3)"])
        wait_stopped(worker)
        with pytest.raises(ProcessDied) as died:
            supervisor.check()
    message = str(died.value)
    assert message.startswith(f"worker stopped unexpectedly (exit 3); the end of {tmp_path / 'worker.log'}:")
    assert "  | cannot reach the broker" in message
    assert "first start" not in message                 # an earlier start's output is not this one's
    assert "first start" in (tmp_path / "worker.log").read_text()  # the log keeps every start


def test_a_process_killed_by_a_signal_reports_the_signal_as_a_negative_exit(tmp_path):
    with Supervisor(tmp_path) as supervisor:
        worker = supervisor.start("worker", [sys.executable, "-c", "import time; time.sleep(600)"])
        supervisor.check()  # alive: nothing to report
        os.kill(worker.pid, signal.SIGKILL)
        wait_stopped(worker)
        assert worker.exit_code() == -signal.SIGKILL
        with pytest.raises(ProcessDied, match=r"exit -9"):
            supervisor.check()


def test_each_process_runs_in_its_own_session(tmp_path):
    with Supervisor(tmp_path) as supervisor:
        worker = supervisor.start("worker", [sys.executable, "-c", "import time; time.sleep(600)"])
        # Its own session and group: a Ctrl-C at the terminal reaches only the parent.
        assert os.getsid(worker.pid) == worker.pid != os.getsid(0)


def test_stop_all_kills_what_ignores_sigterm_after_the_grace_period_with_its_whole_group(tmp_path):
    said = []
    supervisor = Supervisor(tmp_path, grace_s=1, say=said.append)
    stubborn = supervisor.start("stubborn", [sys.executable, "-c", STUBBORN])
    polite = supervisor.start("polite", [sys.executable, "-c", "import time; time.sleep(600)"])
    grandchild = int(wait_for_line(tmp_path / "stubborn.log", "pids ").split()[1])
    supervisor.stop_all()
    assert stubborn.popen.returncode == -signal.SIGKILL
    assert polite.popen.returncode == -signal.SIGTERM
    # SIGKILL reached the grandchild's group; the kernel takes a moment to end it.
    until = time.monotonic() + 5
    while not gone(grandchild) and time.monotonic() < until:
        time.sleep(0.02)
    assert gone(grandchild)
    assert said == ["stubborn did not stop in 1s: killing it"]
    assert supervisor.processes == {}
