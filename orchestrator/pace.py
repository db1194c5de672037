"""How fast a batch goes and when it will be done: the rate over the last minute and the
ETA, computed from what the database says (runs.ended_at, its clock), so `status`, every
`--watch` and Prometheus agree. Pure arithmetic over a row of views.BatchPace."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from orchestrator.db import views
from orchestrator.db.rows import Batch
from orchestrator.db.store import Store


@dataclass(frozen=True)
class Pace:
    runs: int
    ended: int
    completed: int
    failed: int
    cancelled: int
    rate_per_min: float       # runs ended per minute, over the last minute
    eta_s: float | None       # None: unknown (nothing ended in the last minute); 0 once done


def pace_of(row: views.BatchPace | views.BatchGauge) -> Pace:
    rate = rate_per_min(row.ended_recently, row.window_s)
    return Pace(runs=row.runs, ended=row.ended, completed=row.completed, failed=row.failed,
                cancelled=row.cancelled, rate_per_min=rate, eta_s=eta_s(row.runs - row.ended, rate))


def rate_per_min(ended_recently: int, window_s: float) -> float:
    """Runs ended per minute. The window is the last minute, or the batch's age when it is
    younger: ten runs ended in a batch ten seconds old is sixty a minute, not ten."""
    return round(ended_recently * 60.0 / max(window_s, 1.0), 1)


def eta_s(remaining: int, rate: float) -> float | None:
    """Seconds until every run has ended at this rate; 0 when none remains, None when
    nothing ended lately (paused, held, or not started): no honest guess."""
    if remaining <= 0:
        return 0.0
    if rate <= 0:
        return None
    return round(remaining * 60.0 / rate)


def held_eta(eta: float | None, *, state: str, stuck: bool = False) -> float | None:
    """No ETA for a batch that waits for a resume (paused, or escalated with nothing else
    left to do): the last minute's rate says nothing about when a person comes back."""
    return None if state == "paused" or stuck else eta


def batch_pace(store: Store, batch_id: int) -> Pace:
    row = views.batch_pace(store, batch_id)
    if row is None:  # the caller checked the batch exists; a purge in between reads as empty
        return Pace(0, 0, 0, 0, 0, 0.0, 0.0)
    return pace_of(row)


def duration(seconds: float | None) -> str:
    """An ETA as a person reads it: 42s, 15m 43s, 2h 05m; "unknown" for None."""
    if seconds is None:
        return "unknown"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class CostForecast:
    spent: Decimal
    to_go: Decimal | None     # what the runs not ended yet will cost at this rate; None: no run ended yet
    credit_limit: Decimal | None

    @property
    def total(self) -> Decimal | None:
        return None if self.to_go is None else self.spent + self.to_go

    def as_dict(self) -> dict[str, float | None]:
        def num(d: Decimal | None) -> float | None:
            return None if d is None else float(d)
        return {"spent": num(self.spent), "to_go": num(self.to_go), "total": num(self.total),
                "credit_limit": num(self.credit_limit)}


def cost_to_go(spent: Decimal, *, ended: int, runs: int) -> Decimal | None:
    """What the runs not ended yet will cost at the batch's cost so far per ended run (the
    spend includes what runs under way used: an estimate on the safe side); 0 when none
    is left, None while no run has ended (no honest guess)."""
    remaining = runs - ended
    if remaining <= 0:
        return Decimal(0)
    if ended <= 0:
        return None
    return spent / ended * remaining


def cost_forecast(batch: Batch, pace: Pace) -> CostForecast:
    """The batch's spend (batches.spent, read with the batch) and its forecast."""
    return CostForecast(batch.spent, cost_to_go(batch.spent, ended=pace.ended, runs=pace.runs), batch.credit_limit)
