"""The one door to the database: every query the orchestrator runs goes through a
Store, by name (queries.sql), and comes back as the dataclasses of rows.py.

A Store wraps one connection. It does not decide anything: the state machine
(orchestrator/states.py), the apply (results.py), the dispatcher and the rest say
what to change and read; the store knows how. Transactions are the caller's:
`with store.transaction():` around a unit of work (the connection is in autocommit,
so a statement outside a transaction block commits by itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
import json
from datetime import datetime
from decimal import Decimal
from functools import cache, partial
from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row, tuple_row
from psycopg.types.json import Jsonb

from orchestrator.db import rows
from orchestrator.db.queries import Q

R = TypeVar("R")
CONTROLS = "controls"  # the payload that says: what is held changed


@cache
def _columns(row_type: type) -> tuple[tuple[str, bool], ...]:
    """(field name, is jsonb) of a row class, in declaration order."""
    return tuple((f.name, bool(f.metadata.get("jsonb"))) for f in fields(row_type))


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


_dump_records = partial(json.dumps, default=_json_value, separators=(",", ":"), ensure_ascii=False)


def records(items: Sequence[Any], row_type: type) -> Jsonb:
    """Rows of one class as one JSON array of objects: the parameter of a
    `jsonb_to_recordset(...)` statement. One parameter for any number of rows and
    columns: cheaper to send than an array per column."""
    names = [name for name, _ in _columns(row_type)]
    return Jsonb([{name: getattr(item, name) for name in names} for item in items], dumps=_dump_records)


def arrays(items: Sequence[Any], row_type: type, prefix: str = "") -> dict[str, list]:
    """Rows of one class as one array per field: the parameters of an `unnest(...)`
    statement, which writes any number of rows in one round trip."""
    params: dict[str, list] = {}
    for name, is_json in _columns(row_type):
        values = [getattr(item, name) for item in items]
        params[prefix + name] = [None if v is None else Jsonb(v) for v in values] if is_json else values
    return params


@cache
def _row_factory(row_type: type) -> Any:
    return class_row(row_type)


class Store:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        # One cursor for every statement, its row factory set per query: making a cursor
        # per statement was a tenth of serve's time in a turn. A Store is one thread's.
        self._cursor: psycopg.Cursor | None = None

    # -- the mechanics ---------------------------------------------------------------------
    def transaction(self):
        return self.conn.transaction()

    def _execute(self, query: str, params: dict[str, Any] | None, row_factory: Any) -> psycopg.Cursor:
        cur = self._cursor
        if cur is None or cur.closed:
            cur = self._cursor = self.conn.cursor()
        cur.row_factory = row_factory
        cur.execute(Q[query], params)
        return cur

    def all(self, query: str, params: dict[str, Any] | None, row_type: type[R]) -> list[R]:
        return self._execute(query, params, _row_factory(row_type)).fetchall()

    def one(self, query: str, params: dict[str, Any] | None, row_type: type[R]) -> R | None:
        return self._execute(query, params, _row_factory(row_type)).fetchone()

    def scalar(self, query: str, params: dict[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        row = self._execute(query, params, tuple_row).fetchone()
        return None if row is None else row[0]

    def column(self, query: str, params: dict[str, Any] | None = None) -> list[Any]:
        """The first column of every row."""
        return [row[0] for row in self._execute(query, params, tuple_row).fetchall()]

    def run(self, query: str, params: dict[str, Any] | None = None) -> int:
        """A statement for its effect; returns how many rows it touched."""
        return self._execute(query, params, tuple_row).rowcount

    @contextmanager
    def stream(self, query: str, params: dict[str, Any], row_type: type[R], *,
               itersize: int = 2000) -> Iterator[Iterator[R]]:
        """Rows through a server-side cursor: memory stays flat however many there are."""
        with self.transaction(), self.conn.cursor(name="wavefarm_stream", row_factory=class_row(row_type)) as cur:
            cur.itersize = itersize
            cur.execute(Q[query], params)
            yield iter(cur)

    def read_only(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """SQL that is not ours (an example's report query), in a read-only transaction:
        it can show, never change."""
        with self.transaction(), self.conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute(sql, params)
            return cur.fetchall()

    # -- locks and notifications ------------------------------------------------------------
    def try_lock(self, key: int) -> bool:
        """A transaction-scoped advisory lock, if nobody holds it."""
        return bool(self.scalar("try_advisory_xact_lock", {"key": key}))

    def wait_for_lock_shared(self, key: int) -> None:
        self.run("wait_for_dispatches", {"key": key})

    def listen_for_work(self) -> None:
        self.run("listen_for_work")

    def unlisten(self) -> None:
        self.run("unlisten")

    def notify_work(self, batch_id: int) -> None:
        """Tell serve a submission created work (delivered on commit)."""
        self.run("notify_work", {"payload": str(batch_id)})

    def notify_controls(self) -> None:
        """Tell serve that what is held changed: a pause, a resume, a cancel, an escalation."""
        self.run("notify_work", {"payload": CONTROLS})

    def notifications(self) -> list[str]:
        """The payloads sent to serve since the last look (no round trip)."""
        return [n.payload for n in self.conn.notifies(timeout=0)]

    # -- workflows ---------------------------------------------------------------------------
    def latest_workflow(self, name: str) -> rows.WorkflowVersion | None:
        return self.one("workflow_latest", {"name": name}, rows.WorkflowVersion)

    def workflow(self, workflow_id: int) -> rows.WorkflowVersion | None:
        return self.one("workflow_by_id", {"id": workflow_id}, rows.WorkflowVersion)

    def list_workflows(self) -> list[rows.WorkflowListing]:
        return self.all("list_workflows", None, rows.WorkflowListing)

    def insert_workflow_version(self, name: str, digest: str, definition: dict, source: str,
                                ) -> tuple[rows.StoredVersion, bool]:
        """Store a new version of `name` unless its latest has this digest; (version, created)."""
        with self.transaction():
            self.run("lock_workflow_name", {"name": name})
            latest = self.latest_workflow(name)
            if latest is not None and latest.digest == digest:
                return rows.StoredVersion(latest.id, latest.version), False
            stored = self.one("insert_workflow", {"name": name, "digest": digest, "definition": Jsonb(definition),
                                                  "source": source}, rows.StoredVersion)
            return stored, True

    # -- batches and runs -------------------------------------------------------------------
    def insert_batch(self, *, workflow_id: int, workflow_name: str, source_name: str, digest: str,
                     key_column: str | None, priority: int | None) -> int | None:
        """The new batch's id; None when this file was submitted for this workflow before."""
        return self.scalar("insert_batch", {"workflow_id": workflow_id, "workflow_name": workflow_name,
                                            "source_name": source_name, "digest": digest,
                                            "key_column": key_column, "priority": priority})

    def find_batch(self, workflow_id: int, digest: str) -> rows.Batch | None:
        return self.one("find_batch", {"workflow_id": workflow_id, "digest": digest}, rows.Batch)

    def batch(self, batch_id: int) -> rows.Batch | None:
        return self.one("batch_by_id", {"id": batch_id}, rows.Batch)

    def pause_batch(self, batch_id: int, reason: str) -> bool:
        """Pause a batch that is not paused; whether it was paused now."""
        return self.scalar("pause_batch", {"id": batch_id, "reason": reason}) is not None

    def set_credit_limit(self, batch_id: int, credit_limit: Decimal | None) -> None:
        self.run("set_credit_limit", {"id": batch_id, "credit_limit": credit_limit})

    def resume_batch(self, batch_id: int) -> bool:
        return self.scalar("resume_batch", {"id": batch_id}) is not None

    def set_batch_cancelled(self, batch_id: int) -> None:
        self.run("set_batch_cancelled", {"id": batch_id})

    def running_runs(self, batch_id: int) -> int:
        return self.scalar("batch_running_runs", {"batch_id": batch_id})

    def escalations(self, batch_id: int | None = None) -> list[rows.Escalation]:
        """Open escalations, of one batch or of all."""
        return self.all("open_escalations", {"batch_id": batch_id}, rows.Escalation)

    def escalate(self, batch_id: int, step: str, failure_class: str, reason: str, examples: list[dict]) -> bool:
        """Open an escalation of a step; False when one is open already."""
        return self.scalar("insert_escalation", {"batch_id": batch_id, "step": step, "failure_class": failure_class,
                                                 "reason": reason, "examples": Jsonb(examples)}) is not None

    def step_recent_failures(self, batch_id: int, step: str, limit: int) -> list[rows.RecentAttempt]:
        return self.all("step_recent_failures", {"batch_id": batch_id, "step": step, "limit": limit},
                        rows.RecentAttempt)

    # -- retry ---------------------------------------------------------------------------------
    def workflow_version(self, name: str, version: int) -> rows.WorkflowVersion | None:
        return self.one("workflow_version", {"name": name, "version": version}, rows.WorkflowVersion)

    def lock_runs_to_retry(self, batch_id: int, run_ids: Sequence[int] | None,
                           statuses: Sequence[str]) -> list[rows.RunToRetry]:
        return self.all("lock_runs_to_retry", {"batch_id": batch_id, "ids": None if run_ids is None else list(run_ids),
                                               "statuses": list(statuses)}, rows.RunToRetry)

    def lock_run_interactions(self, run_ids: Sequence[int]) -> list[rows.RunInteractionState]:
        return self.all("lock_run_interactions", {"run_ids": list(run_ids)}, rows.RunInteractionState)

    def ending_events(self, run_ids: Sequence[int], kinds: Sequence[str]) -> list[rows.EndingEvent]:
        return self.all("ending_events", {"run_ids": list(run_ids), "kinds": list(kinds)}, rows.EndingEvent)

    def supersede(self, ids: Sequence[int]) -> list[int]:
        return self.column("supersede_interactions", {"ids": list(ids)}) if ids else []

    def reopen_runs(self, ids: Sequence[int], from_status: str) -> list[int]:
        return self.column("reopen_runs", {"ids": list(ids), "from_status": from_status}) if ids else []

    def move_runs(self, ids: Sequence[int], workflow_id: int) -> None:
        self.run("move_runs", {"ids": list(ids), "workflow_id": workflow_id})

    def runs_on_version(self, workflow_id: int, keys: Sequence[str]) -> list[rows.KeyedRun]:
        return self.all("runs_on_version", {"workflow_id": workflow_id, "keys": list(keys)}, rows.KeyedRun)

    def lift_step_escalations(self, batch_id: int, steps: Sequence[str]) -> list[str]:
        return self.column("lift_step_escalations", {"batch_id": batch_id, "steps": list(steps)})

    def clear_batch_cancelled(self, batch_id: int) -> None:
        self.run("clear_batch_cancelled", {"id": batch_id})

    def lift_escalations(self, batch_id: int) -> list[str]:
        """Lift a batch's open escalations; the steps they held."""
        return self.column("lift_escalations", {"batch_id": batch_id})

    def held_now(self, max_runs: int) -> list[rows.Held]:
        return self.all("held_now", {"max_runs": max_runs}, rows.Held)

    def insert_events(self, events: Sequence[rows.Event]) -> None:
        if events:
            self.run("insert_events", {"events": records(events, rows.Event)})

    def set_batch_priority(self, batch_id: int, priority: int) -> None:
        self.run("set_batch_priority", {"id": batch_id, "priority": priority})

    def set_batch_rows(self, batch_id: int, *, good: int, rejected: int, empty: int) -> None:
        self.run("update_batch_rows", {"id": batch_id, "good": good, "rejected": rejected, "empty": empty})

    def insert_reject(self, batch_id: int, line: int, reason: str, raw: str) -> None:
        self.run("insert_reject", {"batch_id": batch_id, "line": line, "reason": reason, "raw": raw})

    def insert_runs(self, batch: rows.Batch, incoming: Iterable[rows.IncomingRun]) -> tuple[list[rows.NewRun], int]:
        """Runs for rows this workflow version has not run yet (by row key), in line
        order; and how many of them an earlier version ran (they run again)."""
        with self.conn.cursor() as cur:
            cur.execute(Q["create_incoming_runs"])
            with cur.copy(Q["copy_incoming_runs"]) as copy:
                for r in incoming:
                    copy.write_row((r.key, r.line, Jsonb(r.values)))
        ids = {"batch_id": batch.id, "workflow_id": batch.workflow_id, "workflow_name": batch.workflow_name}
        again = self.scalar("rows_run_before", ids)
        return self.all("insert_incoming_runs", ids, rows.NewRun), again

    def copy_interactions(self, new: Iterable[rows.NewInteraction]) -> None:
        """Many interactions at once (COPY): every run's first step at submit."""
        columns = _columns(rows.NewInteraction)
        with self.conn.cursor() as cur, cur.copy(Q["copy_interactions"]) as copy:
            for item in new:
                copy.write_row(tuple(Jsonb(getattr(item, n)) if j else getattr(item, n) for n, j in columns))

    def lock_runs(self, run_ids: Sequence[int]) -> list[rows.LockedRun]:
        return self.all("lock_runs", {"ids": list(run_ids)}, rows.LockedRun)

    def lock_running_runs(self, batch_id: int) -> list[int]:
        return self.column("lock_running_runs", {"batch_id": batch_id})

    def finish_runs(self, endings: Sequence[rows.RunEnding], from_status: str) -> list[int]:
        """The guarded run transition; returns the ids of the runs it ended."""
        if not endings:
            return []
        return self.column("finish_runs", {**arrays(endings, rows.RunEnding), "from_status": from_status})

    # -- interactions: transitions and claims -------------------------------------------------
    def transition(self, query: str, from_status: str, items: Sequence[rows.Guard],
                   row_type: type) -> list[rows.Moved]:
        """One guarded transition statement for many interactions (states.py says which)."""
        if not items:
            return []
        return self.all(query, {**arrays(items, row_type), "from_status": from_status}, rows.Moved)

    def claim_pending(self, *, limit: int, batch_id: int | None) -> list[rows.Claimed]:
        return self.all("claim_pending", {"limit": limit, "batch_id": batch_id}, rows.Claimed)

    def claim_for_dispatch(self, *, kind: str, actor: str, batch_id: int, limit: int) -> list[rows.Claimed]:
        return self.all("claim_for_dispatch", {"kind": kind, "actor": actor, "batch_id": batch_id, "limit": limit},
                        rows.Claimed)

    def claim_cache_answered(self, *, actor: str, batch_id: int, digests: Sequence[str], limit: int
                             ) -> list[rows.Claimed]:
        return self.all("claim_cache_answered", {"actor": actor, "batch_id": batch_id, "digests": list(digests),
                                                 "limit": limit}, rows.Claimed)

    def lock_open_interactions(self, run_ids: Sequence[int]) -> list[rows.OpenInteraction]:
        return self.all("lock_open_interactions", {"run_ids": list(run_ids)}, rows.OpenInteraction)

    def interaction_states(self, ids: Sequence[int]) -> dict[int, rows.InteractionState]:
        return {r.id: r for r in self.all("interaction_states", {"ids": list(ids)}, rows.InteractionState)}

    def expired(self, limit: int) -> list[rows.Expired]:
        return self.all("expired_interactions", {"limit": limit}, rows.Expired)

    def open_count(self, batch_id: int | None) -> int:
        """Pending and dispatched work that can still move (an escalation holds the rest)."""
        return self.scalar("open_interactions", {"batch_id": batch_id})

    # -- applying results -------------------------------------------------------------------
    def lock_result_targets(self, ids: Sequence[int]) -> dict[int, rows.Target]:
        return {t.id: t for t in self.all("lock_result_targets", {"ids": list(ids)}, rows.Target)}

    def run_steps(self, run_ids: Sequence[int]) -> list[rows.StepState]:
        return self.all("run_steps", {"run_ids": list(run_ids)}, rows.StepState)

    def failed_interactions(self, run_ids: Sequence[int]) -> list[rows.FailedInteraction]:
        return self.all("failed_interactions", {"run_ids": list(run_ids)}, rows.FailedInteraction)

    def problem_events(self, run_ids: Sequence[int], kinds: Sequence[str]) -> list[rows.ProblemEvent]:
        return self.all("problem_events", {"run_ids": list(run_ids), "kinds": list(kinds)}, rows.ProblemEvent)

    def store_decisions(self, *, attempts: Sequence[rows.AttemptRecord], events: Sequence[rows.Event],
                        children: Sequence[rows.NewInteraction], runs: Sequence[int]) -> rows.Stored:
        """Attempt records (costed, the batches' spend and usage totals grown by them),
        events and children in one statement; returns how much each run of
        `runs` has open (pending or dispatched) afterwards, and the batches whose spend
        reached their credit limit."""
        params = {"attempts": records(attempts, rows.AttemptRecord), "events": records(events, rows.Event),
                  "children": records(children, rows.NewInteraction), "runs": list(runs)}
        found = self.all("store_decisions", params, rows.OpenCount)
        return rows.Stored(open={r.run_id: r.open for r in found if r.run_id is not None},
                           over_budget=[r.over_budget for r in found if r.over_budget is not None])

    # -- dispatch and workers -----------------------------------------------------------------
    def dispatch_view(self) -> list[rows.DispatchRow]:
        return self.all("dispatch_view", None, rows.DispatchRow)

    def live_capacity(self, stale_s: float) -> list[rows.QueueCapacity]:
        return self.all("live_capacity", {"stale_s": stale_s}, rows.QueueCapacity)

    def record_workers(self, statuses: Sequence[dict[str, Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(Q["upsert_worker"], statuses)

    def workers(self, stale_s: float) -> list[rows.WorkerRow]:
        return self.all("list_workers", {"stale_s": stale_s}, rows.WorkerRow)
