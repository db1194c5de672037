"""Placement decisions as pure functions: backlog and hosts in, assignments out."""

from __future__ import annotations

from orchestrator.placement import Demand, Host, PlacementState, plan

A, B, C, D = "a:latest", "b:latest", "c:latest", "d:latest"
ALL = frozenset({A, B, C, D})
WAIT_S, IDLE_S = 60.0, 300.0


def host(name: str, capacity: int | None = 2, models=ALL, resident=(), slots: int = 4) -> Host:
    return Host(key=(name, "127.0.0.1:11434"), capacity=capacity, models=frozenset(models),
                resident=frozenset(resident), slots=slots)


def demand(**waiting: int) -> dict[str, Demand]:
    return {f"{m}:latest": Demand(f"{m}:latest", waiting=n) for m, n in waiting.items()}


def step(demands, hosts, state=None, now=0.0):
    return plan(demands, hosts, state or PlacementState(), now=now, wait_s=WAIT_S, idle_release_s=IDLE_S)


def placed(state: PlacementState, name: str) -> set[str]:
    return set(state.hosts[(name, "127.0.0.1:11434")])


def test_every_model_with_work_gets_a_host_when_the_fleet_holds_them_all():
    hosts = [host("h1"), host("h2")]
    state, _ = step(demand(a=100, b=100, c=100, d=100), hosts)
    assert placed(state, "h1") | placed(state, "h2") == ALL
    assert len(placed(state, "h1")) == len(placed(state, "h2")) == 2
    assert not state.unhosted_since


def test_a_pipeline_settles_and_then_never_switches():
    """Work reaches the models one step after another, as in a 4-step workflow: the
    fleet fills up, makes room for the later steps, and from then on keeps every model
    where it is, whatever the backlog does."""
    hosts = [host("h1"), host("h2")]
    state, s1 = step(demand(a=300), hosts, now=0)
    assert placed(state, "h1") == placed(state, "h2") == {A}  # a long step spreads over the fleet
    state, s2 = step(demand(a=280, b=20), hosts, state, now=1)
    state, s3 = step(demand(a=250, b=40, c=10), hosts, state, now=2)
    state, s4 = step(demand(a=200, b=50, c=30, d=5), hosts, state, now=3)
    assert placed(state, "h1") | placed(state, "h2") == ALL
    loads = len(s1) + len(s2) + len(s3) + len(s4)
    assert loads <= 6  # 4 models, and second copies while the fleet had room
    for t in range(4, 200):
        state, later = step(demand(a=max(0, 200 - t), b=50, c=30, d=t % 7), hosts, state, now=t)
        assert later == [], f"switched at {t}s: {later}"


def test_a_host_that_already_holds_a_model_is_chosen_for_it():
    hosts = [host("h1", resident={A}), host("h2", resident={B})]
    state, _ = step(demand(a=3, b=3), hosts)
    hosts = [host("h1", resident={A}), host("h2", resident={B, C})]  # someone loaded c on h2
    state, switches = step(demand(a=3, b=3, c=3), hosts, state, now=1)
    assert placed(state, "h2") == {B, C}
    assert [(s.host[0], s.model) for s in switches] == [("h2", C)]


def test_a_starving_model_takes_a_turn_within_the_bound():
    """One host, two spots, a third model's work arrives: it waits at most the bound
    (half of it before it takes a spot), and the model that made room is the one with
    the least work."""
    hosts = [host("h1")]
    state, _ = step(demand(a=500, b=50), hosts, now=0)
    assert placed(state, "h1") == {A, B}
    t = 0.0
    while C not in placed(state, "h1"):
        t += 1
        state, switches = step(demand(a=500, b=50, c=20), hosts, state, now=t)
        assert t <= WAIT_S
    assert t >= WAIT_S / 2
    assert placed(state, "h1") == {A, C}  # b had less waiting than a
    assert [(s.model, s.evicted) for s in switches] == [(C, B)]


def test_models_take_turns_when_more_have_work_than_the_fleet_holds():
    hosts = [host("h1", capacity=1)]
    state = PlacementState()
    seen: dict[str, float] = {}
    for t in range(0, 400):
        state, _ = step(demand(a=1000, b=1000, c=1000), hosts, state, now=float(t))
        for m in placed(state, "h1"):
            seen.setdefault(m, t)
    assert set(seen) == {A, B, C}
    assert max(seen.values()) <= 2 * WAIT_S  # each waited about its bound, at most
    # and no model is thrown out before it had half the bound
    switches_total = 0
    state = PlacementState()
    for t in range(0, 400):
        state, switches = step(demand(a=1000, b=1000, c=1000), hosts, state, now=float(t))
        switches_total += len(switches)
    assert switches_total <= 400 / (WAIT_S / 2) + 1


def test_a_higher_priority_model_is_evicted_last():
    hosts = [host("h1")]
    demands = {A: Demand(A, waiting=5, priority=10), B: Demand(B, waiting=5, priority=0)}
    state, _ = step(demands, hosts, now=0)
    demands[C] = Demand(C, waiting=500)
    for t in range(1, int(WAIT_S) + 1):
        state, _ = step(demands, hosts, state, now=float(t))
    assert placed(state, "h1") == {A, C}


def test_an_idle_model_makes_room_at_once_and_is_released_after_a_while():
    hosts = [host("h1")]
    state, _ = step(demand(a=10, b=10), hosts, now=0)
    state, switches = step(demand(b=10, c=10), hosts, state, now=1)  # a ran out of work
    assert placed(state, "h1") == {B, C}
    assert [(s.model, s.evicted, s.reason) for s in switches] == [(C, A, "idle")]
    state, _ = step(demand(c=10), hosts, state, now=2)
    assert placed(state, "h1") == {B, C}  # idle, but nothing needs the spot
    state, switches = step(demand(c=10), hosts, state, now=2 + IDLE_S)
    assert placed(state, "h1") == {C}
    assert [(s.model, s.evicted, s.reason) for s in switches] == [(None, B, "released")]


def test_a_model_only_in_flight_still_needs_a_host():
    """Messages already in a queue that no host consumes would wait for their deadline."""
    hosts = [host("h1", capacity=1)]
    state, _ = step({A: Demand(A, in_flight=3)}, hosts)
    assert placed(state, "h1") == {A}


def test_hosts_serve_does_not_place_count_as_hosts_and_are_left_alone():
    hosts = [host("vllm", capacity=None, models={A}), host("h1", capacity=1)]
    state, _ = step(demand(a=3, b=3), hosts)
    assert ("vllm", "127.0.0.1:11434") not in state.hosts
    assert placed(state, "h1") == {B}


def test_a_model_no_host_has_is_left_waiting_not_forced():
    hosts = [host("h1", models={A})]
    state, switches = step(demand(a=3, d=3), hosts)
    assert placed(state, "h1") == {A}
    assert D in state.unhosted_since


def test_a_new_host_keeps_what_it_has_loaded():
    hosts = [host("h1", resident={B, C})]
    state, switches = step(demand(b=5, c=5), hosts)
    assert placed(state, "h1") == {B, C}
    assert switches == []


def test_the_context_is_the_largest_asked_and_only_grows_while_placed():
    hosts = [host("h1", capacity=1)]
    state, _ = step({A: Demand(A, waiting=5, num_ctx=8192)}, hosts, now=0)
    assert state.hosts[("h1", "127.0.0.1:11434")][A].num_ctx == 8192
    state, _ = step({A: Demand(A, waiting=5, num_ctx=2048)}, hosts, state, now=1)
    assert state.hosts[("h1", "127.0.0.1:11434")][A].num_ctx == 8192
    state, _ = step({A: Demand(A, waiting=5, num_ctx=16384)}, hosts, state, now=2)
    assert state.hosts[("h1", "127.0.0.1:11434")][A].num_ctx == 16384


def test_a_host_that_now_holds_fewer_keeps_the_models_with_most_work():
    hosts = [host("h1", capacity=3)]
    state, _ = step(demand(a=5, b=50, c=500), hosts, now=0)
    assert placed(state, "h1") == {A, B, C}
    state, _ = step(demand(a=5, b=50, c=500), [host("h1", capacity=1)], state, now=1)
    assert placed(state, "h1") == {C}


def test_a_fleet_at_scale_covers_every_model_and_spreads_by_backlog():
    models = [f"m{i}:latest" for i in range(8)]
    hosts = [host(f"h{i}", capacity=2 + i % 3, models=models, slots=2) for i in range(32)]
    demands = {m: Demand(m, waiting=100 * (i + 1)) for i, m in enumerate(models)}
    state, switches = step(demands, hosts)
    copies = {m: sum(1 for spots in state.hosts.values() if m in spots) for m in models}
    assert all(copies[m] >= 1 for m in models)
    assert copies[models[-1]] > copies[models[0]]
    state, again = step(demands, hosts, state, now=1)
    assert again == []


def test_a_second_copy_only_when_the_backlog_outlasts_its_loads():
    """Once calls and loads are known: 300 calls of 50 ms on 4 slots drain in 3.75 s,
    less than two loads of 3 s: no second host loads it. Of 2 s calls, they would take
    150 s: it spreads."""
    hosts = [host("h1"), host("h2")]
    quick = {A: Demand(A, waiting=300, call_s=0.05, load_s=3.0)}
    state, _ = step(quick, hosts)
    assert sum(A in spots for spots in state.hosts.values()) == 1
    slow = {A: Demand(A, waiting=300, call_s=2.0, load_s=3.0)}
    state, _ = step(slow, hosts)
    assert sum(A in spots for spots in state.hosts.values()) == 2


def test_models_out_of_work_give_their_spots_to_a_backlog_after_a_grace():
    """The fleet is full of models whose step ended; a later step's model, with work for
    many hosts, takes their spots (not only its first host's) once they have been out of
    work a few seconds."""
    hosts = [host(f"h{i}", capacity=1) for i in range(4)]
    state, _ = step({A: Demand(A, waiting=400, call_s=2.0, load_s=3.0)}, hosts, now=0)
    assert sum(A in placed(state, f"h{i}") for i in range(4)) == 4
    later = {B: Demand(B, waiting=400, call_s=2.0, load_s=3.0)}
    state, _ = step(later, hosts, state, now=10)  # a is out of work: b gets one host at once
    assert sum(B in placed(state, f"h{i}") for i in range(4)) == 1
    state, _ = step(later, hosts, state, now=12)
    assert sum(B in placed(state, f"h{i}") for i in range(4)) == 1  # the others are in their grace
    state, switches = step(later, hosts, state, now=16)
    assert sum(B in placed(state, f"h{i}") for i in range(4)) == 4
    assert {s.reason for s in switches} == {"idle"}


def test_status_shows_a_host_holding_what_placement_takes_for_it():
    """Two workers on one server that disagree on --max-loaded: placement takes the least
    (orchestrator/residency.py hosts_of), and so does `status`."""
    from datetime import datetime, timezone

    from orchestrator.db.rows import WorkerRow
    from orchestrator.overview import hosts as shown

    now = datetime.now(timezone.utc)

    def worker(name: str, max_loaded: int) -> WorkerRow:
        return WorkerRow(name=name, kind="ai", queues=["ai.a-latest"], concurrency=4, server="127.0.0.1:11434",
                         models=[A], circuit="closed", stopping=False, first_seen=now, last_seen=now, live=True,
                         machine="box", max_loaded=max_loaded, resident=[{"model": A}], placed=[A])

    (host_shown,) = shown([worker("gpu-2@box:11434", 1000), worker("gpu@box:11434", 2)])
    assert host_shown["max_loaded"] == 2 and host_shown["workers"] == ["gpu-2@box:11434", "gpu@box:11434"]
