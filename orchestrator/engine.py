"""What happens after an interaction ends: branches, fan-in, loop bounds, run endings.

Branching happens here and only here. Every function runs inside the transaction
that recorded the result, with the run's row locked (results.py), so two results of
the same run never decide at once and a fan-in step is created exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from common.errors import RenderError
from common.messages import FailureClass
from orchestrator.db import Q
from orchestrator.states import Status
from orchestrator.workflow import Step, Workflow, render_step
from orchestrator.workflow.model import output_text

# Engine decisions recorded in the event log that make a run end as failed.
PROBLEM_EVENTS = ("no_branch_matched", "loop_bound_reached")


@dataclass(frozen=True)
class RunContext:
    """The locked run and the workflow version it pinned."""

    run_id: int
    batch_id: int
    input: dict[str, str]
    workflow: Workflow


@dataclass
class StepVisits:
    visits: int = 0
    last_id: int = 0
    last_completed_id: int | None = None
    statuses: list[str] = field(default_factory=list)


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
) -> dict[str, Any]:
    """The row of a new interaction, its input rendered now (workers never build prompts).

    Shared by the engine (children) and submit (every run's first step, in bulk).
    A template that cannot be rendered for this run gives a row born failed, with the
    reason, instead of a prompt with a hole in it.
    """
    row: dict[str, Any] = {
        "run_id": run_id,
        "batch_id": batch_id,
        "step": step.name,
        "kind": step.kind,
        "actor": step.actor,
        "visit": visit,
        "status": Status.PENDING.value,
        "max_attempts": workflow.retries_for(step) + 1,
        "timeout_s": workflow.timeout_for(step),
        "parent_ids": parents,
        "failure_class": None,
        "failure_message": None,
    }
    try:
        rendered = render_step(step, template_context(run_input, outputs, run_id, batch_id))
    except RenderError as exc:
        row.update(
            status=Status.FAILED.value,
            input={},
            failure_class=FailureClass.RENDER_ERROR.value,
            failure_message=str(exc),
        )
        return row
    if step.kind == "ai":
        row["input"] = {
            "prompt": rendered["prompt"],
            "system": rendered.get("system"),
            "options": step.options,
            "format": step.format,
        }
    else:
        row["input"] = {"input": rendered["input"]}
    return row


def insert_interaction(cur: psycopg.Cursor, row: dict[str, Any]) -> int | None:
    params = dict(row, input=Jsonb(row["input"]))
    cur.execute(Q["insert_interaction"], params)
    created = cur.fetchone()
    return created["id"] if created else None


def record_event(cur: psycopg.Cursor, ctx: RunContext, kind: str, detail: dict, interaction_id: int | None = None) -> None:
    cur.execute(
        Q["insert_event"],
        {
            "batch_id": ctx.batch_id,
            "run_id": ctx.run_id,
            "interaction_id": interaction_id,
            "kind": kind,
            "attempt": None,
            "detail": Jsonb(detail),
        },
    )


def run_state(cur: psycopg.Cursor, run_id: int) -> tuple[dict[str, StepVisits], dict[str, Any]]:
    """Each step's visits, and each completed step's latest output, of one run."""
    cur.execute(Q["run_steps"], {"run_id": run_id})
    rows = cur.fetchall()
    visits = {r["step"]: StepVisits(r["visits"], r["last_id"], r["last_completed_id"], r["statuses"]) for r in rows}
    outputs = {r["step"]: r["output"] for r in rows if r["has_output"]}
    return visits, outputs


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


def on_completed(cur: psycopg.Cursor, ctx: RunContext, interaction: dict) -> list[int]:
    """Evaluate the finished step's branches and fan-ins; create what became ready."""
    workflow = ctx.workflow
    step = workflow.step(interaction["step"])
    output = interaction["output"]

    targets: list[str] = []
    matched = [b for b in step.next if b.matches(output)]
    for branch in matched:
        record_event(cur, ctx, "branch_taken", {"step": step.name, "when": branch.describe(), "to": branch.to}, interaction["id"])
        if branch.to not in targets:
            targets.append(branch.to)
    if step.next and not matched:
        record_event(
            cur,
            ctx,
            "no_branch_matched",
            {
                "step": step.name,
                "expected": [b.describe() for b in step.next],
                "output_head": output_text(output)[:200],
            },
            interaction["id"],
        )
    for dependent in workflow.fan_in_dependents(step.name):
        if dependent.name not in targets:
            targets.append(dependent.name)
    if not targets:
        return []

    visits, outputs = run_state(cur, ctx.run_id)
    created = []
    for name in targets:  # grows when a bounded step hands over to its on_max_visits step
        target = workflow.step(name)
        if target.needs:
            parents = fan_in_parents(workflow, target, visits, outputs)
            if parents is None:
                continue
        else:
            parents = [interaction["id"]]
        seen = visits.setdefault(name, StepVisits())
        visit = seen.visits + 1
        if target.max_visits is not None and visit > target.max_visits:
            exit_to = target.on_max_visits
            record_event(
                cur,
                ctx,
                "loop_exit" if exit_to else "loop_bound_reached",
                {"step": name, "max_visits": target.max_visits, "from": step.name, "to": exit_to},
                interaction["id"],
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
            visit=visit,
            parents=parents,
            outputs=outputs,
        )
        new_id = insert_interaction(cur, row)
        if new_id is not None:
            seen.visits, seen.last_id = visit, new_id
            created.append(new_id)
    return created


def finish_if_done(cur: psycopg.Cursor, ctx: RunContext) -> str | None:
    """End the run when nothing is pending or in flight; return its new status.

    A run is completed only when every path ended at a terminal step. A failed
    interaction, an output that matched no branch, a loop bound reached, or a
    fan-in whose needs never all completed make it failed, and its end_reason
    says which, where.
    """
    cur.execute(Q["run_open_count"], {"run_id": ctx.run_id})
    if cur.fetchone()["open"] > 0:
        return None

    problems: list[str] = []
    cur.execute(Q["run_failed_interactions"], {"run_id": ctx.run_id})
    for f in cur.fetchall():
        problems.append(
            f"step {f['step']} failed after {f['attempt']} attempt(s) ({f['failure_class']}): {f['failure_message']}"
        )
    cur.execute(Q["run_problem_events"], {"run_id": ctx.run_id, "kinds": list(PROBLEM_EVENTS)})
    for e in cur.fetchall():
        d = e["detail"]
        if e["kind"] == "no_branch_matched":
            expected = ", ".join(d["expected"])
            head = d.get("output_head", "")
            got = f"; output: {head[:160]}" if head else ""
            problems.append(f"step {d['step']}: output matched no branch (expected one of {expected}{got})")
        else:
            problems.append(f"step {d['step']}: loop bound reached (max_visits={d['max_visits']}, from {d['from']})")
    visits, outputs = run_state(cur, ctx.run_id)
    for step in ctx.workflow.steps:
        if step.needs and step.name not in visits and any(n in visits for n in step.needs):
            waiting = [n for n in step.needs if arrived(ctx.workflow, n, step.name, visits, outputs) is None]
            problems.append(f"step {step.name} never started: still waiting for {', '.join(waiting)}")
    if problems:
        status, reason = "failed", "; ".join(problems)
    else:
        ended_at = [s.name for s in ctx.workflow.steps if s.name in visits and not s.next]
        status, reason = "completed", f"every path reached a terminal step ({', '.join(ended_at) or 'the last step'})"
    cur.execute(Q["finish_run"], {"id": ctx.run_id, "status": status, "reason": reason})
    return status
