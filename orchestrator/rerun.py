"""`orchestrator retry`: ended runs go on from where they stopped, or run again from a step.

Two ways, one transaction (it takes the runs' locks first, in id order, then their
interactions', as every writer does, so it can run beside serve):

- **go on** (no selector, or `--failed`): each selected run that ended failed or
  cancelled gets its failed interactions tried again, as new attempts (`attempt` goes up,
  never back: guards and task ids rely on it; the allowed attempts are raised for a fresh
  set of retries), and where it ended with nothing failed (an output that matched no
  branch, a loop bound, a cancel) a new visit of the step where it ended.
- **from a step** (`--from-step STEP`): each selected run that reached STEP runs STEP
  again and every step reachable from it; the outputs of the other steps are reused.
  The work it replaces is flagged superseded: history that keeps its attempts and cost
  and counts neither for loop bounds nor for fan-in. Runs that never reached STEP are
  skipped and counted.

Prompts and script inputs are rendered again, so a fixed workflow takes effect; with
`--workflow-version` the runs first move to that version of their workflow, refused
(naming the step) when a step whose output is reused differs between the two.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg

from common.errors import NotFound
from orchestrator import catalog, engine
from orchestrator.catalog import StoredWorkflow, WorkflowCache
from orchestrator.controls import ControlRefused, cancel_open
from orchestrator.db.rows import Event, NewInteraction, Rerun, RunInteractionState, RunToRetry
from orchestrator.db.store import Store
from orchestrator.results import end_finished_runs
from orchestrator.states import OPEN, RunStatus, Status, reopen_runs, transition_many
from orchestrator.workflow import Workflow
from orchestrator.workflow.model import Step

log = logging.getLogger(__name__)

Version = int | Literal["latest"]
CHUNK = 1000  # runs planned and changed at a time


@dataclass(frozen=True)
class RetryRequest:
    batch_id: int
    failed: bool = False
    from_step: str | None = None
    run_ids: tuple[int, ...] | None = None
    version: Version | None = None


@dataclass
class RetryPlan:
    """What a retry does (or, dry, would do): the summary `retry` prints."""

    batch_id: int
    mode: str
    runs: Counter = field(default_factory=Counter)       # runs given new work, by the status they had
    skipped: Counter = field(default_factory=Counter)    # runs left as they are, by why
    new_attempts: int = 0
    new_visits: int = 0
    cancelled: int = 0       # open work a rerun replaced
    superseded: int = 0
    ended_again: int = 0     # runs whose new work could not start (a template that does not render)
    moved_to: int | None = None
    moved_on: int = 0        # running runs that had not reached the step: moved, and go on there
    escalations_lifted: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    done: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "mode": self.mode, "runs": dict(self.runs), "skipped": dict(self.skipped),
                "new_attempts": self.new_attempts, "new_visits": self.new_visits, "cancelled": self.cancelled,
                "superseded": self.superseded, "ended_again": self.ended_again, "moved_to_version": self.moved_to,
                "moved_on": self.moved_on,
                "escalations_lifted": self.escalations_lifted, "notices": self.notices, "done": self.done}


@dataclass
class _RunWork:
    """The new work of one run."""

    run: RunToRetry
    workflow: Workflow
    view: engine.RunView
    redo: set[str]                                       # steps whose outputs are not reused
    reruns: list[RunInteractionState] = field(default_factory=list)
    starts: list[tuple[str, list[int]]] = field(default_factory=list)  # (step, parents) of new visits
    replaced: list[RunInteractionState] = field(default_factory=list)
    kept: set[str] = field(default_factory=set)          # steps with work under way that is kept

    @property
    def move_only(self) -> bool:
        """A running run that has not reached the step yet: it only moves to the new
        version, and reaches the step there."""
        return not (self.reruns or self.starts or self.replaced)


def retry(store: Store, request: RetryRequest, *, dry_run: bool = False) -> RetryPlan:
    """Do the retry in one transaction (rolled back when `dry_run`); what it did."""
    with store.transaction() as tx:
        plan = _retry(store, request)
        if dry_run:
            raise psycopg.Rollback(tx)
        plan.done = True
    return plan


def _retry(store: Store, req: RetryRequest) -> RetryPlan:
    batch = store.batch(req.batch_id)
    if batch is None:
        raise NotFound(f"no batch {req.batch_id} (orchestrator status lists the batches)")
    mode = f"from step {req.from_step}" if req.from_step else "failed and cancelled runs go on"
    plan = RetryPlan(batch.id, mode)
    ended = [RunStatus.FAILED, RunStatus.CANCELLED]
    statuses = ended if req.failed or not req.from_step else [*ended, RunStatus.COMPLETED, RunStatus.RUNNING]
    runs = store.lock_runs_to_retry(batch.id, req.run_ids, [s.value for s in statuses])
    if req.run_ids:
        _explain_missing(store, batch.id, set(req.run_ids) - {r.id for r in runs}, plan)
    cache = WorkflowCache()
    target = _target_version(store, batch.workflow_name, req.version) if req.version is not None else None
    if target is None:
        _notice_newer_version(store, batch.workflow_name, runs, plan)
    if req.from_step:
        # The step must be one of the workflow's, in the version the runs will run.
        if target is not None:
            _require_step(target.workflow, req.from_step, f" v{target.version}")
        else:
            _require_step(cache.get(store, batch.workflow_id), req.from_step, f" v{batch.workflow_version}")

    # In chunks of runs, so that a retry of a whole big batch holds one chunk's
    # interactions in memory at a time; still one transaction: a refusal in a later
    # chunk undoes the earlier ones.
    for start in range(0, len(runs), CHUNK):
        work = _plan_runs(store, cache, runs[start:start + CHUNK], target, req.from_step, plan)
        if target is not None:
            _check_move(store, cache, target, work)
        _apply(store, batch.id, work, target, req, plan)
    if sum(plan.runs.values()) and batch.paused_at is not None:
        plan.notices.append(f"batch {batch.id} is paused: the retried work starts at `orchestrator resume --batch "
                            f"{batch.id}`")
    return plan


def _plan_runs(store: Store, cache: WorkflowCache, runs: list[RunToRetry], target: StoredWorkflow | None,
               from_step: str | None, plan: RetryPlan) -> list[_RunWork]:
    ids = [r.id for r in runs]
    mine: dict[int, list[RunInteractionState]] = defaultdict(list)
    for i in store.lock_run_interactions(ids):
        mine[i.run_id].append(i)
    steps = defaultdict(list)
    for row in store.run_steps(ids):
        steps[row.run_id].append(row)
    stopped_at: dict[int, set[int]] = defaultdict(set)
    if from_step is None:
        for e in store.ending_events(ids, engine.PROBLEM_EVENTS):
            stopped_at[e.run_id].add(e.interaction_id)
    work = []
    for run in runs:
        workflow = target.workflow if target is not None else cache.get(store, run.workflow_id)
        view = engine.RunView.from_rows(engine.RunContext(run.id, 0, run.input, workflow), steps[run.id])
        its = mine[run.id]
        if from_step is not None:
            first = next((i for i in its if i.step == from_step), None)
            if first is None:
                if run.status == RunStatus.RUNNING and target is not None and run.workflow_id != target.id:
                    work.append(_RunWork(run, workflow, view, set(), kept={i.step for i in its if i.status in OPEN}))
                    plan.moved_on += 1
                else:
                    plan.skipped[f"never reached step {from_step}"] += 1
                continue
            redo = {from_step} | workflow.reachable_from(from_step)
            w = _RunWork(run, workflow, view, redo, starts=[(from_step, first.parent_ids)],
                         replaced=[i for i in its if i.step in redo],
                         kept={i.step for i in its if i.status in OPEN and i.step not in redo})
        else:
            failed = [i for i in its if i.status == Status.FAILED]
            again = [i for i in its if i.status == Status.CANCELLED or i.id in stopped_at[run.id]]
            if not failed and not again:
                plan.skipped[f"{run.status} with nothing to try again"] += 1
                continue
            redo = set()
            for i in (*failed, *again):
                redo |= {i.step} | (workflow.reachable_from(i.step) if workflow.has_step(i.step) else set())
            w = _RunWork(run, workflow, view, redo, reruns=failed, starts=[(i.step, i.parent_ids) for i in again],
                         replaced=again)
        missing = sorted({name for name in (*(s for s, _ in w.starts), *(i.step for i in w.reruns))
                          if not workflow.has_step(name)})
        if missing:
            raise ControlRefused(f"run {run.id}: workflow {workflow.name} has no step {', '.join(map(repr, missing))} "
                                 "any more; retry it on its own version (without --workflow-version)")
        work.append(w)
    return work


def _apply(store: Store, batch_id: int, work: list[_RunWork], target: StoredWorkflow | None, req: RetryRequest,
           plan: RetryPlan) -> None:
    if not work:
        return
    moving = [w.run for w in work if target is not None and w.run.workflow_id != target.id]
    if moving:
        store.move_runs([r.id for r in moving], target.id)
        plan.moved_to = target.version
    replaced = [i for w in work for i in w.replaced]
    plan.cancelled += len(cancel_open(store, [i for i in replaced if i.status in OPEN]))
    plan.superseded += len(store.supersede([i.id for i in replaced]))
    for status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED):
        reopen_runs(store, [w.run.id for w in work if w.run.status == status], status)
    for w in work:
        if not w.move_only:
            plan.runs[w.run.status] += 1

    reruns, children, events = [], [], []
    for w in work:
        if w.run in moving:
            events.append(Event(batch_id, w.run.id, None, "moved_to_version", None,
                                {"from_workflow_id": w.run.workflow_id, "to_version": target.version}))
        if w.move_only:
            continue
        reused = {k: v for k, v in w.view.outputs.items() if k not in w.redo}
        for i in w.reruns:
            step = w.workflow.step(i.step)
            row = _render(w, step, i.visit, i.parent_ids, w.view.outputs, batch_id)
            if row.status == Status.FAILED:
                # The template still does not render: the interaction stays failed and says why.
                plan.notices.append(f"run {w.run.id}: step {i.step} still cannot be rendered: {row.failure_message}")
                continue
            reruns.append(Rerun(id=i.id, attempt=i.attempt, max_attempts=i.attempt + 1 + w.workflow.retries_for(step),
                                kind=step.kind, actor=step.actor, timeout_s=w.workflow.timeout_for(step),
                                input=row.input))
        for name, parents in w.starts:
            seen = w.view.visits.setdefault(name, engine.StepVisits())
            seen.last_visit += 1
            children.append(_render(w, w.workflow.step(name), seen.last_visit, parents, reused, batch_id))
        detail = {"mode": "from_step" if req.from_step else "failed", "steps": sorted(
            {i.step for i in w.reruns} | {s for s, _ in w.starts}), "was": w.run.status,
            "superseded": len(w.replaced)}
        events.append(Event(batch_id, w.run.id, None, "rerun", None, detail))
    plan.new_attempts += len(transition_many(store, reruns, from_=Status.FAILED, to=Status.PENDING))
    plan.new_visits += len(children)
    open_now = store.store_decisions(attempts=[], events=events, children=children,
                                     runs=[w.run.id for w in work]).open
    # New work that could not start (born failed) leaves a run with nothing open: it ends
    # again now, saying why, instead of waiting for ever.
    stuck = [w for w in work if open_now[w.run.id] == 0 and not w.move_only]
    if stuck:
        fresh = _fresh_views(store, stuck, batch_id)
        end_finished_runs(store, fresh)
        plan.ended_again += len(stuck)
    store.clear_batch_cancelled(batch_id)
    plan.escalations_lifted += store.lift_step_escalations(
        batch_id, sorted({i.step for w in work for i in w.reruns} | {s for w in work for s, _ in w.starts}))
    store.notify_work(batch_id)
    store.notify_controls()


def _render(w: _RunWork, step: Step, visit: int, parents: list[int], outputs: dict[str, Any],
            batch_id: int) -> NewInteraction:
    return engine.build_interaction(w.workflow, step, run_id=w.run.id, batch_id=batch_id, run_input=w.run.input,
                                    visit=visit, parents=list(parents), outputs=outputs)


def _fresh_views(store: Store, work: list[_RunWork], batch_id: int) -> list[engine.RunView]:
    steps = defaultdict(list)
    for row in store.run_steps([w.run.id for w in work]):
        steps[row.run_id].append(row)
    return [engine.RunView.from_rows(engine.RunContext(w.run.id, batch_id, w.run.input, w.workflow), steps[w.run.id])
            for w in work]


def _require_step(workflow: Workflow, name: str, version: str) -> None:
    if not workflow.has_step(name):
        raise ControlRefused(f"workflow {workflow.name}{version} has no step {name!r} (its steps: "
                             f"{', '.join(s.name for s in workflow.steps)})")


def _target_version(store: Store, name: str, version: Version) -> StoredWorkflow:
    if version == "latest":
        return catalog.latest(store, name)
    row = store.workflow_version(name, int(version))
    if row is None:
        latest = store.latest_workflow(name)
        raise NotFound(f"workflow {name} has no version {version}" +
                       (f" (the latest is {latest.version})" if latest else ""))
    return StoredWorkflow(row.id, name, row.version, Workflow.model_validate(row.definition))


def _notice_newer_version(store: Store, name: str, runs: list[RunToRetry], plan: RetryPlan) -> None:
    latest = store.latest_workflow(name)
    if latest is not None and any(r.workflow_id != latest.id for r in runs):
        plan.notices.append(f"workflow {name} has a newer version (v{latest.version}) than some of these runs run: "
                            "they are rendered again from their own version; add --workflow-version latest to move "
                            "them to it")


def _check_move(store: Store, cache: WorkflowCache, target: StoredWorkflow, work: list[_RunWork]) -> None:
    """Refuse a move that would mix two versions' work in one run: a step whose output
    is reused must be the same in both; and a run may not take the identity of a row the
    new version runs already."""
    differ: set[str] = set()
    for w in work:
        if w.run.workflow_id == target.id:
            continue
        old = cache.get(store, w.run.workflow_id)
        for name in {*w.view.outputs, *w.kept}:
            if name not in w.redo and _signature(old, name) != _signature(target.workflow, name):
                differ.add(name)
    if differ:
        names = ", ".join(sorted(differ))
        raise ControlRefused(
            f"cannot move these runs to {target.name} v{target.version}: step(s) {names} differ between their version "
            f"and v{target.version}, and their outputs would be reused; retry --from-step the first of them (or an "
            "earlier step) to run them again on the new version")
    keys = {w.run.row_key: w.run.id for w in work if w.run.workflow_id != target.id}
    taken = store.runs_on_version(target.id, list(keys)) if keys else []
    if taken:
        shown = ", ".join(f"run {keys[t.row_key]} (as run {t.id})" for t in taken[:5])
        raise ControlRefused(f"cannot move {len(taken)} run(s) to {target.name} v{target.version}: that version runs "
                             f"their rows already: {shown}{' ...' if len(taken) > 5 else ''}")


def _signature(workflow: Workflow, name: str) -> Any:
    """What decides a step's work: its definition with its defaults and model resolved."""
    if not workflow.has_step(name):
        return None
    step = workflow.step(name)
    return (step.model_dump(mode="json"), step.actor, workflow.retries_for(step), workflow.timeout_for(step))


def _explain_missing(store: Store, batch_id: int, missing: set[int], plan: RetryPlan) -> None:
    from orchestrator.db import views

    for run_id in sorted(missing):
        run = views.run(store, run_id)
        if run is None or run.batch_id != batch_id:
            raise NotFound(f"no run {run_id} in batch {batch_id}")
        plan.skipped[f"{run.status} (not selected: " + ("add --from-step STEP to run a step again)"
                                                       if run.status == RunStatus.COMPLETED else "still running)")] += 1
