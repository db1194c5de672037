"""The demo's live display: a bar of runs ended, and per model what is done, in flight
and waiting, until the batch ends; a process of the farm that stops ends it early."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from common.supervisor import Supervisor
from orchestrator.reconnect import Reconnecting
from orchestrator.demo.console import err

POLL_S = 0.5
STALL_S = 60.0     # no change for this long: say what the farm knows


def watch(db: Reconnecting, batch_id: int, farm: Supervisor) -> None:
    """Until every run of the batch has ended; raises ProcessDied when a process of the farm
    stops. A database that goes away is waited for (said in one line), not a traceback."""
    from orchestrator import overview
    from orchestrator.workers import STALE_S

    progress = Progress(TextColumn("[bold]runs ended"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("[green]{task.fields[ok]} completed[/green]  [red]{task.fields[failed]} failed"),
                        TimeElapsedColumn(), console=err)
    task = progress.add_task("", total=None, ok=0, failed=0)
    models = Text()
    last_change, last_state, warned = time.monotonic(), None, False
    with _line_end_after(), Live(Group(progress, models), console=err, refresh_per_second=4):
        while True:
            p, per_model = db.run(lambda store: (overview.batch_progress(store, batch_id),
                                                 overview.batch_status(store, batch_id)["models"]))
            progress.update(task, total=p.runs, completed=p.ended, ok=p.completed, failed=p.failed)
            models.truncate(0)
            models.append(_model_lines(per_model))
            if p.ended >= p.runs:
                break
            farm.check()
            state = (p.ended, tuple(tuple(m.values()) for m in per_model))
            if state != last_state:
                last_change, last_state = time.monotonic(), state
            elif not warned and time.monotonic() - last_change > STALL_S:
                warned = True  # say once why nothing moves, if the farm knows
                for q in db.run(lambda store: overview.farm_status(store, stale_s=STALE_S))["queues"]:
                    if q["problem"]:
                        err.print(Text.assemble((f"no progress for {STALL_S:.0f}s:", "yellow"),
                                                f" queue {q['queue']}: {q['problem']} (logs in {farm.logs})"))
            time.sleep(POLL_S)


@contextmanager
def _line_end_after() -> Iterator[None]:
    try:
        yield
    finally:
        if not err.is_terminal:
            err.line()  # off a terminal, the last frame is printed without its line end


def _model_lines(models: list[dict]) -> str:
    lines = []
    for m in models:
        done = m.get("completed", 0) + m.get("failed", 0)
        lines.append(f"  {m['model']}: {done} done, {m.get('dispatched', 0)} in flight, "
                     f"{m.get('pending', 0)} waiting")
    return "\n".join(lines)
