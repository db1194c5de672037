"""`pip install .` (not editable) into a fresh venv, then `orchestrator demo` from an empty
directory with an empty home: the example, its scripts and postings come from the
installed package, not from a source tree.

The project is built into a wheel from a copy of the source, and installed without its
dependencies into a venv of its own; that venv borrows this test venv's installed
libraries through a .pth file (offline and fast). A .pth file's own paths are not site
directories, so this venv's editable hook is not loaded there: every line of wavefarm
the demo runs comes from the wheel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.acceptance.newcomer import run_demo, wait_none_left

ROOT = Path(__file__).resolve().parents[2]
# What a clone has that a build must not see: this checkout's venv and build leftovers.
NOT_IN_A_CLONE = {".venv", ".git", "build", "dist", ".pytest_cache", "__pycache__"}


def run(*argv: str | Path, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin directory of a fresh venv with wavefarm installed from its wheel."""
    work = tmp_path_factory.mktemp("package")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=lambda folder, names: [
        n for n in names if n in NOT_IN_A_CLONE or n.endswith(".egg-info")])
    wheels = work / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--wheel-dir", wheels, source)
    wheel = next(wheels.glob("wavefarm-*.whl"))

    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel)
    borrowed = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "zz-test-venv-libraries.pth").write_text("".join(f"{p}\n" for p in sorted(borrowed)))
    return venv / "bin"


def test_the_code_comes_from_the_wheel(installed, tmp_path):
    where = run(installed / "python", "-c", "import json, common, gpu_worker, orchestrator.examples, script_worker; "
                "print(json.dumps([m.__file__ for m in (common, gpu_worker, orchestrator.examples, script_worker)]))",
                cwd=tmp_path)
    for path in json.loads(where.stdout):
        assert Path(path).is_relative_to(installed.parent), path


def test_pip_install_then_the_demo_runs_from_an_empty_directory(installed, newcomer, tmp_path, model_server,
                                                                 stop_db_after):
    home, env = newcomer
    empty = tmp_path / "somewhere-else"
    empty.mkdir()
    env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = run_demo(installed, env, empty, "--ollama-url", model_server.url, "--limit", "3")
    assert done.returncode == 0
    ended = re.search(r"all (\d+) runs ended in", done.stderr)
    assert ended and int(ended.group(1)) == 3
    assert "runs: running 0 " in done.stdout
    assert "results (the first 3 of 3" in done.stdout
    # The example's scripts ran from the package and saved each posting's results.
    assert "what the scripts saved (examples/postings/report.sql)" in done.stdout
    assert len(re.findall(r"\b\d+ (GENUINE|BORDERLINE|LIKELY_INTERN)", done.stdout)) == 3
    assert list(empty.iterdir()) == []  # nothing written where it was started
    assert wait_none_left(home) == []
