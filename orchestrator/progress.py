"""What a person watching a batch sees, as data: one snapshot per refresh, read from the
database (runs ended / total with outcomes, per step and per model what is done, in
flight and waiting, the rate and ETA, failures so far by class, the batch state).

`status --watch`, `submit --wait`, `submit --local` and the demo all draw it
(orchestrator/watch.py); with --json it is printed as it is, one object a line.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

from pydantic import BaseModel

from orchestrator import overview
from orchestrator.db import views
from orchestrator.db.store import Store
from orchestrator.pace import batch_pace, cost_forecast, held_eta


class Counts(BaseModel):
    """Interactions of one step or one model: ended (completed, failed or cancelled),
    dispatched to a worker, and pending."""

    done: int = 0
    in_flight: int = 0
    waiting: int = 0


class StepProgress(Counts):
    step: str
    actor: str


class ModelProgress(Counts):
    model: str


class RunsProgress(BaseModel):
    ended: int
    total: int
    completed: int
    failed: int
    cancelled: int
    outcomes: dict[str, int]  # completed runs by outcome: "completed" or a named `to: $end` outcome


class CostProgress(BaseModel):
    """Spent so far and, at the cost per ended run so far, what the rest will cost."""

    spent: float
    to_go: float | None           # None: no run ended yet
    total: float | None
    credit_limit: float | None


class Snapshot(BaseModel):
    batch_id: int
    workflow: str
    workflow_version: int
    at: datetime
    state: str                    # running, paused, escalated, done
    reason: str | None
    stuck: bool                   # escalated, and nothing can move until a person acts
    progress: RunsProgress
    rate_per_min: float
    eta_s: float | None
    cost: CostProgress
    steps: list[StepProgress]
    models: list[ModelProgress]
    failures: dict[str, int]      # failed interactions so far, by failure class

    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def none_failed(self) -> bool:
        """What `submit --wait` and `status --watch` exit 0 for: no run failed (a run that
        ended on purpose with an outcome completed; one a person cancelled did not fail)."""
        return self.progress.failed == 0


def snapshot(store: Store, batch_id: int) -> Snapshot:
    batch = overview.require_batch(store, batch_id)
    state = overview.batch_state(store, batch)
    pace = batch_pace(store, batch_id)
    steps: dict[tuple[str, str], StepProgress] = {}
    models: dict[str, ModelProgress] = {}
    for r in views.step_counts(store, batch_id):
        rows = [steps.setdefault((r.step, r.actor), StepProgress(step=r.step, actor=r.actor))]
        if r.kind == "ai":
            rows.append(models.setdefault(r.actor, ModelProgress(model=r.actor)))
        for row in rows:
            _count(row, r.status, r.n)
    failures: Counter[str] = Counter()
    for f in views.failure_counts(store, batch_id):
        failures[f.failure_class] += f.n
    stuck = overview.waits_for_a_person(store, batch_id, state)
    return Snapshot(
        batch_id=batch.id, workflow=batch.workflow_name, workflow_version=batch.workflow_version,
        at=datetime.now(timezone.utc), state=state.state, reason=state.reason, stuck=stuck,
        progress=RunsProgress(ended=pace.ended, total=pace.runs, completed=pace.completed, failed=pace.failed,
                              cancelled=pace.cancelled,
                              outcomes={o.outcome: o.n for o in views.outcome_counts(store, batch_id)}),
        rate_per_min=pace.rate_per_min, eta_s=held_eta(pace.eta_s, state=state.state, stuck=stuck),
        cost=CostProgress(**cost_forecast(batch, pace).as_dict()),
        steps=sorted(steps.values(), key=lambda s: (s.step, s.actor)),
        models=sorted(models.values(), key=lambda m: m.model),
        failures=dict(failures.most_common()),
    )


def _count(row: Counts, status: str, n: int) -> None:
    if status == "pending":
        row.waiting += n
    elif status == "dispatched":
        row.in_flight += n
    else:
        row.done += n
