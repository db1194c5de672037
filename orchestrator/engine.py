"""What happens after an interaction ends: branches, fan-in, loop bounds, run endings.

Branching happens here and only here, and here it is pure: the engine reads a run's
state from a `RunView` (what results.py read from the database for the locked run,
kept up to date as each result of the batch is applied in turn) and writes its
decisions (events, children) into `Decisions`, which results.py then stores in a few
statements for the whole batch. The run's row stays locked from the read to the
commit, so two results of the same run never decide at once and a fan-in step is
created exactly once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from common.errors import RenderError
from common.messages import FailureClass
from orchestrator.cache import prompt_key
from orchestrator.db.rows import (
    AttemptRecord,
    Event,
    FailedInteraction,
    Moved,
    NewInteraction,
    ProblemEvent,
    RunEnding,
    StepState,
)
from orchestrator.states import RunStatus, Status
from orchestrator.workflow import Step, Workflow, render_step
from orchestrator.workflow.model import output_text

# Engine decisions recorded in the event log that make a run end as failed.
PROBLEM_EVENTS = ("no_branch_matched", "loop_bound_reached")
# A branch `to: $end` taken: the run ends on purpose, with the branch's outcome.
END_REACHED = "end_reached"
# What run_ending reads from the event log of a run that has nothing open any more.
ENDING_EVENTS = (*PROBLEM_EVENTS, END_REACHED)

# Children get their real ids when results.py inserts them, after every decision of
# the batch. Until then a child is known by a provisional id above any real one: all
# the engine does with ids is compare them, and a child is newer than every
# interaction of its run that exists.
_PROVISIONAL_BASE = 2**62


@dataclass(frozen=True)
class RunContext:
    """The locked run and the workflow version it pinned."""

    run_id: int
    batch_id: int
    input: dict[str, str]
    workflow: Workflow


@dataclass
class StepVisits:
    visits: int = 0       # that count: a rerun's superseded visits count neither for max_visits nor fan-in
    last_visit: int = 0   # the highest visit number ever given, superseded or not: the next is one more
    last_id: int = 0
    last_completed_id: int | None = None
    output_visit: int | None = None  # the visit whose output is the step's latest


@dataclass
class RunView:
    """One locked run as the engine sees it: each step's visits and latest output."""

    ctx: RunContext
    visits: dict[str, StepVisits] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, ctx: RunContext, rows: list[StepState]) -> RunView:
        """From the `run_steps` rows of this run."""
        view = cls(ctx)
        for r in rows:
            view.visits[r.step] = StepVisits(r.visits, r.last_visit, r.last_id or 0, r.last_completed_id,
                                             r.output_visit)
            if r.output_visit is not None:
                view.outputs[r.step] = r.output
        return view

    def completed(self, interaction: Moved) -> None:
        """An interaction of this run completed: its output becomes the step's latest
        unless a later visit of the step completed first."""
        seen = self.visits.setdefault(interaction.step, StepVisits())
        seen.last_completed_id = max(seen.last_completed_id or 0, interaction.id)
        if seen.output_visit is None or interaction.visit >= seen.output_visit:
            seen.output_visit = interaction.visit
            self.outputs[interaction.step] = interaction.output


@dataclass
class Decisions:
    """What was decided over a batch of results, in the order it was decided: the
    record of each attempt that ended, the engine's events and its children."""

    attempts: list[AttemptRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    children: list[NewInteraction] = field(default_factory=list)
    _provisional: itertools.count = field(default_factory=lambda: itertools.count(_PROVISIONAL_BASE))

    def event(self, ctx: RunContext, kind: str, detail: dict, interaction_id: int | None = None,
              attempt: int | None = None) -> None:
        self.events.append(Event(ctx.batch_id, ctx.run_id, interaction_id, kind, attempt, detail))

    def child(self, row: NewInteraction) -> int:
        """A new interaction to insert; returns its provisional id."""
        assert all(p < _PROVISIONAL_BASE for p in row.parent_ids), "a parent must be a stored interaction"
        self.children.append(row)
        return next(self._provisional)


def template_context(ctx_input: dict[str, str], outputs: dict[str, Any], run_id: int, batch_id: int) -> dict:
    return {
        "input": ctx_input,
        "steps": {name: {"output": out} for name, out in outputs.items()},
        "run": run_id,
        "batch": batch_id,
    }


def build_interaction(
    workflow: Workflow,
    step: Step,
    *,
    run_id: int,
    batch_id: int,
    run_input: dict[str, str],
    visit: int,
    parents: list[int],
    outputs: dict[str, Any],
) -> NewInteraction:
    """A new interaction, its input rendered now (workers never build prompts).

    Shared by the engine (children) and submit (every run's first step, in bulk).
    A template that cannot be rendered for this run gives an interaction born failed,
    with the reason, instead of a prompt with a hole in it.
    """
    row = NewInteraction(
        run_id=run_id,
        batch_id=batch_id,
        step=step.name,
        kind=step.kind,
        actor=step.actor,
        visit=visit,
        status=Status.PENDING.value,
        max_attempts=workflow.retries_for(step) + 1,
        timeout_s=workflow.timeout_for(step),
        parent_ids=parents,
    )
    try:
        rendered = render_step(step, template_context(run_input, outputs, run_id, batch_id))
    except RenderError as exc:
        row.status = Status.FAILED.value
        row.input = {}
        row.failure_class = FailureClass.RENDER_ERROR.value
        row.failure_message = str(exc)
        return row
    if step.kind == "ai":
        row.input = {
            "prompt": rendered["prompt"],
            "system": rendered.get("system"),
            "options": step.options,
            "format": step.format,
        }
        row.cache_key = prompt_key(row.input)
        row.use_cache = workflow.cached(step)
    else:
        row.input = {"input": rendered["input"]}
    return row


def arrived(workflow: Workflow, need: str, target: str, visits: dict[str, StepVisits], outputs: dict[str, Any]) -> int | None:
    """The interaction by which `need` arrived at fan-in step `target`, or None.

    A need arrives when it has completed since `target` last fired and, if it has
    branches into `target`, one of them matches its latest output: `save needs
    [grade, skills]` with grade's `[PASS] -> save` waits for a passing grade, not
    for any grade. Comparing with `target`'s last firing makes a fan-in inside a
    loop fire once per pass, never twice for the same pass.
    """
    done = visits.get(need)
    own_last = visits[target].last_id if target in visits else 0
    if done is None or done.last_completed_id is None or done.last_completed_id < own_last:
        return None
    into = [b for b in workflow.step(need).next if b.to == target]
    if into and not any(b.matches(outputs.get(need)) for b in into):
        return None
    return done.last_completed_id


def fan_in_parents(workflow: Workflow, step: Step, visits: dict[str, StepVisits], outputs: dict[str, Any]) -> list[int] | None:
    """The interactions a `needs` step fires from, or None while one need has not arrived."""
    parents = []
    for need in step.needs:
        via = arrived(workflow, need, step.name, visits, outputs)
        if via is None:
            return None
        parents.append(via)
    return parents


def on_completed(view: RunView, interaction: Moved, decisions: Decisions) -> None:
    """Evaluate the finished step's branches and fan-ins; decide what became ready.

    `view` already holds the interaction's own completion (RunView.completed)."""
    ctx, workflow = view.ctx, view.ctx.workflow
    step = workflow.step(interaction.step)
    output = interaction.output

    targets: list[str] = []
    matched = [b for b in step.next if b.matches(output)]
    for branch in matched:
        if branch.ends:
            decisions.event(ctx, END_REACHED, {"step": step.name, "when": branch.describe(), "outcome": branch.outcome,
                                               "output_head": output_text(output)[:200]}, interaction.id)
            continue
        decisions.event(ctx, "branch_taken", {"step": step.name, "when": branch.describe(), "to": branch.to},
                        interaction.id)
        if branch.to not in targets:
            targets.append(branch.to)
    if step.next and not matched:
        decisions.event(
            ctx,
            "no_branch_matched",
            {
                "step": step.name,
                "expected": [b.describe() for b in step.next],
                "output_head": output_text(output)[:200],
            },
            interaction.id,
        )
    for dependent in workflow.fan_in_dependents(step.name):
        if dependent.name not in targets:
            targets.append(dependent.name)

    visits, outputs = view.visits, view.outputs
    for name in targets:  # grows when a bounded step hands over to its on_max_visits step
        target = workflow.step(name)
        if target.needs:
            parents = fan_in_parents(workflow, target, visits, outputs)
            if parents is None:
                continue
        else:
            parents = [interaction.id]
        seen = visits.setdefault(name, StepVisits())
        if target.max_visits is not None and seen.visits + 1 > target.max_visits:
            exit_to = target.on_max_visits
            decisions.event(
                ctx,
                "loop_exit" if exit_to else "loop_bound_reached",
                {"step": name, "max_visits": target.max_visits, "from": step.name, "to": exit_to},
                interaction.id,
            )
            if exit_to and exit_to not in targets:
                targets.append(exit_to)
            continue
        row = build_interaction(
            workflow,
            target,
            run_id=ctx.run_id,
            batch_id=ctx.batch_id,
            run_input=ctx.input,
            visit=seen.last_visit + 1,
            parents=parents,
            outputs=outputs,
        )
        seen.visits, seen.last_visit, seen.last_id = seen.visits + 1, seen.last_visit + 1, decisions.child(row)


def run_ending(view: RunView, failed: list[FailedInteraction], events: list[ProblemEvent]) -> RunEnding:
    """How a run that has nothing pending or in flight ends, and why.

    A run is completed only when every path ended at a terminal step or at a branch
    `to: $end` (then with that branch's outcome). A failed interaction (`failed`), an
    output that matched no branch or a loop bound reached (those `events`), or a fan-in
    whose needs never all completed make it failed, and the reason says which, where.
    """
    ends = [e.detail for e in events if e.kind == END_REACHED]
    problems = [e for e in events if e.kind != END_REACHED]
    reasons: list[str] = []
    for f in failed:
        reasons.append(
            f"step {f.step} failed after {f.attempt} attempt(s) ({f.failure_class}): {f.failure_message}"
        )
    for e in problems:
        d = e.detail
        if e.kind == "no_branch_matched":
            expected = ", ".join(d["expected"])
            head = d.get("output_head", "")
            got = f"; output: {head[:160]}" if head else ""
            reasons.append(f"step {d['step']}: output matched no branch (expected one of {expected}{got})")
        else:
            reasons.append(f"step {d['step']}: loop bound reached (max_visits={d['max_visits']}, from {d['from']})")
    workflow, visits, outputs = view.ctx.workflow, view.visits, view.outputs
    for step in workflow.steps:
        if step.needs and step.name not in visits and any(n in visits for n in step.needs):
            waiting = [n for n in step.needs if arrived(workflow, n, step.name, visits, outputs) is None]
            reasons.append(f"step {step.name} never started: still waiting for {', '.join(waiting)}")
    run_id = view.ctx.run_id
    if reasons:
        return RunEnding(run_id, RunStatus.FAILED.value, "; ".join(reasons))
    if ends:
        outcomes = sorted({d["outcome"] for d in ends if d.get("outcome")})
        said = "; ".join(f"step {d['step']} ended the run ({d['when']})" + (f": {d['output_head']}" if d.get(
            "output_head") else "") for d in ends)
        return RunEnding(run_id, RunStatus.COMPLETED.value, said, ",".join(outcomes) or None)
    ended_at = [s.name for s in workflow.steps if s.name in visits and not s.next]
    return RunEnding(run_id, RunStatus.COMPLETED.value,
                     f"every path reached a terminal step ({', '.join(ended_at) or 'the last step'})")


def cancelled(run_id: int) -> RunEnding:
    return RunEnding(run_id, RunStatus.CANCELLED.value, "cancelled by the user")
