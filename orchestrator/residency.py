"""serve's end of residency: each second, read the backlog per model and the hosts from
their heartbeats, run placement (orchestrator/placement.py), and say the result to the
GPU workers (common/placement.py is their end) when it changed, when a host has not
heard it yet, and every REPEAT_S.

The placement lives in serve's memory: a serve that restarts starts from what each
host reports it has loaded and was placed, so nothing moves for the restart.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter

from common.messages import HostPlacement, Placement, WorkerStatus, utcnow
from common.placement import BROADCAST
from common.settings import get_settings
from orchestrator.broadcast import Broadcaster
from orchestrator.catalog import WorkflowCache
from orchestrator.db.store import Store
from orchestrator.placement import Demand, Host, HostKey, Placed, PlacementState, Switch, plan
from orchestrator.workers import STALE_S

log = logging.getLogger(__name__)

EVERY_S = 1.0    # how often placement looks again
REPEAT_S = 5.0   # a worker that missed a word hears the next (the worker waits 6 s at start)

SWITCHES = Counter("wavefarm_placement_switches_total", "Models placed on or let go from a host", ["reason"])


@dataclass(frozen=True, slots=True)
class _Backlog:
    actor: str
    model: str
    batch_id: int
    workflow_id: int
    priority: int
    waiting: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class _Worker:
    name: str
    machine: str
    server: str
    max_loaded: int | None
    concurrency: int
    placed: list[str] | None
    models: list[str]
    resident: list[str]


def hosts_of(workers: Sequence[_Worker]) -> tuple[list[Host], dict[HostKey, list[_Worker]]]:
    """Workers grouped into hosts: the workers on one machine that drive one server share
    its memory. A host is placed by serve when its workers say how many models it holds."""
    by_key: dict[HostKey, list[_Worker]] = defaultdict(list)
    for w in workers:
        by_key[(w.machine, w.server)].append(w)
    hosts = []
    for key, group in by_key.items():
        capacities = [w.max_loaded for w in group if w.max_loaded is not None]
        hosts.append(Host(key=key, capacity=min(capacities) if capacities else None,
                          models=frozenset(m for w in group for m in w.models),
                          resident=frozenset(m for w in group for m in w.resident),
                          slots=sum(w.concurrency for w in group)))
    return hosts, by_key


@dataclass(frozen=True, slots=True)
class _Timing:
    model: str
    call_s: float | None
    load_s: float | None


def demands_of(store: Store, rows: Sequence[_Backlog], workflows: WorkflowCache) -> dict[str, Demand]:
    """Per model: the backlog summed over batches, the highest priority with work, the
    largest context its batches' steps on that model ask for, and what its calls and
    loads took (a model not loaded yet is taken to load as the others did)."""
    timings = {t.model: t for t in store.all("model_timing", {"batch_ids": sorted({r.batch_id for r in rows})},
                                              _Timing)}
    loads = [t.load_s for t in timings.values() if t.load_s is not None]
    any_load = sum(loads) / len(loads) if loads else None
    out: dict[str, Demand] = {}
    for r in rows:
        num_ctx = _num_ctx(store, workflows, r.workflow_id, r.actor)
        d = out.get(r.model) or Demand(r.model)
        priority = max(d.priority, r.priority) if d.work else r.priority
        ctx = d.num_ctx if num_ctx is None else num_ctx if d.num_ctx is None else max(d.num_ctx, num_ctx)
        t = timings.get(r.model)
        out[r.model] = Demand(r.model, waiting=d.waiting + r.waiting, in_flight=d.in_flight + r.in_flight,
                              priority=priority, num_ctx=ctx, call_s=t.call_s if t else None,
                              load_s=t.load_s if t and t.load_s is not None else any_load)
    return out


def _num_ctx(store: Store, workflows: WorkflowCache, workflow_id: int, actor: str) -> int | None:
    try:
        wf = workflows.get(store, workflow_id)
    except Exception:  # a version that cannot be read: no context to fix, the work still places
        return None
    asked = [s.options.get("num_ctx") for s in wf.steps if s.kind == "ai" and s.actor == actor]
    return max((n for n in asked if isinstance(n, int)), default=None)


class Placer:
    """Placement, run by serve between its turns."""

    def __init__(self, broadcaster: Broadcaster, workflows: WorkflowCache, *, every_s: float = EVERY_S,
                 repeat_s: float = REPEAT_S, wait_s: float | None = None, idle_release_s: float | None = None) -> None:
        settings = get_settings()
        self.broadcaster = broadcaster
        self.every_s = every_s
        self.repeat_s = repeat_s
        self.wait_s = settings.residency_wait_s if wait_s is None else wait_s
        self.idle_release_s = settings.residency_idle_s if idle_release_s is None else idle_release_s
        self.state = PlacementState()
        self.workflows = workflows  # serve's: a version is parsed once per process
        self.last: Placement | None = None
        self._looked_at = float("-inf")
        self._said_at = float("-inf")
        self._due = False

    def wake(self) -> None:
        """Look again at the next turn (new work was submitted)."""
        self._due = True

    def heard_from(self, statuses: Sequence[WorkerStatus]) -> None:
        """A placed host whose worker has not heard its placement (it just started) hears it now."""
        if self.last is None:
            return
        told = {(h.machine, h.server): sorted(h.models) for h in self.last.hosts}
        for s in statuses:
            if s.kind == "ai" and s.max_loaded is not None and not s.stopping:
                if s.placed is None or told.get((s.machine or s.name, s.server or "")) != sorted(s.placed):
                    self._due = True

    def place_if_due(self, store: Store, live_digests: Callable[[], dict[str, list[str]]]) -> None:
        """`live_digests`: model -> the digests live hosts serve (the dispatcher's reading)."""
        now = time.monotonic()
        if now - self._looked_at < self.every_s and not self._due:
            return
        self._looked_at, due, self._due = now, self._due, False
        with store.transaction():
            workers = store.all("placement_hosts", {"stale_s": STALE_S}, _Worker)
            hosts, by_key = hosts_of(workers)
            if not any(h.capacity is not None for h in hosts):
                self.last = None
                return  # no host serve places models on: nothing to say
            digests = sorted({d for ds in live_digests().values() for d in ds})
            rows = store.all("model_backlog", {"digests": digests}, _Backlog)
            demands = demands_of(store, rows, self.workflows)
        self._resume_from(hosts, by_key, now)
        self.state, switches = plan(demands, hosts, self.state, now=now, wait_s=self.wait_s,
                                    idle_release_s=self.idle_release_s)
        for s in switches:
            _log_switch(s, demands)
            SWITCHES.labels(s.reason.split(" ")[0]).inc()
        placement = Placement(hosts=[HostPlacement(machine=key[0], server=key[1], models=sorted(spots),
                                                   num_ctx={m: p.num_ctx for m, p in spots.items()
                                                            if p.num_ctx is not None})
                                     for key, spots in sorted(self.state.hosts.items())], at=utcnow())
        if due or self.last is None or _key(placement) != _key(self.last) or now - self._said_at >= self.repeat_s:
            try:
                self.broadcaster.say(BROADCAST, {"placement": placement.model_dump(mode="json")})
            except Exception as exc:  # the broker is away: the next round says it
                log.warning("could not tell the GPU workers the placement (%s); trying again", type(exc).__name__)
                return
            self.last, self._said_at = placement, now

    def _resume_from(self, hosts: Sequence[Host], by_key: dict[HostKey, list[_Worker]], now: float) -> None:
        """A host this serve has not placed yet keeps what its workers say serve placed on
        it before (a restarted serve), else what it has loaded (placement.py)."""
        for h in hosts:
            if h.capacity is None or h.key in self.state.hosts:
                continue
            before = next((w.placed for w in by_key[h.key] if w.placed is not None), None)
            if before is not None:
                self.state.hosts[h.key] = {m: Placed(since=now - self.wait_s)
                                           for m in before if m in h.models}


def _key(placement: Placement) -> tuple:
    return tuple((h.machine, h.server, tuple(h.models), tuple(sorted(h.num_ctx.items()))) for h in placement.hosts)


def _log_switch(s: Switch, demands: dict[str, Demand]) -> None:
    host = f"{s.host[0]}/{s.host[1]}"
    if s.model is None:
        log.info("placement: %s lets %s go (no work for a while)", host, s.evicted)
        return
    d = demands.get(s.model)
    waiting = f"{d.waiting} waiting" if d else "no work"
    if s.evicted is None:
        log.info("placement: %s takes %s (%s, %s)", host, s.model, waiting, s.reason)
    else:
        log.info("placement: %s takes %s instead of %s (%s, %s)", host, s.model, s.evicted, waiting, s.reason)
