"""The local broker (one machine, common/local_broker.py): a name is an exclusive
`flock` on a file in the broker's directory. The kernel drops the lock when the
process ends, however it ends, and of two processes asking at once it gives it to one.
There is no broker to restart: a lock held is held until release."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from common.leases.base import BrokerAway, Lease


class FileLease(Lease):
    def __init__(self, directory: Path, key: str) -> None:
        super().__init__(key)
        self._path = directory / "worker-names" / f"{key}.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise BrokerAway(f"cannot open {self._path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def renew(self) -> bool:
        return self.acquire()

    def release(self) -> None:
        # The file stays: deleting a lock file races with a process that just opened it.
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
