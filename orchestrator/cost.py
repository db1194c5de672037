"""What a batch cost, as `status` shows it: per model and per step, the total, the cost
per completed run, the cache's savings and the credit left. Plain data (numbers as JSON
numbers) for the table and for --json alike; the sums come from the batch's usage
totals (views.batch_cost: every attempt counted, kept by store_decisions), the spend
and the limit from the batch's own row."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from orchestrator.db import views
from orchestrator.db.rows import Batch
from orchestrator.db.store import Store
from orchestrator.prices import number

# budget.BUDGET_EXCEEDED, not imported from there: budget.py brings the engine (and Jinja2)
# into `status`, which starts in a fraction of the time without them (a test keeps the two equal).
BUDGET_EXCEEDED = "budget_exceeded"
SUMS = ("attempts", "prompt_tokens", "output_tokens", "model_s", "cost", "unpriced", "cache_hits",
        "saved_prompt_tokens", "saved_output_tokens", "saved_cost")


def _sum(rows: Iterable[views.CostRow]) -> dict[str, Any]:
    total: dict[str, Any] = {name: 0 for name in SUMS}
    total["cost"] = total["saved_cost"] = Decimal(0)
    total["model_s"] = 0.0
    for r in rows:
        for name in SUMS:
            total[name] += getattr(r, name)
    return total


def _shown(sums: dict[str, Any]) -> dict[str, Any]:
    """Decimals as JSON numbers; `unpriced` as a flag beside how many attempts it was."""
    return {**sums, "cost": number(sums["cost"]), "saved_cost": number(sums["saved_cost"]),
            "model_s": round(sums["model_s"], 3), "unpriced": sums["unpriced"] > 0,
            "unpriced_attempts": sums["unpriced"]}


def batch_cost(store: Store, batch: Batch, *, completed_runs: int, pause_reason: str | None) -> dict[str, Any]:
    rows = views.batch_cost(store, batch.id)
    models: dict[str, list[views.CostRow]] = {}
    steps: dict[str, list[views.CostRow]] = {}
    for r in rows:
        if r.model is not None:
            models.setdefault(r.model, []).append(r)
        steps.setdefault(r.step, []).append(r)
    total = _sum(rows)
    spent, limit = batch.spent, batch.credit_limit
    per_run = total["cost"] / completed_runs if completed_runs else None
    return {
        "models": [{"model": m, **_shown(_sum(rs))} for m, rs in sorted(models.items())],
        "steps": [{"step": s, "models": [r.model for r in rs if r.model is not None],
                   "kind": rs[0].kind, **_shown(_sum(rs))} for s, rs in sorted(steps.items())],
        "total": _shown(total),
        "completed_runs": completed_runs,
        "cost_per_completed_run": number(per_run),
        "spent": number(spent),
        "credit_limit": number(limit),
        "left": number(limit - spent) if limit is not None else None,
        "budget_exceeded": pause_reason == BUDGET_EXCEEDED,
    }


def resume_hint(batch_id: int) -> str:
    """What to type to go on with a batch its credit limit paused."""
    return f"orchestrator resume --batch {batch_id} --credit-limit NEW"
