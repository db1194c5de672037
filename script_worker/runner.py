"""The script contract: one subprocess per interaction, JSON in on stdin, one JSON
object out on stdout.

`run_script` is the only place wavefarm starts a script. It never raises for
anything a script does: every outcome, good or bad, comes back as a TaskResult,
and a failure keeps the exit code and the end of stderr so the user sees why.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from common import storable
from common.messages import Failure, FailureClass, ScriptTask, TaskResult, Usage, utcnow
from common.redact import scrub, secrets_of
from common.scripts import locate_script
from common.supervisor import signal_group, wait_exit

MAX_STDOUT_BYTES = 16 * 1024 * 1024  # one JSON object; beyond this it is a runaway, not an output
STDERR_TAIL_BYTES = 4096             # what a failure record keeps of stderr
PREVIEW_CHARS = 200                  # how much of a bad stdout a failure message quotes
KILL_GRACE_S = 2.0                   # between SIGTERM and SIGKILL of a timed-out script
READER_JOIN_S = 5.0                  # see _finish_readers

# Names of caller-given variables whose values are secrets by their name alone.
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)


def run_script(
    task: ScriptTask,
    scripts_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    worker: str = "",
) -> TaskResult:
    """Run SCRIPTS_DIR/<task.script> on task.input and return its result."""
    started = utcnow()
    clock = time.monotonic()
    given_env = dict(env or {})
    redact = _redactor(given_env)

    def result(output: dict[str, Any] | None = None, failure: Failure | None = None,
               exit_code: int | None = None) -> TaskResult:
        duration_s = round(time.monotonic() - clock, 3)
        return TaskResult(
            interaction_id=task.interaction_id, attempt=task.attempt, output=output, failure=failure,
            usage=Usage(call_s=duration_s), metrics={"exit_code": exit_code, "duration_s": duration_s},
            worker=worker, started_at=started, finished_at=utcnow(),
        )

    path, problem = locate_script(task.script, scripts_dir)
    if path is None:
        return result(failure=Failure(failure_class=FailureClass.SCRIPT_NOT_FOUND, message=problem))

    try:
        # NaN is not JSON: a strict parser in the script would choke on it.
        payload = json.dumps(task.input, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        return result(failure=Failure(failure_class=FailureClass.RENDER_ERROR,
                                      message=f"the input of {task.script} is not JSON: {exc}"))

    # *.py runs on this worker's interpreter, so a ScriptActor script imports wavefarm
    # whatever its shebang says (`/usr/bin/env python3` may be a Python without it)
    # and needs no exec bit. Anything else is executed directly: exec bit and shebang.
    argv = [sys.executable, str(path)] if path.suffix == ".py" else [str(path)]
    try:
        proc = subprocess.Popen(
            argv, cwd=Path(scripts_dir).resolve(),  # relative paths in a script mean the scripts dir
            env=_script_env(task, given_env),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            # Its own process group, so a timeout kills everything it started.
            start_new_session=True,
        )
    except OSError as exc:  # exec format error (no shebang), permission denied, ...
        return result(failure=Failure(failure_class=FailureClass.SCRIPT_ERROR,
                                      message=f"{task.script} could not be started: {exc.strerror or exc}"))

    # Three threads move the bytes, so a script that floods stdout or stderr (or does
    # not read its stdin) can never deadlock against us, and memory stays bounded.
    feeder = threading.Thread(target=_feed, args=(proc.stdin, payload), daemon=True)
    out = _Capture(proc.stdout, head=MAX_STDOUT_BYTES)
    err = _Capture(proc.stderr, tail=STDERR_TAIL_BYTES)
    timed_out = False
    try:
        for thread in (feeder, out, err):
            thread.start()
        timed_out = not wait_exit(proc.pid, task.timeout_s)
        if timed_out:
            signal_group(proc.pid, signal.SIGTERM)
            wait_exit(proc.pid, KILL_GRACE_S)
    finally:
        # Always, even after a clean exit: nothing a script started outlives it on
        # this worker (a leftover child would also hold our pipes open). The leader
        # is not reaped yet, so its pid, which names the group, cannot have been reused.
        signal_group(proc.pid, signal.SIGKILL)
        code = proc.wait()
    _finish_readers(feeder, out, err)

    stderr_tail = storable.clean(redact(err.text()))
    last_line = next((ln.strip() for ln in reversed(stderr_tail.splitlines()) if ln.strip()), "")
    last_line = last_line[:PREVIEW_CHARS] + ("..." if len(last_line) > PREVIEW_CHARS else "")

    def failed(cls: FailureClass, message: str) -> TaskResult:
        return result(failure=Failure(failure_class=cls, message=storable.clean(redact(message)), exit_code=code,
                                      stderr_tail=stderr_tail or None), exit_code=code)

    if timed_out:
        return failed(FailureClass.TIMEOUT, f"{task.script} ran longer than its timeout of {task.timeout_s:g}s "
                                            "and was killed with everything it started")
    if code != 0:
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        return failed(FailureClass.SCRIPT_ERROR, f"{task.script} {how}: {last_line or '(nothing on stderr)'}")
    if out.overflowed:
        return failed(FailureClass.INVALID_OUTPUT,
                      f"{task.script} output too large: more than {MAX_STDOUT_BYTES // 2**20} MiB on stdout")
    output, complaint = _parse_object(bytes(out.data))
    if output is None:
        preview = bytes(out.data).decode("utf-8", "replace")[:PREVIEW_CHARS]
        return failed(FailureClass.INVALID_OUTPUT,
                      f"{task.script} printed {complaint} where one JSON object was expected: {preview!r}")
    return result(output=output, exit_code=code)


def _script_env(task: ScriptTask, given: Mapping[str, str]) -> dict[str, str]:
    """A minimal environment, then what the caller passes.

    The worker's own environment holds the broker URL and whatever else its host
    set; a script gets none of it unless the caller passes it on purpose (the
    database URL, for scripts that write there). PYTHONPATH and the like stay out,
    so a script sees the same interpreter and packages on every worker.
    """
    base = {
        # The worker's interpreter first: `python3` inside a shell script is the one
        # that has wavefarm installed, as in an activated virtualenv.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]),
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",  # JSON is UTF-8 whatever the host's locale
        "PYTHONIOENCODING": "utf-8",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        # Who is asking, so a script that writes somewhere can be idempotent per
        # interaction (the broker may deliver a task twice).
        "WAVEFARM_INTERACTION_ID": str(task.interaction_id),
        "WAVEFARM_ATTEMPT": str(task.attempt),
        "WAVEFARM_RUN_ID": str(task.run_id),
        "WAVEFARM_BATCH_ID": str(task.batch_id),
        "WAVEFARM_STEP": task.step,
    }
    return base | dict(given)


def _redactor(given: Mapping[str, str]) -> Callable[[str], str]:
    """Masks the secrets we handed the script if it prints them: its stderr and
    stdout end up in the database and in front of people."""
    secrets: set[str] = set()
    for name, value in given.items():
        secrets.update(secrets_of(value))
        if _SECRET_NAME.search(name) and len(value) >= 4:
            secrets.add(value)
    ordered = sorted(secrets, key=len, reverse=True)  # a longer secret may contain a shorter one
    return lambda text: scrub(text, ordered)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _feed(stream: IO[bytes] | None, payload: bytes) -> None:
    assert stream is not None
    try:
        stream.write(payload)
    except (BrokenPipeError, ValueError, OSError):
        pass  # the script did not read its input; what it did instead decides the result
    finally:
        try:
            stream.close()
        except OSError:
            pass


class _Capture(threading.Thread):
    """Drains a pipe to the end, keeping its first `head` bytes or its last `tail` bytes."""

    def __init__(self, stream: IO[bytes] | None, *, head: int = 0, tail: int = 0) -> None:
        super().__init__(daemon=True)
        assert stream is not None
        self.stream, self.head, self.tail = stream, head, tail
        self.data = bytearray()
        self.overflowed = False

    def run(self) -> None:
        read = getattr(self.stream, "read1", self.stream.read)
        try:
            while chunk := read(65536):
                if self.head:
                    if len(self.data) + len(chunk) > self.head:
                        self.overflowed = True  # keep draining, keep nothing more
                    else:
                        self.data += chunk
                else:
                    self.data += chunk
                    if len(self.data) > 2 * self.tail:  # trim now and then, not on every chunk
                        del self.data[: -self.tail]
        except (OSError, ValueError):
            pass
        finally:
            self.stream.close()

    def text(self) -> str:
        data = bytes(self.data[-self.tail:]) if self.tail else bytes(self.data)
        return data.decode("utf-8", "replace")


def _finish_readers(*threads: threading.Thread) -> None:
    """Join the pipe threads. A descendant that left the process group (setsid) can
    hold a pipe open after everything else died; then we stop waiting for it rather
    than block the worker, and its reader thread ends when it does."""
    deadline = time.monotonic() + READER_JOIN_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def _parse_object(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """stdout as one JSON object, or None and what it was instead."""
    if not raw.strip():
        return None, "nothing"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "bytes that are not UTF-8"
    try:
        value = storable.loads(text)  # NaN and Infinity are not JSON, and Postgres would refuse them later
    except ValueError as exc:
        return None, f"text that is not JSON ({exc})"
    if not isinstance(value, dict):
        return None, f"a JSON {_JSON_KIND.get(type(value), 'value')}"
    found = storable.problem(value)
    if found:
        return None, f"a JSON object that {found}"
    return value, ""


_JSON_KIND = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}

