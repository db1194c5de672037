"""`orchestrator failures`: what went wrong in a batch, grouped so that a person sees
the few causes behind many failures.

In the order a person needs it: the open escalations (a step held until `resume`),
the failed attempts grouped by step and failure class (each attempt's own record in
`attempts`, so a failure that a retry got past counts too: a flapping model host shows
here before it fails a run), the runs the engine ended (no branch matched, a loop
bound), the rows the CSV reader refused, and the escalations already lifted.

Every text that came from outside (a model's answer, a script's stderr, a CSV line) is
cleaned by `clip` before it is shown in any format: secrets masked, control characters
written out as escapes (an ESC could rewrite a terminal), shortened to a few hundred
characters keeping its head and its tail (where a traceback says what happened).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from rich.text import Text

from common.redact import redact
from orchestrator import overview
from orchestrator.db.store import Store
from orchestrator.engine import PROBLEM_EVENTS
from orchestrator.export import defuse

EXAMPLE_CHARS = 300
# C0 and C1 control characters, DEL, and the Unicode controls that reorder or hide text
# on a terminal (bidirectional overrides and isolates, zero-width joiners aside).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_SPACE = re.compile(r"[\t\n\r ]+")


def printable(text: str) -> str:
    """`text` with its control characters written out as \\xNN (\\uNNNN), lines and tabs
    kept: safe on a terminal, a model's answer or a CSV value shown as it is."""
    text = text.replace("\r\n", "\n")
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def clip(text: str | None, limit: int = EXAMPLE_CHARS) -> str:
    """`text` fit to be shown on one line anywhere: secrets masked, whitespace runs made
    one space, control characters as \\xNN, at most `limit` characters (the head and the
    tail, joined by ' … ')."""
    if not text:
        return ""
    text = printable(_SPACE.sub(" ", redact(text)).strip())
    if len(text) <= limit:
        return text
    tail = limit // 3
    return text[: limit - tail - 3] + " … " + text[-tail:]


# -- what the database gives ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FailureGroupRow:
    step: str
    failure_class: str
    attempts: int
    runs: int
    given_up: int
    first_at: datetime
    last_at: datetime
    examples: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class EngineProblemRow:
    kind: str
    step: str
    occurrences: int
    runs: int
    first_at: datetime
    last_at: datetime
    examples: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class RejectRow:
    line: int
    reason: str
    raw: str


@dataclass(frozen=True, slots=True)
class EscalationRow:
    id: int
    step: str
    failure_class: str
    reason: str
    examples: list[dict[str, Any]]
    created_at: datetime
    lifted_at: datetime | None


# -- the report ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    run_id: int | None
    attempt: int | None
    at: str | None
    message: str
    interaction_id: int | None = None


@dataclass(frozen=True)
class Group:
    """Failures of one step with one class (`section` failure), or runs the engine ended
    for one reason at one step (`section` engine)."""

    step: str
    failure_class: str
    count: int          # failed attempts (failure), or decisions (engine)
    runs: int
    first_at: str
    last_at: str
    examples: list[Example]
    given_up: int | None = None  # failure: attempts that were their interaction's last
    reason: str | None = None    # engine: what the engine decided, in words


@dataclass(frozen=True)
class Escalation:
    step: str
    failure_class: str
    open: bool
    reason: str
    created_at: str
    lifted_at: str | None
    examples: list[Example]


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str
    raw: str


@dataclass
class Report:
    batch: dict[str, Any]
    escalations: list[Escalation] = field(default_factory=list)
    failures: list[Group] = field(default_factory=list)
    engine: list[Group] = field(default_factory=list)
    rejects_total: int = 0
    rejects: list[Reject] = field(default_factory=list)

    @property
    def open_escalations(self) -> list[Escalation]:
        return [e for e in self.escalations if e.open]

    @property
    def lifted_escalations(self) -> list[Escalation]:
        return [e for e in self.escalations if not e.open]


def _when(value: datetime | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):  # from jsonb: ISO already
        value = datetime.fromisoformat(value)
    return value.isoformat(timespec="seconds")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _engine_reason(kind: str, detail: dict[str, Any]) -> str:
    if kind == "no_branch_matched":
        return "output matched no branch (expected one of " + ", ".join(map(str, detail.get("expected") or [])) + ")"
    if kind == "loop_bound_reached":
        return f"loop bound reached (max_visits={detail.get('max_visits')}, from {detail.get('from')})"
    return kind


def _engine_example(kind: str, detail: dict[str, Any]) -> str:
    if kind == "no_branch_matched":
        return "output: " + clip(str(detail.get("output_head") or ""))
    return clip(", ".join(f"{k}={v}" for k, v in sorted(detail.items()) if v is not None))


def _escalation_example(item: Any) -> Example:
    """An escalation's example as the escalation wrote it: a dict naming the run, the
    attempt and the message, or anything else, shown as text."""
    if not isinstance(item, dict):
        return Example(None, None, None, clip(str(item)))
    message = item.get("message", item.get("failure_message"))
    if message is None:
        message = ", ".join(f"{k}={v}" for k, v in sorted(item.items()))
    return Example(_int(item.get("run_id", item.get("run"))), _int(item.get("attempt")),
                   _when(item.get("at")) if isinstance(item.get("at"), str) else None, clip(str(message)),
                   _int(item.get("interaction_id")))


def failures(store: Store, batch_id: int, *, rejects_limit: int | None = None) -> Report:
    """The whole report of one batch (NotFound when there is no such batch)."""
    batch = overview.require_batch(store, batch_id)
    params = {"batch_id": batch_id}
    report = Report(batch={"id": batch.id, "workflow": batch.workflow_name, "workflow_version": batch.workflow_version,
                           "source": batch.source_name})
    for e in store.all("batch_escalations", params, EscalationRow):
        report.escalations.append(Escalation(
            e.step, e.failure_class, e.lifted_at is None, clip(e.reason, 1000), _when(e.created_at),
            _when(e.lifted_at), [_escalation_example(x) for x in (e.examples or [])[:3]]))
    for g in store.all("failure_groups", params, FailureGroupRow):
        report.failures.append(Group(
            g.step, g.failure_class, g.attempts, g.runs, _when(g.first_at), _when(g.last_at),
            [Example(x["run_id"], x["attempt"], _when(x["at"]), clip(x["message"]), x["interaction_id"])
             for x in g.examples],
            given_up=g.given_up))
    for p in store.all("engine_problem_groups", {**params, "kinds": list(PROBLEM_EVENTS)}, EngineProblemRow):
        report.engine.append(Group(
            p.step, p.kind, p.occurrences, p.runs, _when(p.first_at), _when(p.last_at),
            [Example(x["run_id"], None, _when(x["at"]), _engine_example(p.kind, x["detail"])) for x in p.examples],
            reason=clip(_engine_reason(p.kind, p.examples[0]["detail"]), 1000)))
    report.rejects_total = store.scalar("batch_reject_count", params)
    report.rejects = [Reject(r.line, clip(r.reason), clip(r.raw)) for r in
                      store.all("batch_reject_rows", {**params, "limit": rejects_limit}, RejectRow)]
    return report


# -- CSV: one flat row per example (a group without examples: one row) -------------------------
CSV_COLUMNS = ("section", "state", "step", "failure_class", "reason", "count", "runs", "given_up",
               "first_at", "last_at", "run_id", "attempt", "line", "example")


def csv_rows(report: Report) -> Iterator[dict[str, Any]]:
    """The report flattened: sections escalation, failure, engine, reject, in the order
    the text shows them (open escalations first, lifted ones last)."""

    def per_example(base: dict[str, Any], examples: list[Example]) -> Iterator[dict[str, Any]]:
        for x in examples or [None]:
            yield {**base, **({"run_id": x.run_id, "attempt": x.attempt, "example": x.message} if x else {})}

    def escalation(e: Escalation) -> Iterator[dict[str, Any]]:
        yield from per_example({"section": "escalation", "state": "open" if e.open else "lifted", "step": e.step,
                                "failure_class": e.failure_class, "reason": e.reason, "first_at": e.created_at,
                                "last_at": e.lifted_at}, e.examples)

    for e in report.open_escalations:
        yield from escalation(e)
    for section, groups in (("failure", report.failures), ("engine", report.engine)):
        for g in groups:
            yield from per_example({"section": section, "step": g.step, "failure_class": g.failure_class,
                                    "reason": g.reason, "count": g.count, "runs": g.runs, "given_up": g.given_up,
                                    "first_at": g.first_at, "last_at": g.last_at}, g.examples)
    for r in report.rejects:
        yield {"section": "reject", "reason": r.reason, "line": r.line, "example": r.raw}
    for e in report.lifted_escalations:
        yield from escalation(e)


def write_csv(report: Report, stream: IO[str]) -> None:
    """CSV for a spreadsheet: a cell that would run as a formula is made text."""
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, restval="", extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(report):
        writer.writerow({k: defuse(v) if isinstance(v, str) else ("" if v is None else v) for k, v in row.items()})


# -- text: what `orchestrator failures` prints -------------------------------------------------
def _time(iso: str | None) -> str:
    return iso.replace("T", " ")[:19] if iso else ""


def _span(first: str | None, last: str | None) -> str:
    return f"at {_time(first)}" if _time(first) == _time(last) else f"first {_time(first)}, last {_time(last)}"


def _example_line(x: Example) -> Text:
    where = " ".join(part for part in (f"run {x.run_id}" if x.run_id is not None else "",
                                       f"attempt {x.attempt}" if x.attempt is not None else "") if part)
    return Text.assemble("    ", (where + ": " if where else "", "dim"), x.message)


def _escalation_lines(e: Escalation, batch_id: int) -> Iterator[Text]:
    state = ("escalated", "bold red") if e.open else ("lifted", "yellow")
    since = f"since {_time(e.created_at)}" if e.open else f"{_time(e.created_at)} .. {_time(e.lifted_at)}"
    yield Text.assemble(state, f": step {e.step} ({e.failure_class}), {since}: {e.reason}")
    if e.open:
        yield Text.assemble("    ", (f"held until orchestrator resume --batch {batch_id}", "dim"))
    yield from (_example_line(x) for x in e.examples)


def lines(report: Report, *, rejects_shown: int = 20) -> Iterator[Text]:
    """The report as lines of text (rich Text: styled by the code, never parsed as markup)."""
    b = report.batch
    yield Text.assemble((f"batch {b['id']}", "bold"), f"  {b['workflow']} v{b['workflow_version']}  from {b['source']}")
    for e in report.open_escalations:
        yield from _escalation_lines(e, b["id"])

    yield Text("")
    if not report.failures:
        yield Text("failed attempts: none")
    else:
        yield Text.assemble(("failed attempts by step and class", "bold"),
                            f" ({sum(g.count for g in report.failures)} in all)")
    for g in report.failures:
        yield Text.assemble(("  " + g.step, "bold"), " ", (g.failure_class, "red"),
                            f": {g.count} attempt(s) in {g.runs} run(s), {g.given_up} given up; "
                            f"{_span(g.first_at, g.last_at)}")
        yield from (_example_line(x) for x in g.examples)

    if report.engine:
        yield Text("")
        yield Text.assemble(("runs the engine ended as failed", "bold"), " (no failed step: a decision)")
    for g in report.engine:
        yield Text.assemble(("  " + g.step, "bold"), f": {g.reason}: {g.runs} run(s); {_span(g.first_at, g.last_at)}")
        yield from (_example_line(x) for x in g.examples)

    yield Text("")
    yield Text.assemble(("rejected rows", "bold"), f": {report.rejects_total}" if report.rejects_total else ": none")
    for r in report.rejects[:rejects_shown]:
        yield Text.assemble("  ", (f"line {r.line}", "yellow"), f": {r.reason}", ("; the row: ", "dim"), r.raw)
    if report.rejects_total > min(len(report.rejects), rejects_shown):
        yield Text(f"  ... and {report.rejects_total - min(len(report.rejects), rejects_shown)} more "
                   f"(orchestrator failures --batch {b['id']} --format csv lists them all)")

    if report.lifted_escalations:
        yield Text("")
        yield Text.assemble(("escalations lifted", "bold"))
        for e in report.lifted_escalations:
            yield from _escalation_lines(e, b["id"])
