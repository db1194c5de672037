"""Model placement: which host consumes which model queues. Pure: the backlog per model
and the hosts in, the placement out (orchestrator/residency.py runs it in serve).

Why it exists: a GPU host holds at most `max_loaded` models; a call to one that is not
loaded costs a load (seconds to minutes) and evicts another. A worker that consumed
every model queue its server has would load a model every other call. serve sees the
whole backlog and every host, so it decides, and each host consumes only what is
placed on it.

The rules, in the order of the aims:
1. No model with work is left without a host. A model with work and no host takes a
   spot: a free one; else one held by a model with no work; else a second copy of a
   model another host also holds; else, once it has waited `wait_s / 2` (the other
   half is for the drain and the load), the spot of the model placed longest ago past
   its own `wait_s / 2`, the one with the lowest priority and least waiting among
   those. So models with more work than the fleet holds take turns, each at least
   half the bound, and none waits more than about the bound.
2. A host keeps what it holds (a switch costs a load): placed models stay while they
   have work; a model with no work stays placed for `idle_release_s`, then is let go
   (the worker unloads it, and the memory is free for the next batch).
3. A switch goes where it costs least: a host that has the model loaded already, then
   a free spot, then the cheapest eviction (rule 1's order).
4. Free spots, and spots of models out of work for IDLE_GRACE_S, take more copies of a
   model whose waiting work would take its hosts
   longer than COPY_LOADS loads of it (from the calls and loads its batches' attempts
   recorded; before any is known, more than EXTRA_BACKLOG calls waiting per slot): a
   long step spreads over the fleet, and a model with a few calls waiting does not cost
   another host a load.
With hosts that together hold every model that has work, no rule ever evicts a model
with work from its last host: each model settles, and the swaps stop.

A host is (machine, server). One that serve does not place (residency off, an
OpenAI-compatible server) serves every model it has: those models have a host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

HostKey = tuple[str, str]  # (machine, model server as host:port)

# A model gets another host while its backlog would take its hosts longer than this many
# of its loads; while its call and load times are unknown, while more than EXTRA_BACKLOG
# calls per slot of its hosts wait.
COPY_LOADS = 2.0
EXTRA_BACKLOG = 2
# A model out of work this long gives its spot to another copy of one that has work (at
# once to a model with no host): a step between two of its calls is not out of work.
IDLE_GRACE_S = 5.0


@dataclass(frozen=True)
class Demand:
    """One model's work, as placement counts it (held work and cache hits left out)."""

    model: str
    waiting: int = 0          # pending, ready to go
    in_flight: int = 0        # dispatched: in a queue, a prefetch buffer or a call
    priority: int = 0         # the highest priority among its batches
    num_ctx: int | None = None  # the largest context its work asks for (None: the default)
    call_s: float | None = None   # what a call takes, loads left out (None: not known yet)
    load_s: float | None = None   # what a load takes (None: not known yet)

    @property
    def work(self) -> int:
        return self.waiting + self.in_flight

    def worth_a_copy(self, slots: int) -> bool:
        """Whether another host should load this model, its hosts having `slots` slots."""
        if self.call_s is not None and self.load_s is not None:
            return self.waiting * self.call_s / slots > COPY_LOADS * self.load_s
        return self.waiting > EXTRA_BACKLOG * slots


@dataclass(frozen=True)
class Host:
    key: HostKey
    capacity: int | None            # models it holds at once; None: not placed by serve
    models: frozenset[str]          # what its server has
    resident: frozenset[str] = frozenset()  # loaded now
    slots: int = 1                  # its workers' concurrency


@dataclass(frozen=True)
class Placed:
    since: float                    # when it was placed on the host
    idle_since: float | None = None  # when it last ran out of work (None: it has work)
    num_ctx: int | None = None      # fixed while placed: only ever grows


@dataclass
class PlacementState:
    """What serve keeps between rounds: the placement and how long models waited for one."""

    hosts: dict[HostKey, dict[str, Placed]] = field(default_factory=dict)
    unhosted_since: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Switch:
    host: HostKey
    model: str | None     # placed on the host (None: only let go)
    evicted: str | None   # let go from it
    reason: str           # free, idle, second copy, waited Ns, released


def plan(demands: Mapping[str, Demand], hosts: Sequence[Host], state: PlacementState, *, now: float,
         wait_s: float, idle_release_s: float) -> tuple[PlacementState, list[Switch]]:
    """The next placement, and the changes from `state` that it makes."""
    work = {m: d for m, d in demands.items() if d.work > 0}
    planned = [h for h in hosts if h.capacity is not None]
    fixed: dict[str, int] = {}  # model -> slots of the hosts serve does not place
    for h in hosts:
        if h.capacity is None:
            for m in h.models:
                fixed[m] = fixed.get(m, 0) + h.slots
    switches: list[Switch] = []
    placed = {h.key: _kept(h, state.hosts.get(h.key), work, now, wait_s, idle_release_s, switches) for h in planned}

    def holders(model: str) -> int:
        return sum(1 for h in planned if model in placed[h.key]) + (1 if model in fixed else 0)

    def slots(model: str) -> int:
        return sum(h.slots for h in planned if model in placed[h.key]) + fixed.get(model, 0)

    def put(host: Host, model: str, evicted: str | None, reason: str) -> None:
        spots = placed[host.key]
        if evicted is not None:
            del spots[evicted]
        spots[model] = Placed(since=now, num_ctx=work[model].num_ctx if model in work else None)
        switches.append(Switch(host.key, model, evicted, reason))

    def urgency(model: str) -> tuple:
        # Those past half the bound first, the longest waiting first (so that models
        # taking turns each get theirs); then by priority and work.
        waited = now - state.unhosted_since.get(model, now)
        return (0, -waited) if waited >= wait_s / 2 else (1, 0, -work[model].priority, -work[model].work, model)

    # Rule 1 with eviction, for the models that have work and no host at all.
    for model in sorted((m for m in work if holders(m) == 0), key=lambda m: (urgency(m), m)):
        waited = now - state.unhosted_since.get(model, now)
        best: tuple | None = None
        for h in planned:
            if model not in h.models:
                continue
            loaded = 0 if model in h.resident else 1
            if len(placed[h.key]) < h.capacity:
                cost, victim, reason = (0, loaded, 0, 0), None, "free"
                if best is None or cost < best[0]:
                    best = (cost, h, victim, reason)
                continue
            for victim, p in placed[h.key].items():
                if victim not in work:
                    cost, reason = (1, loaded, 0, 0), "idle"
                elif holders(victim) >= 2:
                    cost, reason = (2, loaded, -holders(victim), work[victim].waiting), "second copy"
                elif waited >= wait_s / 2 and now - p.since >= wait_s / 2:
                    cost, reason = (3, work[victim].priority, work[victim].waiting, p.since), f"waited {waited:.0f}s"
                else:
                    continue
                if best is None or cost < best[0]:
                    best = (cost, h, victim, reason)
        if best is not None:
            put(best[1], model, best[2], best[3])

    def spare(host: Host) -> tuple[bool, str | None] | None:
        """Whether `host` has a spot for another copy: (free, the idle model to let go)."""
        if len(placed[host.key]) < host.capacity:
            return True, None
        idle = [(m in host.resident, p.idle_since, m) for m, p in placed[host.key].items()
                if m not in work and p.idle_since is not None and now - p.idle_since >= IDLE_GRACE_S]
        return (False, min(idle)[2]) if idle else None

    # Rule 4: free spots, and those of models idle a while, take the models that want
    # another host most.
    while True:
        choice: tuple | None = None
        for h in planned:
            room = spare(h)
            if room is None:
                continue
            for model, d in work.items():
                if model in placed[h.key] or model not in h.models:
                    continue
                have = slots(model)
                if have and not d.worth_a_copy(have):
                    continue
                score = (have == 0, d.priority, d.waiting / max(have, 1), model in h.resident, room[0], h.slots)
                if choice is None or score > choice[0]:
                    choice = (score, h, model, room[1])
        if choice is None:
            break
        put(choice[1], choice[2], choice[3], "free" if choice[3] is None else "idle")

    # A context only grows while the model stays placed: a step that asks for less runs
    # under the larger one instead of forcing a reload.
    for spots in placed.values():
        for model, p in spots.items():
            asked = work[model].num_ctx if model in work else None
            if asked is not None and (p.num_ctx is None or asked > p.num_ctx):
                spots[model] = replace(p, num_ctx=asked)

    unhosted = {m: state.unhosted_since.get(m, now) for m in work if holders(m) == 0}
    return PlacementState(hosts=placed, unhosted_since=unhosted), switches


def _kept(host: Host, before: dict[str, Placed] | None, work: Mapping[str, Demand], now: float, wait_s: float,
          idle_release_s: float, switches: list[Switch]) -> dict[str, Placed]:
    """What a host keeps of its placement: its models with work, and those idle for less
    than idle_release_s. A host serve has not placed yet (it just started, or serve did)
    keeps what it has loaded: no load to keep it, and its turn counted as served."""
    if before is None:
        before = {m: Placed(since=now - wait_s) for m in sorted(host.resident) if m in host.models}
    kept: dict[str, Placed] = {}
    for model, p in before.items():
        if model not in host.models:
            continue
        if model in work:
            kept[model] = replace(p, idle_since=None)
        else:
            idle_since = p.idle_since if p.idle_since is not None else now
            if now - idle_since < idle_release_s:
                kept[model] = replace(p, idle_since=idle_since)
            else:
                switches.append(Switch(host.key, None, model, "released"))
    if len(kept) > host.capacity:  # the host now holds fewer (restarted with a lower --max-loaded)
        order = sorted(kept, key=lambda m: (-(work[m].work if m in work else 0), m))
        kept = {m: kept[m] for m in order[:host.capacity]}
    return kept


def models_of(state: PlacementState, key: HostKey) -> list[str]:
    return sorted(state.hosts.get(key, {}))
