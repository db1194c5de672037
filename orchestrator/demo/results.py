"""What the demo prints when the batch has ended: the batch's status, its first results,
what the example's scripts saved (its `report.sql`), and the commands to look further."""

from __future__ import annotations

import json
from itertools import chain, islice
from pathlib import Path

import psycopg
from rich.table import Table
from rich.text import Text

from common.settings import get_settings
from orchestrator.db.store import Store
from orchestrator.demo.console import err, out
from orchestrator.demo.example import Example, shown_path

RESULT_ROWS = 10


def print_results(db: Store, batch_id: int, key: str | None, outcome: dict) -> None:
    from orchestrator import overview
    from orchestrator.cli import _print_batch_status

    data = overview.batch_status(db, batch_id)
    runs = data["runs"]
    ended = sum(runs.values()) - runs.get("running", 0)
    took = f" in {outcome['elapsed_s']:.1f}s" if "elapsed_s" in outcome else ""
    said = f"all {ended} runs ended" if not runs.get("running") else f"{ended} of {sum(runs.values())} runs ended"
    err.print(f"\n{said}{took}", highlight=False)
    _print_batch_status(data)
    steps = overview.batch_steps(db, batch_id)
    records = overview.export_batch(db, batch_id)
    try:
        sample = list(islice(records, RESULT_ROWS))
        # A failed run tells the most in `orchestrator show`: the first one, if any.
        failed = next((r for r in chain(sample, islice(records, 10_000)) if r["status"] == "failed"), None)
    finally:
        records.close()
    table = Table(title=f"results (the first {len(sample)} of {ended}; all of them: orchestrator export)")
    for column in ("run", key or "line", "status", "last output / why it ended"):
        table.add_column(column, overflow="fold")
    for r in sample:
        last = next((r["outputs"][s] for s in reversed(steps) if s in r["outputs"]), None)
        ended_so = (r["status"] != "completed" or r["outcome"]) and r["end_reason"]
        shown = _short(r["end_reason"] if ended_so else last, 160)
        status = r["status"] + (f" ({r['outcome']})" if r["outcome"] else "")
        table.add_row(str(r["run_id"]), str(r["row"].get(key) if key else r["line"]), status, shown)
    out.print(table)
    outcome["show_run"] = (failed or sample[0])["run_id"] if sample else None
    outcome["show_why"] = ("a failed run: its interactions and why it ended" if failed
                           else "one run's chain of interactions")


def print_saved(db: Store, batch_id: int, example: Example) -> None:
    """The example's own view of its results: `report.sql` beside the workflow, if any
    (the postings example shows what it saved to the postings table)."""
    query = example.workflow.parent / "report.sql"
    if not query.is_file():
        return
    try:
        rows = db.read_only(query.read_text(encoding="utf-8"), {"batch_id": batch_id})
    except psycopg.Error as exc:
        err.print(Text(f"{query.name} did not run: {exc.diag.message_primary or exc}", style="yellow"))
        return
    if not rows:
        return
    table = Table(title=f"what the scripts saved ({shown_path(query)})")
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows[:RESULT_ROWS * 3]:
        table.add_row(*("" if v is None else _short(v, 70) for v in row.values()))
    out.print(table)


def print_next(outcome: dict, data: Path, keep_db: bool) -> None:
    batch_id = outcome["batch_id"]
    out.print()
    out.print(Text("where to look next", style="bold"))
    lines = []
    # Without WAVEFARM_DATABASE_URL every command uses the embedded Postgres (starting it
    # if needed); a shell that sets it must point it here to see the demo's data.
    prefix = ""
    if "embedded_url" in outcome and get_settings().database_url is not None:
        prefix = f"WAVEFARM_DATABASE_URL='{outcome['embedded_url']}' "
    if outcome.get("show_run") is not None:
        lines.append(f"  {prefix}orchestrator show {outcome['show_run']}    # {outcome['show_why']}")
    lines += [f"  {prefix}orchestrator status --batch {batch_id}",
              f"  {prefix}orchestrator export --batch {batch_id} --format csv -o results.csv",
              f"  logs of serve and the workers: {data / 'logs'}"]
    if "embedded_url" in outcome:
        if keep_db:
            lines.append("  the embedded Postgres is still running (`orchestrator demo --stop-db` stops it)")
        else:
            lines.append("  these commands start the embedded Postgres for themselves (`--keep-db` leaves it "
                         "running between them)")
    out.print("\n".join(lines), highlight=False)


def _short(value: object, limit: int = 90) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
