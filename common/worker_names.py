"""Worker names: what a worker started without `--name` calls itself, and what a name
may hold.

A name is the worker's row in the `workers` table and its Celery node name (the
pidbox queue `NAME.celery.pidbox`), so it must be unique among live workers and the
same after a restart. A GPU worker's default says where it runs and which model
server it drives, a GPU "host" being (machine, model server):

    gpu@MACHINE:PORT              the server is on this machine (loopback, or its own name)
    gpu@MACHINE:SERVER:PORT       the server is elsewhere
    script@MACHINE                a script worker

Two workers that would still share one (two script workers on a machine, two GPU
workers on one server) take the next index, `script-2@MACHINE`, then `script-3@...`:
`common.leases` hands out the first candidate no live worker holds, so a restarted
worker gets its own name back.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from celery.utils.nodenames import default_nodename

from common.errors import ConfigError

GPU, SCRIPT = "gpu", "script"
MAX_INDEX = 64  # candidates per base name: more workers of one kind on one host than anyone runs

# A name travels in AMQP queue names (255 bytes at most, with Celery's
# ".celery.pidbox" and our lease prefix added), Redis keys and the local broker's file
# names: letters, digits and . _ : - only, with one @ between the node's two parts.
_PART = re.compile(r"[A-Za-z0-9._:-]+")
MAX_LENGTH = 200


def machine() -> str:
    """This machine's name as it goes into a worker name."""
    return _clean(socket.gethostname()) or "localhost"


def candidates(role: str, *, server_url: str | None = None, machine_name: str | None = None) -> list[str]:
    """The default names of a worker on `machine_name` (default: this machine), in the order they are tried."""
    here = machine_name if machine_name is not None else machine()
    where = f"{here}:{_server_place(server_url, here)}" if server_url else here
    return [f"{role}@{where}"] + [f"{role}-{i}@{where}" for i in range(2, MAX_INDEX + 1)]


def check_name(name: str) -> str:
    """A name given with --name, or a ConfigError that says what is wrong with it."""
    name = name.strip()
    parts = name.split("@")
    if not name or len(name) > MAX_LENGTH or len(parts) > 2 or not all(_PART.fullmatch(p) for p in parts):
        raise ConfigError(f"--name {name!r} cannot be a worker name: use up to {MAX_LENGTH} letters, digits, "
                          "'.', '_', ':' or '-', with at most one '@' (e.g. gpu-b or gpu@box-2)")
    return name


def node_name(name: str) -> str:
    """The Celery node name a worker of this name runs as: what two workers may not share
    (Celery completes a name without '@' as celery@NAME)."""
    return default_nodename(name)


def _server_place(server_url: str, here: str) -> str:
    parts = urlsplit(server_url if "://" in server_url else f"http://{server_url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    host = (parts.hostname or "localhost").lower()
    return str(port) if _on_this_machine(host, here) else f"{_clean(host)}:{port}"


def _on_this_machine(host: str, here: str) -> bool:
    if host == "localhost" or host.endswith(".localhost") or host == here.lower():
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _clean(text: str) -> str:
    # An IPv6 literal's colons would read as our separators: fe80::1 -> fe80--1.
    return re.sub(r"[^A-Za-z0-9._-]", "-", text).strip("-")
