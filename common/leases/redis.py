"""Redis: a name is a key set only where absent, with a time to live that the keeper
refreshes (redis-py's Lock: SET NX PX, and scripts that extend or delete it only for
its holder). Redis keeps nothing tied to a client's connection that another client
could ask about, so the key is the lease: it outlives its worker by at most TTL_S.

A worker killed with SIGKILL and started again at once (systemd's Restart=) would find
its own name held for those seconds and take the next one. So the key's value says
who holds it (`Holder`), and a holder that provably no longer runs on this machine
is replaced: a compare-and-delete, so of two restarting workers one takes the name.
After a Redis restart that lost the key, `renew` sets it again.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import redis
from redis.exceptions import LockError, LockNotOwnedError, RedisError
from redis.lock import Lock

from common.leases.base import BrokerAway, Lease

TTL_S = 30.0
IO_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Holder:
    """Who holds a name: enough to tell, on the holder's own machine, whether it still runs."""

    machine: str
    boot: str | None      # this boot of the machine: a pid means nothing across reboots
    pid_space: str | None  # the pid namespace: a container's pid 7 is not the host's
    pid: int
    started: float         # the process's start time: a pid is reused after its process ends
    lease: str = ""        # tells two leases of one process apart

    @classmethod
    def this_process(cls) -> Holder:
        return cls(socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), _pid_space(), os.getpid(),
                   psutil.Process().create_time(), uuid.uuid4().hex)

    def token(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def parse(cls, token: bytes) -> Holder | None:
        try:
            return cls(**json.loads(token))
        except (ValueError, TypeError):
            return None

    def gone(self) -> bool:
        """True only when this holder was a process of this machine, in this boot and pid
        namespace, that no longer runs; anything unknown counts as alive."""
        here = Holder.this_process()
        if None in (self.boot, self.pid_space) or (self.machine, self.boot, self.pid_space) != (
                here.machine, here.boot, here.pid_space):
            return False
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) > 0.01
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False


class RedisLease(Lease):
    def __init__(self, url: str, key: str, *, ttl_s: float = TTL_S) -> None:
        super().__init__(key)
        # kombu writes a Unix socket as redis+socket:///path; redis-py as unix:///path.
        url = url.replace("redis+socket://", "unix://", 1)
        self._redis = redis.Redis.from_url(url, socket_timeout=IO_TIMEOUT_S, socket_connect_timeout=IO_TIMEOUT_S)
        # thread_local=False: the keeper's thread renews what the main thread acquired.
        self._lock = Lock(self._redis, f"wavefarm:worker-name:{key}", timeout=ttl_s, thread_local=False)
        self._token = Holder.this_process().token()

    def acquire(self) -> bool:
        try:
            if self._lock.acquire(blocking=False, token=self._token):
                return True
            held_by = self._redis.get(self._lock.name)
            if held_by == self._token.encode():
                return True  # ours already; the keeper refreshes its time to live
            if held_by is not None:
                holder = Holder.parse(held_by)
                if holder is None or not holder.gone():
                    return False
                try:
                    self._lock.do_release(held_by)
                except LockNotOwnedError:
                    pass  # another worker replaced it first: SET NX below decides
            return self._lock.acquire(blocking=False, token=self._token)
        except RedisError as exc:  # LockError is one too, but no call above raises it
            raise BrokerAway(f"{type(exc).__name__}: {exc}") from None

    def renew(self) -> bool:
        try:
            return self._lock.reacquire()
        except LockError:  # expired, or lost in a Redis restart: set it again where free
            return self.acquire()
        except RedisError as exc:
            raise BrokerAway(f"{type(exc).__name__}: {exc}") from None

    def release(self) -> None:
        try:
            if self._lock.local.token is not None:
                self._lock.release()
        except (LockError, RedisError):
            pass  # expired or unreachable: it ends with its TTL
        finally:
            self._redis.close()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _pid_space() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
