"""One supervisor for the long-running processes wavefarm starts itself: the demo's farm
(serve and the workers), the built-in model's server, the tests' farms.

Each process runs in a session of its own, so a Ctrl-C in the terminal reaches only the
parent (which then stops its children in order) and a signal to the process group
reaches everything the child started. Its output is appended to its own log file, and
what it wrote since this start is what a failure quotes. `stop_all` sends SIGTERM to
every group, then SIGKILL to what is still there after a grace period.

A child's exit is waited for without reaping it until its group has been signalled a
last time: an unreaped leader keeps its pid, which names the group, reserved, so the
group signal can never reach an unrelated process that got the pid afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import WavefarmError

GRACE_S = 15.0      # a process's time to stop after SIGTERM before SIGKILL
TAIL_LINES = 25     # how much of a log a failure quotes
TAIL_BYTES = 64 * 1024


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` for the child `pid` to exit, without reaping it.

    Polls like Popen.wait(timeout) does, from 1 ms up to 50 ms.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if has_exited(pid):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def has_exited(pid: int) -> bool:
    """Whether the child `pid` has exited, leaving it unreaped."""
    try:
        return _waitid(pid) is not None
    except ChildProcessError:  # reaped behind our back: it has exited all the same
        return True


def _waitid(pid: int) -> os.waitid_result | None:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone


def log_tail(log: Path, start: int = 0, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines written to `log` since byte `start`."""
    try:
        with log.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(start, end - TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(nothing in the log)"


@dataclass
class Process:
    """A supervised child: its Popen, and where this start's output begins in its log."""

    name: str
    popen: subprocess.Popen
    log: Path
    log_start: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return not has_exited(self.pid)

    def exit_code(self) -> int | None:
        """None while it runs; its exit status (negative: the signal) once it stopped,
        read without reaping it (`stop` still signals what it left in its group)."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            info = _waitid(self.pid)
        except ChildProcessError:  # reaped behind our back
            return self.popen.wait()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def tail(self, lines: int = TAIL_LINES) -> str:
        return log_tail(self.log, self.log_start, lines)


class ProcessDied(WavefarmError):
    """A supervised process stopped on its own; the message quotes the end of its log."""

    def __init__(self, process: Process, code: int) -> None:
        self.name = process.name
        self.code = code
        self.log = process.log
        tail = "\n".join(f"  | {line}" for line in process.tail().splitlines())
        super().__init__(f"{process.name} stopped unexpectedly (exit {code}); the end of {process.log}:\n{tail}")


class Supervisor:
    """`with Supervisor(logs) as sup: sup.start("serve", [...]); ...; sup.check()`."""

    def __init__(self, logs: Path, *, env: Mapping[str, str] | None = None, grace_s: float = GRACE_S,
                 say: Callable[[str], None] | None = None) -> None:
        self.logs = Path(logs)
        self.env = dict(env) if env is not None else None
        self.grace_s = grace_s
        self.say = say or (lambda _text: None)
        self.processes: dict[str, Process] = {}

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def __contains__(self, name: str) -> bool:
        return name in self.processes

    def __getitem__(self, name: str) -> Process:
        return self.processes[name]

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> Process:
        """Start `argv` in its own session, its stdout and stderr appended to NAME.log."""
        earlier = self.processes.pop(name, None)
        if earlier is not None:
            if earlier.alive():
                self.processes[name] = earlier
                raise ValueError(f"{name} is already running")
            self._stop([earlier], signal.SIGKILL, 0)  # reaped, with what it left in its group
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.log(name)
        with path.open("ab") as log:
            # The program only: an argument may be a URL with a password in it.
            log.write(f"\n---- {time.strftime('%Y-%m-%d %H:%M:%S')} {name}: {Path(argv[0]).name}\n".encode())
            log.flush()
            start = log.tell()
            environment = env if env is not None else self.env
            popen = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd,
                                     env=dict(environment) if environment is not None else None,
                                     start_new_session=True)
        process = self.processes[name] = Process(name, popen, path, start)
        return process

    def check(self) -> None:
        """Raise ProcessDied for the first process that has stopped on its own."""
        for process in self.processes.values():
            code = process.exit_code()
            if code is not None:
                raise ProcessDied(process, code)

    def stop(self, name: str, sig: int = signal.SIGTERM, grace_s: float | None = None) -> int:
        """Send `sig` to the process's group; SIGKILL the group if it is still there after
        the grace period. Returns its exit status; it is no longer supervised."""
        process = self.processes.pop(name)
        self._stop([process], sig, self.grace_s if grace_s is None else grace_s)
        return process.popen.returncode

    def stop_all(self) -> None:
        """SIGTERM to every group, then SIGKILL to what is still there after the grace period."""
        processes = list(self.processes.values())
        self.processes.clear()
        self._stop(processes, signal.SIGTERM, self.grace_s)

    def _stop(self, processes: list[Process], sig: int, grace_s: float) -> None:
        for process in processes:
            if process.popen.returncode is None:
                signal_group(process.pid, sig)
        until = time.monotonic() + grace_s
        for process in processes:
            if process.popen.returncode is not None:
                continue  # reaped already: its pid may name someone else's group by now
            if not wait_exit(process.pid, max(0.0, until - time.monotonic())):
                self.say(f"{process.name} did not stop in {grace_s:.0f}s: killing it")
            # Whatever the leader left in its group goes with it; the leader is not reaped
            # yet, so its pid still names this group.
            signal_group(process.pid, signal.SIGKILL)
            process.popen.wait()
