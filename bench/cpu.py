"""CPU seconds by process group over a stretch of a benchmark: where the cores go.

    with CpuMeter({"serve": [pid], "gpu": [pid, pid]}) as cpu: ...
    cpu.seconds -> {"serve": 1.2, "gpu": 0.9, "rabbitmq": 0.7, "postgres": 0.8, "bench": 0.6}

Named groups are the given pids and their children; RabbitMQ (beam.smp and its port
programs) and Postgres (every `postgres` process, the backends included) are found by
name; `bench` is this process (the fake model servers run in it). On a machine that
shares its cores between all of them, the sum per AI call is what a step costs.
"""

from __future__ import annotations

import psutil

SERVICES = {"rabbitmq": ("beam.smp", "erl_child_setup", "epmd", "inet_gethost"), "postgres": ("postgres",)}


def _cpu(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0.0


class CpuMeter:
    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.seconds: dict[str, float] = {}
        self._before: dict[int, tuple[str, float]] = {}

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        snap: dict[int, tuple[str, float]] = {}
        for group, pids in self.groups.items():
            for pid in pids:
                try:
                    root = psutil.Process(pid)
                    procs = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for p in procs:
                    snap[p.pid] = (group, _cpu(p))
        me = psutil.Process()
        snap[me.pid] = ("bench", _cpu(me))
        for p in psutil.process_iter(["name"]):
            for group, names in SERVICES.items():
                if p.info["name"] in names and p.pid not in snap:
                    snap[p.pid] = (group, _cpu(p))
        return snap

    def __enter__(self) -> "CpuMeter":
        self._before = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        after = self._snapshot()
        seconds: dict[str, float] = {}
        for pid, (group, t) in after.items():
            # A process born during the stretch (a Postgres backend) counts from zero.
            seconds[group] = seconds.get(group, 0.0) + t - self._before.get(pid, (group, 0.0))[1]
        self.seconds = seconds
