"""Watching a batch: the one display of `status --watch`, `submit --wait`, `submit --local`
and the demo. A snapshot (orchestrator/progress.py) a second, drawn one of three ways:

- on a terminal, a rich Live display redrawn in place;
- off a terminal (a log, a pipe), a plain line every few seconds and whenever the state
  changes, so a log holds the story without a frame per second;
- with --json, the snapshot itself, one JSON object a line, flushed at once.

`follow` polls until the batch is done, or escalated with nothing left that can move
(waiting longer would be waiting for a person); a paused batch is watched on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.pace import duration
from orchestrator.progress import Counts, Snapshot, snapshot
from orchestrator.reconnect import Reconnecting

REFRESH_S = 1.0
PLAIN_EVERY_S = 5.0
STATE_STYLE = {"running": "green", "paused": "yellow", "escalated": "red", "done": "bold"}


class View(Protocol):
    def show(self, snap: Snapshot) -> None: ...
    def close(self) -> None: ...


# -- what is drawn ------------------------------------------------------------------------
def render(snap: Snapshot) -> RenderableType:
    """The Live display: head line, bar of runs ended, pace, steps, models, failures."""
    p = snap.progress
    head = Text.assemble((f"batch {snap.batch_id}", "bold"), f"  {snap.workflow} v{snap.workflow_version}  ",
                         (snap.state, STATE_STYLE.get(snap.state, "")), f" ({snap.reason})" if snap.reason else "")
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=max(p.total, 1), completed=p.ended, width=40),
                Text(f"{p.ended}/{p.total} runs ended:"), _ended_parts(snap))
    parts: list[RenderableType] = [head, bar, Text(_pace(snap), style="dim" if snap.done else "")]
    if snap.steps:
        parts.append(_counts_table("step", [(f"{s.step} ({s.actor})", s) for s in snap.steps]))
    if snap.models:
        parts.append(_counts_table("model", [(m.model, m) for m in snap.models]))
    if snap.failures:
        parts.append(Text.assemble(("failures so far: ", "red"), _failures(snap)))
    return Group(*parts)


def line(snap: Snapshot) -> str:
    """The whole snapshot in one line of plain text (logs, pipes)."""
    p = snap.progress
    text = (f"batch {snap.batch_id} {snap.state}{f' ({snap.reason})' if snap.reason else ''}: "
            f"{p.ended}/{p.total} runs ended ({_ended_parts(snap).plain}); {_pace(snap)}")
    waiting = sum(s.waiting for s in snap.steps)
    in_flight = sum(s.in_flight for s in snap.steps)
    if waiting or in_flight:
        text += f"; interactions {in_flight} in flight, {waiting} waiting"
    if snap.failures:
        text += f"; failures so far: {_failures(snap)}"
    return text


def _ended_parts(snap: Snapshot) -> Text:
    p = snap.progress
    named = {k: v for k, v in p.outcomes.items() if k != "completed"}
    text = Text.assemble((f"{p.completed} completed", "green"))
    if named:
        text.append(" (" + ", ".join(f"{n} {o}" for o, n in named.items()) + ")")
    text.append(", ")
    text.append(f"{p.failed} failed", style="red" if p.failed else "")
    text.append(f", {p.cancelled} cancelled")
    return text


def _pace(snap: Snapshot) -> str:
    return f"{_eta(snap)}; {_cost(snap)}"


def _cost(snap: Snapshot) -> str:
    """Spent so far, and what the rest will cost at this rate."""
    from orchestrator.prices import plain

    c = snap.cost
    text = f"spent {plain(c.spent)}"
    if c.credit_limit is not None:
        text += f" of {plain(c.credit_limit, exact=True)}"
    if snap.done:
        return text
    if c.to_go is None:
        return text + ", the rest's cost unknown (no run ended yet)"
    return text + f", the rest ~{plain(c.to_go)} at this rate (total ~{plain(c.total)})"


def _eta(snap: Snapshot) -> str:
    if snap.done:
        return "every run has ended"
    if snap.eta_s is not None:
        eta = duration(snap.eta_s)
    elif snap.state == "paused":
        eta = "unknown (paused)"
    elif snap.stuck:
        eta = "unknown (waits for a person)"
    else:
        eta = "unknown (no run ended in the last minute)"
    return f"{snap.rate_per_min:g} runs/min over the last minute, ETA {eta}"


def _failures(snap: Snapshot) -> str:
    return ", ".join(f"{cls} {n}" for cls, n in snap.failures.items())


def _counts_table(what: str, rows: list[tuple[str, Counts]]) -> Table:
    table = Table(box=None, padding=(0, 2), show_edge=False)
    table.add_column(what)
    for name in ("done", "in flight", "waiting"):
        table.add_column(name, justify="right")
    for name, c in rows:
        table.add_row(name, str(c.done), str(c.in_flight), str(c.waiting))
    return table


# -- the three views -------------------------------------------------------------------------
class LiveView:
    """Redrawn in place on a terminal; the last frame stays on the screen."""

    def __init__(self, console: Console) -> None:
        self.live = Live(Text(""), console=console, refresh_per_second=4, transient=False)
        self.live.start()

    def show(self, snap: Snapshot) -> None:
        self.live.update(render(snap), refresh=True)

    def close(self) -> None:
        self.live.stop()


class PlainView:
    """A line every `every_s`, and at once when the state changes or the batch ends."""

    def __init__(self, console: Console, every_s: float = PLAIN_EVERY_S) -> None:
        self.console = console
        self.every_s = every_s
        self._last_at = float("-inf")
        self._last_state: str | None = None

    def show(self, snap: Snapshot) -> None:
        now = time.monotonic()
        if snap.state != self._last_state or snap.done or snap.stuck or now - self._last_at >= self.every_s:
            self.console.print(line(snap), soft_wrap=True, markup=False, highlight=False)
            self._last_at, self._last_state = now, snap.state

    def close(self) -> None:
        pass


class JsonView:
    """One JSON object a refresh, flushed: a program reads it as it comes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def show(self, snap: Snapshot) -> None:
        self.stream.write(snap.model_dump_json() + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


def view_for(console: Console, *, as_json: bool) -> View:
    if as_json:
        return JsonView()
    return LiveView(console) if console.is_terminal else PlainView(console)


# -- the loop ------------------------------------------------------------------------------------
def read(db: Reconnecting, batch_id: int) -> Snapshot:
    """A snapshot; a database that went away is waited for (Reconnecting says so)."""
    return db.run(lambda store: snapshot(store, batch_id))


def follow(db: Reconnecting, batch_id: int, view: View, *, every_s: float = REFRESH_S,
           each: Callable[[Snapshot], None] | None = None) -> Snapshot:
    """Show the batch every `every_s` until it is done or stuck; the last snapshot.
    `each` runs after every refresh (the demo checks its processes there)."""
    while True:
        snap = read(db, batch_id)
        view.show(snap)
        if snap.done or snap.stuck:
            return snap
        if each is not None:
            each(snap)
        time.sleep(every_s)


class Throttled:
    """`show` at most every `every_s`: the local executor calls back after every result."""

    def __init__(self, db: Reconnecting, batch_id: int, view: View, every_s: float = REFRESH_S) -> None:
        self.db, self.batch_id, self.view, self.every_s = db, batch_id, view, every_s
        self._last = float("-inf")

    def __call__(self, *_: object) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self.view.show(read(self.db, self.batch_id))


def verdict(snap: Snapshot) -> tuple[bool, str | None]:
    """Exit 0 or 1, and what to tell a person when the batch waits for one."""
    if snap.stuck:
        return False, (f"batch {snap.batch_id} is escalated and nothing of it can move until a person acts: "
                       f"{snap.reason}. Fix the cause, then `orchestrator resume --batch {snap.batch_id}` "
                       f"(`orchestrator failures --batch {snap.batch_id}` shows why)")
    return snap.none_failed, None
