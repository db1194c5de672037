"""A batch's credit limit: reaching it pauses the batch, and dispatch never commits more
than what is left.

The spend is the sum of the batch's attempts' cost (store_decisions keeps it on the
batch as each attempt is recorded, late and duplicate results included: the model did
the work). When it reaches the limit, the batch pauses through the hold of the
operations issue (pause_reason `budget_exceeded`): nothing more starts, calls already
running finish and are counted. So the overshoot is at most what was in flight, and
dispatch keeps that small: it puts no more in flight than the credit left can pay for,
an interaction estimated at what the batch's latest calls of its model cost. A model
with no cost known yet (a price, but no call of it costed) gets one call in flight at
a time until the first cost is known; an unpriced model and a script cost nothing and
are not limited. When even one call would overrun what is left but the limit is not
reached yet, one call still goes when nothing else of the batch is in flight: the batch
then either finishes or reaches its limit and pauses, it never stalls silently.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from orchestrator import controls
from orchestrator.controls import BUDGET_EXCEEDED
from orchestrator.db.store import Store

# No credit limit is larger: beyond it a value is a typo (or 1e400).
MAX_CREDIT = Decimal("1e15")


@dataclass(frozen=True, slots=True)
class _Over:
    id: int
    spent: Decimal
    credit_limit: Decimal


def over_budget(store: Store, batch_ids: Sequence[int]) -> list[int]:
    """Pause every batch of `batch_ids` whose spend reached its limit; those paused."""
    if not batch_ids:
        return []
    over = store.all("batches_over_budget", {"ids": list(batch_ids)}, _Over)
    for b in over:
        controls.pause(store, b.id, reason=BUDGET_EXCEEDED,
                       detail={"spent": str(b.spent), "credit_limit": str(b.credit_limit)})
    return [b.id for b in over]


@dataclass(frozen=True, slots=True)
class _Row:
    batch_id: int
    left: Decimal
    kind: str
    actor: str
    in_flight: int
    estimate: Decimal | None
    priced: bool


Key = tuple[int, str, str]  # (batch, kind, actor)


@dataclass
class Budget:
    """What a dispatch turn may still put in flight for the batches with a credit limit."""

    left: dict[int, Decimal] = field(default_factory=dict)  # batch -> credit left after what is in flight
    spent_all: list[int] = field(default_factory=list)  # batches whose spend reached the limit
    estimate: dict[Key, Decimal | None] = field(default_factory=dict)  # None: priced, no cost known yet
    in_flight: dict[Key, int] = field(default_factory=dict)
    batch_in_flight: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    @classmethod
    def read(cls, store: Store, pending: Sequence[tuple[int, str, str]]) -> Budget:
        """The budget of the batches of `pending` ((batch, kind, actor) with pending work)
        that have a credit limit; empty (everything allowed) when none has."""
        budget = cls()
        rows = store.all("budget_view", {
            "ids": sorted({b for b, _, _ in pending}),
            "pending": json.dumps([{"batch_id": b, "kind": k, "actor": a} for b, k, a in pending])}, _Row)
        for r in rows:
            key = (r.batch_id, r.kind, r.actor)
            estimate = r.estimate if r.estimate is not None else (None if r.priced else Decimal(0))
            budget.estimate[key] = estimate
            budget.in_flight[key] = r.in_flight
            budget.batch_in_flight[r.batch_id] += r.in_flight
            if r.batch_id not in budget.left and r.left <= 0:
                budget.spent_all.append(r.batch_id)
            left = budget.left.get(r.batch_id, r.left)
            budget.left[r.batch_id] = left - (estimate or 0) * r.in_flight
        return budget

    def allow(self, batch_id: int, kind: str, actor: str, want: int) -> int:
        """How many of `want` interactions of (kind, actor) the batch may put in flight."""
        if batch_id not in self.left:
            return want
        key = (batch_id, kind, actor)
        estimate = self.estimate.get(key, Decimal(0))
        left = self.left[batch_id]
        if estimate is None:  # the first call of a priced model: one at a time until its cost is known
            return min(want, 1) if self.in_flight.get(key, 0) == 0 and left > 0 else 0
        if estimate <= 0:
            return want
        n = math.floor(left / estimate) if left > 0 else 0
        if n <= 0 and left > 0 and self.batch_in_flight[batch_id] == 0:
            n = 1  # not enough for a whole call, but the limit is not reached: go on until it is
        return max(0, min(want, n))

    def spend(self, batch_id: int, kind: str, actor: str, n: int) -> None:
        """`n` more of (kind, actor) went in flight."""
        if batch_id not in self.left or n <= 0:
            return
        key = (batch_id, kind, actor)
        self.in_flight[key] = self.in_flight.get(key, 0) + n
        self.batch_in_flight[batch_id] += n
        self.left[batch_id] -= (self.estimate.get(key) or 0) * n
