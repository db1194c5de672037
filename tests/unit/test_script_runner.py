"""run_script: the subprocess contract, against real scripts in tests/unit/scripts/."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from common.messages import FailureClass, ScriptTask, TaskResult
from script_worker import runner
from script_worker.runner import STDERR_TAIL_BYTES, run_script

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def task(script: str, data: dict[str, Any] | None = None, timeout_s: float = 20.0) -> ScriptTask:
    return ScriptTask(interaction_id=7, attempt=2, run_id=3, batch_id=1, step="save",
                      timeout_s=timeout_s, script=script, input=data or {})


def run(script: str, data: dict[str, Any] | None = None, *, scripts_dir: Path = SCRIPTS,
        timeout_s: float = 20.0, env: dict[str, str] | None = None) -> TaskResult:
    return run_script(task(script, data, timeout_s), scripts_dir, env=env, worker="w1")


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (this container's init may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_dead(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- success -----------------------------------------------------------------


def test_echo_returns_its_input_as_output() -> None:
    data = {"posting_id": "p1", "summary": "Nurse, night shifts — Zürich", "n": [1, {"a": None}]}
    result = run("echo.py", data)
    assert result.ok, result.failure
    assert result.output == data
    assert result.interaction_id == 7 and result.attempt == 2 and result.worker == "w1"
    assert result.metrics["exit_code"] == 0 and result.metrics["duration_s"] >= 0
    assert result.started_at is not None and result.finished_at is not None
    assert result.started_at <= result.finished_at


def test_whitespace_around_the_object_is_fine(tmp_path: Path) -> None:
    (tmp_path / "spaced.py").write_text('print("\\n\\n  {\\"a\\": 1}  \\n")\n')
    assert run("spaced.py", scripts_dir=tmp_path).output == {"a": 1}


def test_executable_with_shebang_runs_directly(tmp_path: Path) -> None:
    script = tmp_path / "shout.sh"
    script.write_text('#!/bin/sh\nread line\necho "{\\"got\\": $line}"\n')
    script.chmod(0o755)
    result = run("shout.sh", {"x": 1}, scripts_dir=tmp_path)
    assert result.output == {"got": {"x": 1}}, result.failure


def test_script_in_a_subdirectory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "one.py").write_text('print(\'{"one": 1}\')\n')
    assert run("sub/one.py", scripts_dir=tmp_path).output == {"one": 1}


def test_symlink_that_stays_inside_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "real.py").write_text('print(\'{"real": true}\')\n')
    (tmp_path / "alias.py").symlink_to("real.py")
    assert run("alias.py", scripts_dir=tmp_path).output == {"real": True}


# --- script errors -----------------------------------------------------------


def test_nonzero_exit_is_script_error_with_code_and_stderr() -> None:
    result = run("crash.py")
    f = result.failure
    assert f is not None and f.failure_class == FailureClass.SCRIPT_ERROR
    assert f.exit_code == 3 and result.metrics["exit_code"] == 3
    assert f.message == "crash.py exited with code 3: archive unreachable: giving up"
    assert f.stderr_tail is not None and "connecting to the archive" in f.stderr_tail
    assert result.output is None


def test_killed_by_a_signal_says_so(tmp_path: Path) -> None:
    (tmp_path / "segv.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    f = run("segv.py", scripts_dir=tmp_path).failure
    assert f is not None and f.failure_class == FailureClass.SCRIPT_ERROR
    assert f.exit_code == -9 and "killed by SIGKILL" in f.message


def test_huge_stderr_neither_deadlocks_nor_is_kept_whole() -> None:
    result = run("loud.py", {"exit": 4}, timeout_s=20)
    f = result.failure
    assert f is not None and f.failure_class == FailureClass.SCRIPT_ERROR and f.exit_code == 4
    assert f.stderr_tail is not None and len(f.stderr_tail.encode()) <= STDERR_TAIL_BYTES
    assert f.stderr_tail.endswith("the last word\n")
    assert f.message.endswith(": the last word")


def test_huge_stderr_does_not_spoil_a_success() -> None:
    assert run("loud.py", {"exit": 0}).output == {"done": True}


# --- invalid output ----------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("chatty.py", "text that is not JSON"),
        ("list_output.py", "a JSON array"),
        ("silent.py", "printed nothing"),
    ],
)
def test_stdout_that_is_not_one_object_is_invalid_output(script: str, expected: str) -> None:
    result = run(script)
    f = result.failure
    assert f is not None and f.failure_class == FailureClass.INVALID_OUTPUT, f
    assert f.exit_code == 0
    assert expected in f.message and f.message.startswith(script)


def test_invalid_output_quotes_what_was_printed() -> None:
    f = run("chatty.py").failure
    assert f is not None and "Loading model..." in f.message


def test_preview_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "long.py").write_text('print("z" * 100000)\n')
    f = run("long.py", scripts_dir=tmp_path).failure
    assert f is not None and f.failure_class == FailureClass.INVALID_OUTPUT
    assert len(f.message) < 400


def test_nan_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "nan.py").write_text('print(\'{"score": NaN}\')\n')
    f = run("nan.py", scripts_dir=tmp_path).failure
    assert f is not None and f.failure_class == FailureClass.INVALID_OUTPUT


@pytest.mark.parametrize(("printed", "reason"), [
    (r'{"summary": "a\u0000b"}', "NUL character"),
    (r'{"name": "\ud83d alone"}', "unpaired UTF-16 surrogate"),
    ('[' * 50_000 + ']' * 50_000, "not JSON"),
    ('{"a": ' + '[' * 100 + ']' * 100 + '}', "nested deeper than 64 levels"),
], ids=["nul", "surrogate", "fifty-thousand-deep", "a-hundred-deep"])
def test_json_the_database_cannot_keep_is_invalid_output(tmp_path: Path, printed: str, reason: str) -> None:
    (tmp_path / "bad.py").write_text(f"import sys\nsys.stdout.write({printed!r})\n")
    f = run("bad.py", scripts_dir=tmp_path).failure
    assert f is not None and f.failure_class == FailureClass.INVALID_OUTPUT
    assert reason in f.message


def test_a_nul_on_stderr_is_kept_as_a_replacement_character(tmp_path: Path) -> None:
    (tmp_path / "nul.py").write_text("import sys\nsys.stderr.write('bad \\x00 byte\\n')\nsys.exit(3)\n")
    f = run("nul.py", scripts_dir=tmp_path).failure
    assert f.failure_class == FailureClass.SCRIPT_ERROR
    assert "\x00" not in f.stderr_tail and "\x00" not in f.message
    assert "bad \ufffd byte" in f.stderr_tail


def test_output_too_large() -> None:
    f = run("loud.py", {"stdout_mib": 17}).failure
    assert f is not None and f.failure_class == FailureClass.INVALID_OUTPUT
    assert "output too large" in f.message and len(f.message) < 400


# --- timeouts ----------------------------------------------------------------


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "needs-sigkill"])
def test_timeout_kills_the_whole_process_group(
    tmp_path: Path, ignore_term: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "KILL_GRACE_S", 0.3)  # keep the SIGKILL case fast
    pid_file = tmp_path / "child.pid"
    begun = time.monotonic()
    result = run("hang.py", {"pid_file": str(pid_file), "ignore_term": ignore_term}, timeout_s=1.0)
    elapsed = time.monotonic() - begun
    f = result.failure
    assert f is not None and f.failure_class == FailureClass.TIMEOUT
    assert "timeout of 1s" in f.message
    assert f.exit_code == (-9 if ignore_term else -15)
    assert f.stderr_tail is not None and "waiting forever" in f.stderr_tail
    assert elapsed < 6
    grandchild = int(pid_file.read_text())
    assert wait_dead(grandchild), f"grandchild {grandchild} outlived the timeout"


def test_children_left_behind_by_a_finished_script_are_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "bg.pid"
    (tmp_path / "leaves.py").write_text(
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "print('{\"ok\": true}')\n"
    )
    begun = time.monotonic()
    assert run("leaves.py", scripts_dir=tmp_path, timeout_s=10).output == {"ok": True}
    assert time.monotonic() - begun < 5
    assert wait_dead(int(pid_file.read_text()))


# --- scripts that must never run ---------------------------------------------


@pytest.fixture
def jail(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A scripts dir, and next to it an outside script that leaves a marker if run."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    marker = tmp_path / "marker"
    outside = tmp_path / "outside.py"
    outside.write_text(f"open({str(marker)!r}, 'w').write('ran')\nprint('{{}}')\n")
    return scripts, outside, marker


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked-dir", "dotdot-inside"])
def test_paths_leaving_the_scripts_dir_are_refused(jail: tuple[Path, Path, Path], how: str) -> None:
    scripts, outside, marker = jail
    if how == "dotdot":
        name = "../outside.py"
    elif how == "absolute":
        name = str(outside)
    elif how == "symlink":
        (scripts / "link.py").symlink_to(outside)
        name = "link.py"
    elif how == "symlinked-dir":
        (scripts / "lib").symlink_to(outside.parent)
        name = "lib/outside.py"
    else:  # even a '..' that would land back inside is refused: no path games at all
        (scripts / "sub").mkdir()
        name = "sub/../../outside.py"
    result = run(name, scripts_dir=scripts)
    f = result.failure
    assert f is not None and f.failure_class == FailureClass.SCRIPT_NOT_FOUND, f
    assert name in f.message and str(scripts) in f.message
    assert f.exit_code is None
    assert not marker.exists(), "the outside script was executed"


@pytest.mark.parametrize("name", ["missing.py", "", "adir", "plain.sh"])
def test_what_cannot_be_run_is_script_not_found(tmp_path: Path, name: str) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "plain.sh").write_text("#!/bin/sh\necho '{}'\n")  # no exec bit
    f = run(name, scripts_dir=tmp_path).failure
    assert f is not None and f.failure_class == FailureClass.SCRIPT_NOT_FOUND, f


def test_missing_scripts_dir(tmp_path: Path) -> None:
    f = run("echo.py", scripts_dir=tmp_path / "nope").failure
    assert f is not None and f.failure_class == FailureClass.SCRIPT_NOT_FOUND
    assert "does not exist" in f.message


def test_no_shebang_is_a_script_error_not_an_exception(tmp_path: Path) -> None:
    script = tmp_path / "bare"
    script.write_bytes(b"\x7fNOT-AN-ELF")
    script.chmod(0o755)
    f = run("bare", scripts_dir=tmp_path).failure
    assert f is not None and f.failure_class == FailureClass.SCRIPT_ERROR
    assert "could not be started" in f.message


# --- environment -------------------------------------------------------------


def test_env_is_minimal_plus_what_the_caller_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAVEFARM_BROKER_URL", "amqp://farm:brokerpw@mq/")
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    names = ["WAVEFARM_DATABASE_URL", "EXTRA", "WAVEFARM_BROKER_URL", "PYTHONPATH", "PATH", "LANG",
             "WAVEFARM_INTERACTION_ID", "WAVEFARM_ATTEMPT", "WAVEFARM_STEP"]
    result = run("env_probe.py", {"names": names},
                 env={"WAVEFARM_DATABASE_URL": "postgresql://u:dbpw@db/farm", "EXTRA": "yes"})
    assert result.output is not None, result.failure
    seen = result.output["env"]
    assert seen["WAVEFARM_DATABASE_URL"] == "postgresql://u:dbpw@db/farm"
    assert seen["EXTRA"] == "yes"
    assert seen["WAVEFARM_BROKER_URL"] is None  # the worker's own secrets stay with the worker
    assert seen["PYTHONPATH"] is None
    assert seen["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert seen["LANG"] == "C.UTF-8"
    assert (seen["WAVEFARM_INTERACTION_ID"], seen["WAVEFARM_ATTEMPT"], seen["WAVEFARM_STEP"]) == ("7", "2", "save")
    assert result.output["cwd"] == str(SCRIPTS)


def test_secrets_a_script_prints_are_redacted() -> None:
    url = "postgresql://farm:s3cr3t-pw@db:5432/farm"
    result = run("crash.py", {"say": f"could not connect to {url} (password s3cr3t-pw), token tok-123456"},
                 env={"WAVEFARM_DATABASE_URL": url, "API_TOKEN": "tok-123456"})
    f = result.failure
    assert f is not None and f.stderr_tail is not None
    assert "s3cr3t-pw" not in f.stderr_tail and "tok-123456" not in f.stderr_tail
    assert "postgresql://farm:***@db:5432/farm" in f.stderr_tail


def test_large_input_is_delivered_whole() -> None:
    data = {"text": "é" * 2_000_000}  # 4 MB in, 12 MB of \u00e9 escapes out
    assert run("echo.py", data).output == data


def test_input_that_is_not_json_is_refused_before_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "touch.py").write_text(f"open({str(marker)!r}, 'w')\nprint('{{}}')\n")
    f = run("touch.py", {"score": float("nan")}, scripts_dir=tmp_path).failure
    assert f is not None and f.failure_class == FailureClass.RENDER_ERROR
    assert not marker.exists()


def test_a_long_last_stderr_line_is_cut_in_the_message(tmp_path: Path) -> None:
    (tmp_path / "rant.py").write_text("import sys\nsys.stderr.write('!' * 3000)\nsys.exit(5)\n")
    f = run("rant.py", scripts_dir=tmp_path).failure
    assert f is not None and f.exit_code == 5 and len(f.message) < 300
    assert f.stderr_tail == "!" * 3000


def test_scripts_get_their_own_database_url_when_one_is_set(tmp_path: Path) -> None:
    import json as _json
    import subprocess as _sp

    def probe(**env: str) -> tuple[str | None, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("WAVEFARM_")}
        proc = _sp.run([str(Path(sys.executable).parent / "script-worker"), "--scripts-dir", str(SCRIPTS),
                        "--try", "env_probe.py", "--input", '{"names": ["WAVEFARM_DATABASE_URL"]}'],
                       capture_output=True, text=True, env={**base, **env}, timeout=60)
        return _json.loads(proc.stdout)["output"]["env"]["WAVEFARM_DATABASE_URL"], proc.stderr

    orchestrators = "postgresql://farm:farm-pw@db/farm"
    url, said = probe(WAVEFARM_DATABASE_URL=orchestrators)
    assert url == orchestrators and "orchestrator's own database URL" in said and "farm-pw" not in said
    url, said = probe(WAVEFARM_DATABASE_URL=orchestrators,
                      WAVEFARM_SCRIPTS_DATABASE_URL="postgresql://scripts:s-pw@db/farm")
    assert url == "postgresql://scripts:s-pw@db/farm" and said == ""
