"""What the demo runs: the job-posting example (the repository's examples/postings/,
which travels as the package data `orchestrator.examples`), or the files given."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib.resources import files
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.demo.console import DemoError, say
from orchestrator.demo.server import choose_models

if TYPE_CHECKING:
    from orchestrator.workflow import Workflow


def examples_root() -> Path:
    """examples/ of the source tree in an editable install, site-packages/orchestrator/examples
    in a built one: a directory either way (the scripts must be files to run)."""
    try:
        return Path(str(files("orchestrator.examples")))
    except ModuleNotFoundError:  # the code runs from a source tree that was never installed
        raise DemoError("the example is not installed: install wavefarm (`pip install .`, or "
                        "`pip install -e .` in a clone), or give --workflow, --batch and --scripts-dir") from None


@dataclass(frozen=True)
class Example:
    workflow: Path
    batch: Path
    scripts_dir: Path
    key: str | None


def default_example() -> Example:
    """examples/postings/: the job-posting pipeline, its scripts and sample postings."""
    folder = examples_root() / "postings"
    return Example(folder / "workflow.yaml", folder / "postings.csv", folder / "scripts", "source_id")


def choose_example(workflow: Path | None, batch: Path | None, scripts_dir: Path | None,
                   key: str | None) -> Example:
    """The example, with what the options replace; a file that is not there is an error."""
    if workflow and batch and scripts_dir:
        example = Example(workflow.resolve(), batch.resolve(), scripts_dir.resolve(), key)
    else:
        base = default_example()
        example = Example(
            workflow=(workflow or base.workflow).resolve(),
            batch=(batch or base.batch).resolve(),
            scripts_dir=(scripts_dir or base.scripts_dir).resolve(),
            key=key if key is not None else (None if workflow is not None or batch is not None else base.key),
        )
    for what, path in (("workflow", example.workflow), ("batch", example.batch)):
        if not path.is_file():
            raise DemoError(f"the {what} file {path} does not exist")
    if not example.scripts_dir.is_dir():
        raise DemoError(f"the scripts directory {example.scripts_dir} does not exist")
    return example


def shown_path(path: Path) -> str:
    """A path of the packaged example as the repository names it (examples/...)."""
    try:
        root = examples_root().resolve()
    except DemoError:
        return str(path)
    return f"examples/{path.relative_to(root)}" if path.is_relative_to(root) else str(path)


def load_workflow(example: Example, served: list[str]) -> Workflow:
    """The workflow with each of its model aliases pointed at a model the server has."""
    from orchestrator.workflow import load_file  # templates and YAML: only when the demo runs

    wf = load_file(example.workflow, example.scripts_dir)
    aliases = wf.models
    if not aliases:
        return wf
    chosen = choose_models(aliases, served)
    for alias, model in chosen.items():
        if model != aliases[alias]:
            say(f"model alias {alias}: {aliases[alias]} is not served, using {model}")
    return load_file(example.workflow, example.scripts_dir, chosen)


def first_rows(batch: Path, limit: int, folder: Path) -> Path:
    """The first `limit` records of a CSV file (records, not lines: a field may hold
    line breaks), as a file of their own."""
    folder.mkdir(parents=True, exist_ok=True)
    sample = folder / f"{batch.stem}-first-{limit}.csv"
    with batch.open(newline="", encoding="utf-8-sig") as f, sample.open("w", newline="", encoding="utf-8") as out:
        reader, writer = csv.reader(f), csv.writer(out, lineterminator="\n")
        for row in islice(reader, limit + 1):  # the header and `limit` records
            writer.writerow(row)
    return sample
