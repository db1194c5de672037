"""Services of a test's own, for tests that restart them: a RabbitMQ node and a
Postgres cluster started in a temporary directory on free ports, so that stopping
them disturbs nothing else on the machine (other test sessions, a developer's farm).

Measured on this two-core machine: a RabbitMQ node starts in about 15 s and restarts
(stop_app, start_app) in about 3 s; the embedded Postgres initialises and starts in 4 to
9 s and restarts in about 1 s."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.net import free_port

# Debian and RabbitMQ's own packages put the real scripts here; the ones on PATH
# (/usr/sbin) switch to the rabbitmq user, which could not write our temp directory.
_RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT_S = 120


def _rabbit_tool(name: str) -> str | None:
    own = _RABBIT_BIN / name
    return str(own) if own.exists() else shutil.which(name)


class PrivateRabbitMQ:
    """A RabbitMQ node of this test's own: `with PrivateRabbitMQ.running() as rabbit: rabbit.url`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = f"wf{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @classmethod
    @contextmanager
    def running(cls) -> Iterator["PrivateRabbitMQ"]:
        if _rabbit_tool("rabbitmq-server") is None or _rabbit_tool("rabbitmqctl") is None:
            pytest.skip("RabbitMQ is not installed: no private node can be started")
        root = Path(tempfile.mkdtemp(prefix="wavefarm-rabbit-"))
        rabbit = cls(root)
        try:
            rabbit.start()
            yield rabbit
        finally:
            rabbit.stop()
            shutil.rmtree(root, ignore_errors=True)

    def _env(self) -> dict[str, str]:
        # Nothing of the machine's node: its env file names its node, its config its port.
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),  # the Erlang cookie of this node and its CLI
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.root / "pid"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def ctl(self, *args: str, timeout: float = 120) -> None:
        subprocess.run([_rabbit_tool("rabbitmqctl"), "-q", "-n", self.node, *args], env=self._env(), check=True,
                       capture_output=True, timeout=timeout)

    def start(self) -> None:
        (self.root / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
                                                 "loopback_users = none\n")
        (self.root / "enabled_plugins").write_text("[].\n")  # no management plugin: no port to clash on
        (self.root / "rabbitmq-env.conf").write_text("")
        subprocess.run([_rabbit_tool("rabbitmq-server"), "-detached"], env=self._env(), check=True,
                       capture_output=True, timeout=60)
        self.await_startup()

    def await_startup(self) -> None:
        until = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.ctl("await_startup", timeout=START_TIMEOUT_S)
                return
            except subprocess.CalledProcessError:
                # Not registered with epmd yet: the node is still booting.
                if time.monotonic() > until:
                    raise AssertionError(f"the private RabbitMQ node {self.node} did not start:\n"
                                         f"{self.server_log()[-3000:]}")
                time.sleep(0.5)

    def restart_app(self) -> None:
        """What an operator's `rabbitmqctl stop_app; start_app` does: every connection is
        closed, unacknowledged messages go back to their queues, the node comes back."""
        self.stop_app()
        self.start_app()

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup")

    def stop(self) -> None:
        try:
            self.ctl("shutdown", timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pid_file = self.root / "pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), 9)
                except (ValueError, ProcessLookupError):
                    pass

    def server_log(self) -> str:
        """The node's own log: whom it refused, which connections it closed and why."""
        path = self.root / "log" / f"{self.node}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class PrivatePostgres:
    """A Postgres cluster of this test's own (the embedded build the project ships):
    `with PrivatePostgres.running() as pg: pg.url`; `pg.restart()` stops it (fast
    shutdown: every session is told AdminShutdown) and starts it again on the same port."""

    def __init__(self, root: Path) -> None:
        from orchestrator.embedded_postgres import EmbeddedPostgres

        self.server = EmbeddedPostgres(root, say=lambda _text: None)
        self.url = ""

    @classmethod
    @contextmanager
    def running(cls) -> Iterator["PrivatePostgres"]:
        # Not under pytest's temp directory: as root the server runs as its own system
        # user, which needs the search bit on every directory above its data.
        root = Path(tempfile.mkdtemp(prefix="wavefarm-pg-"))
        pg = cls(root)
        try:
            pg.url = pg.server.start()
            yield pg
        finally:
            pg.server.stop()
            shutil.rmtree(root, ignore_errors=True)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        if self.server.start() != self.url:
            raise AssertionError("the private Postgres came back on another port")

    def restart(self) -> None:
        self.stop()
        self.start()
