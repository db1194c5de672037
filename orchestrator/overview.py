"""Reading the farm, a batch or a run back: plain data for `status`, `show` and
`export`, shared by their tables and their --json views."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from common.errors import NotFound
from common.queues import queue_for, queue_names
from orchestrator.db import views
from orchestrator.db.rows import Batch, Escalation, WorkerRow
from orchestrator.db.store import Store
from orchestrator import cost
from orchestrator.pace import batch_pace, cost_forecast, held_eta
from orchestrator.states import RunStatus, Status

if TYPE_CHECKING:
    from orchestrator.workflow import Workflow

STATUSES = [s.value for s in Status]


def list_batches(store: Store) -> list[dict[str, Any]]:
    return [asdict(b) for b in views.list_batches(store)]


def farm_status(store: Store, *, stale_s: float) -> dict[str, Any]:
    """Queues (waiting, in flight, live slots) and workers (from their heartbeats).

    A queue with work and no live worker is flagged: that is a run that would
    otherwise stall in silence, the seeds' worst failure.
    """
    queues: dict[str, dict] = {}

    def queue(name: str) -> dict:
        return queues.setdefault(name, {"queue": name, "actors": [], "pending": 0, "dispatched": 0,
                                        "slots": 0, "workers": 0})

    for r in views.open_by_actor(store):
        q = queue(queue_for(r.kind, r.actor))
        q["actors"].append(r.actor)
        q["pending"] += r.pending
        q["dispatched"] += r.dispatched
    for r in store.live_capacity(stale_s):
        q = queue(r.queue)
        q["slots"], q["workers"] = r.slots, r.workers
    workers = store.workers(stale_s)
    placeable = _placeable(workers)
    for q in queues.values():
        waiting = q["pending"] + q["dispatched"] and not q["workers"]
        # A model that a host serve places models on has: placement gives it one.
        q["placing"] = bool(waiting and q["queue"] in placeable)
        q["problem"] = "no live worker consumes this queue" if waiting and not q["placing"] else None
    return {
        "queues": sorted(queues.values(), key=lambda q: q["queue"]),
        "hosts": hosts(workers),
        "workers": [asdict(w) for w in workers],
    }


def hosts(workers: list[WorkerRow]) -> list[dict[str, Any]]:
    """The live GPU hosts, (machine, server): how many models each holds, which are loaded,
    which serve placed there, and the queues its workers consume."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for w in workers:
        if w.kind != "ai" or not w.live:
            continue
        h = found.setdefault((w.machine or w.name, w.server or ""), {
            "machine": w.machine or w.name, "server": w.server or "", "max_loaded": w.max_loaded, "workers": [],
            "resident": [], "placed": None, "queues": []})
        h["workers"].append(w.name)
        if w.max_loaded is not None:  # what placement takes: the least its workers say
            h["max_loaded"] = min(h["max_loaded"] or w.max_loaded, w.max_loaded)
        h["resident"] = sorted({*h["resident"], *(r.get("model", "?") for r in w.resident)})
        if w.placed is not None:
            h["placed"] = sorted({*(h["placed"] or []), *w.placed})
        h["queues"] = sorted({*h["queues"], *w.queues})
    return [found[k] for k in sorted(found)]


def _placeable(workers: list[WorkerRow]) -> set[str]:
    """The queues of the models that live hosts serve places models on have."""
    return {q for w in workers if w.kind == "ai" and w.live and w.max_loaded is not None
            for m in w.models for q in queue_names(m)}


def unserved(store: Store, workflow: Workflow, *, stale_s: float) -> list[tuple[str, str, str]]:
    """(kind, actor, queue) of each step actor of `workflow` that no live worker
    consumes right now, nor would once placement gives it a host: its work would wait
    until one does."""
    live = {r.queue for r in store.live_capacity(stale_s)} | _placeable(store.workers(stale_s))
    actors = sorted({(s.kind, s.actor) for s in workflow.steps})
    return [(kind, actor, queue_for(kind, actor)) for kind, actor in actors if queue_for(kind, actor) not in live]


def require_batch(store: Store, batch_id: int) -> Batch:
    batch = store.batch(batch_id)
    if batch is None:
        raise NotFound(f"no batch {batch_id} (orchestrator status lists the batches)")
    return batch


@dataclass(frozen=True)
class BatchState:
    """running, paused, escalated or done, and why where paused or escalated. A batch both
    paused and escalated is paused: a person (or its credit limit) stopped it."""

    state: str
    reason: str | None
    escalations: list[Escalation]


BATCH_STATES = ("running", "paused", "escalated", "done")


def state_of(*, running: int, paused: bool, escalated: bool) -> str:
    """The one rule of a batch's state (status, --watch and Prometheus all use it)."""
    if running == 0:
        return "done"
    if paused:
        return "paused"
    return "escalated" if escalated else "running"


def batch_state(store: Store, batch: Batch) -> BatchState:
    escalations = store.escalations(batch.id)
    state = state_of(running=store.running_runs(batch.id), paused=batch.paused_at is not None,
                     escalated=bool(escalations))
    if state == "paused":
        return BatchState(state, batch.pause_reason, escalations)
    if state == "escalated":
        return BatchState(state, "; ".join(f"step {e.step}: {e.reason}" for e in escalations), escalations)
    return BatchState(state, None, escalations)


def waits_for_a_person(store: Store, batch_id: int, state: BatchState) -> bool:
    """Escalated, and nothing left that can move: pending work of the escalated steps waits
    for `resume`, the rest has ended. Watching longer would be waiting forever."""
    return state.state == "escalated" and store.open_count(batch_id) == 0


def batch_status(store: Store, batch_id: int, *, rejects_limit: int = 20) -> dict[str, Any]:
    batch = require_batch(store, batch_id)
    state = batch_state(store, batch)
    pace = batch_pace(store, batch_id)
    runs = {r.status: r.n for r in views.run_counts(store, batch_id)}
    steps: dict[tuple, dict] = {}
    models: dict[str, dict] = defaultdict(lambda: dict.fromkeys(STATUSES, 0))
    spend = cost.batch_cost(store, batch, completed_runs=pace.completed,
                            pause_reason=batch.pause_reason if state.state == "paused" else None)
    for r in views.step_counts(store, batch_id):
        row = steps.setdefault(
            (r.step, r.kind, r.actor),
            {"step": r.step, "kind": r.kind, "actor": r.actor, **dict.fromkeys(STATUSES, 0)},
        )
        row[r.status] += r.n
        if r.kind == "ai":
            models[r.actor][r.status] += r.n
    return {
        "batch": {
            "id": batch.id,
            "workflow": batch.workflow_name,
            "workflow_version": batch.workflow_version,
            "source": batch.source_name,
            "created_at": batch.created_at.isoformat(),
            "rows_good": batch.rows_good,
            "rows_rejected": batch.rows_rejected,
            "rows_empty": batch.rows_empty,
            "priority": batch.priority,
        },
        "state": state.state,
        "reason": state.reason,
        "escalations": [asdict(e) for e in state.escalations],
        "runs": {s.value: runs.get(s.value, 0) for s in RunStatus},
        "progress": {"ended": pace.ended, "total": pace.runs},
        "rate_per_min": pace.rate_per_min,
        "eta_s": held_eta(pace.eta_s, state=state.state, stuck=waits_for_a_person(store, batch_id, state)),
        "forecast": cost_forecast(batch, pace).as_dict(),
        # Every attempt's usage, retries and ignored ones included: what the model servers counted.
        "usage": {k: spend["total"][k] for k in ("attempts", "prompt_tokens", "output_tokens", "model_s")},
        "cost": spend,
        "outcomes": {o.outcome: o.n for o in views.outcome_counts(store, batch_id)},
        "steps": sorted(steps.values(), key=lambda r: (r["step"], r["actor"])),
        "models": [{"model": m, **counts} for m, counts in sorted(models.items())],
        "failures": [asdict(f) for f in views.failure_counts(store, batch_id)],
        "failed_runs": [asdict(f) for f in views.failed_run_reasons(store, batch_id, 10)],
        "rejects": [asdict(r) for r in views.rejects(store, batch_id, rejects_limit)],
    }


def run_story(store: Store, run_id: int) -> dict[str, Any]:
    run = views.run(store, run_id)
    if run is None:
        raise NotFound(f"no run {run_id}")
    return {
        "run": asdict(run),
        "interactions": [asdict(i) for i in views.run_interactions(store, run_id)],
        "attempts": [asdict(a) for a in views.run_attempts(store, run_id)],
        "events": [asdict(e) for e in views.run_events(store, run_id)],
    }


def batch_steps(store: Store, batch_id: int) -> list[str]:
    """The step names of the workflow versions a batch's runs run, in file order (the
    batch's own version first: a retry can move runs to another)."""
    from orchestrator import catalog  # the workflow model: only for the commands that need it

    batch = require_batch(store, batch_id)
    names: dict[str, None] = {}
    for workflow_id in [batch.workflow_id, *store.column("batch_workflow_ids", {"batch_id": batch_id})]:
        names.update(dict.fromkeys(s.name for s in catalog.by_id(store, workflow_id).steps))
    return list(names)


def export_batch(store: Store, batch_id: int, *, with_cost: bool = False) -> Iterator[dict[str, Any]]:
    """One record per run, streamed with a server-side cursor (memory flat in batch size);
    with_cost: with the run's cost and tokens (export --cost)."""
    require_batch(store, batch_id)
    if with_cost:
        with views.export_cost_rows(store, batch_id) as costed:
            for row in costed:
                yield {**_record(row), "cost": float(row.cost), "prompt_tokens": row.prompt_tokens,
                       "output_tokens": row.output_tokens}
        return
    with views.export_rows(store, batch_id) as rows:
        for row in rows:
            yield _record(row)


def _record(row: views.ExportRow) -> dict[str, Any]:
    return {"run_id": row.run_id, "line": row.line, "row": row.row, "status": row.status,
            "outcome": row.outcome, "end_reason": row.end_reason, "outputs": row.outputs}
