"""ScriptActor, run the way the farm runs it: through run_script, as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from common.messages import FailureClass, ScriptTask, TaskResult
from script_worker import ScriptActor, run_script

SCRIPTS = Path(__file__).resolve().parent / "scripts"
DB_URL = "postgresql://farm:actor-pw@db:5432/farm"


def run(script: str, data: dict[str, Any], env: dict[str, str] | None = None) -> TaskResult:
    task = ScriptTask(interaction_id=1, attempt=1, run_id=1, batch_id=1, step="actor",
                      timeout_s=20, script=script, input=data)
    return run_script(task, SCRIPTS, env=env)


def test_actor_success() -> None:
    result = run("greet_actor.py", {"name": "Ada"})
    assert result.ok, result.failure
    assert result.output == {"greeting": "hello Ada", "has_database": False}


def test_database_url_comes_from_the_env_and_is_never_printed() -> None:
    result = run("greet_actor.py", {"name": "Ada"}, env={"WAVEFARM_DATABASE_URL": DB_URL})
    assert result.output == {"greeting": "hello Ada", "has_database": True}
    assert "actor-pw" not in result.model_dump_json()


def test_missing_required_key_is_a_clean_bad_input_error() -> None:
    f = run("greet_actor.py", {"nom": "Ada"}).failure
    assert f is not None and f.failure_class == FailureClass.SCRIPT_ERROR and f.exit_code == 2
    assert "missing required input key(s): name (got: nom)" in f.message
    assert f.stderr_tail is not None and "Traceback" not in f.stderr_tail


def test_exception_in_process_is_exit_1_with_traceback_and_a_last_line() -> None:
    f = run("greet_actor.py", {"name": "Bob", "fail": True}).failure
    assert f is not None and f.failure_class == FailureClass.SCRIPT_ERROR and f.exit_code == 1
    assert f.message == "greet_actor.py exited with code 1: Greet failed: ValueError: cannot greet Bob"
    assert f.stderr_tail is not None and "Traceback" in f.stderr_tail and "in process" in f.stderr_tail


@pytest.mark.parametrize(
    ("flag", "complaint"), [("return_list", "expected a dict"), ("return_nan", "not JSON compliant")]
)
def test_a_result_that_is_not_a_json_object_fails_in_the_actor(flag: str, complaint: str) -> None:
    f = run("greet_actor.py", {"name": "Eve", flag: True}).failure
    assert f is not None and f.failure_class == FailureClass.SCRIPT_ERROR and f.exit_code == 1
    assert complaint in f.message


def test_print_inside_process_goes_to_stderr_not_into_the_output() -> None:
    task = ScriptTask(interaction_id=1, attempt=1, run_id=1, batch_id=1, step="noisy",
                      timeout_s=20, script="noisy_actor.py", input={"value": 21})
    result = run_script(task, SCRIPTS)
    assert result.ok, result.failure
    assert result.output == {"value": 42}


def test_print_inside_process_is_kept_on_stderr_when_it_fails(tmp_path: Path) -> None:
    (tmp_path / "talk_then_fail.py").write_text(
        "from script_worker.actor import ScriptActor\n"
        "class T(ScriptActor):\n"
        "    def process(self, data):\n"
        "        print('halfway there')\n"
        "        raise RuntimeError('nope')\n"
        "T.main()\n"
    )
    task = ScriptTask(interaction_id=1, attempt=1, run_id=1, batch_id=1, step="t",
                      timeout_s=20, script="talk_then_fail.py", input={})
    f = run_script(task, tmp_path).failure
    assert f is not None and f.stderr_tail is not None
    assert "halfway there" in f.stderr_tail and f.message.endswith("T failed: RuntimeError: nope")


@pytest.mark.parametrize("stdin", ["not json", "[1, 2]"])
def test_bad_stdin_exits_2(stdin: str) -> None:
    # Straight through subprocess: run_script always sends an object, a person may not.
    proc = subprocess.run([sys.executable, str(SCRIPTS / "greet_actor.py")], input=stdin.encode(),
                          capture_output=True, timeout=20)
    assert proc.returncode == 2 and proc.stdout == b""
    assert b"Greet: stdin" in proc.stderr


def test_process_is_plain_python_for_unit_tests_of_actors() -> None:
    class Double(ScriptActor):
        def process(self, data: dict[str, Any]) -> dict[str, Any]:
            return {"x": data["x"] * 2}

    assert Double().process({"x": 2}) == {"x": 4}
