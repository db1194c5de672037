"""Model residency (issue 15): model loads, makespan and slot utilisation with serve
placing models on hosts, against `gpu-worker --residency off` (every worker consumes
every model its server has; the server swaps models as calls come), in one run.

    .venv/bin/python -m bench.residency [--only 2x2 1x2 late fleet] [--records 300]
        [--load 3] [--latency 0.05] [--wait 20] [--late-records 160] [--late-latency 0.5]
        [--fleet] [--fleet-hosts 32] [--fleet-records N] [--fleet-off] [--logs DIR]

Each host is one fake Ollama (tests.model_server.ModelServer with `max_loaded`: at most
that many models resident, one load at a time taking `--load` s, LRU eviction of an
idle model) and one real `gpu-worker --max-loaded N --concurrency S` beside it; serve
(`orchestrator serve`) and the workers run as processes on a RabbitMQ vhost and a
scratch database of their own, fresh for every scenario and mode.

Scenarios (each residency on, then off):
- 2x2: four models, a workflow of four AI steps each on another model, 2 hosts holding
  2 models each, `--records` records.
- 1x2: the same on 1 host holding 2 models: the models must take turns.
- late: 1 host holding 2 models, a long batch on two models (`--late-records` records,
  A then B, calls of `--late-latency` s); `--late-after` s later a batch for a third
  model no host holds: how long its first call waited after its submit, against the
  bound WAVEFARM_RESIDENCY_WAIT_S (set to `--wait` here, shorter than serve's default
  60 for speed). One host, so that the third model has no second copy to take and must
  wait for its turn (with two hosts it takes a second copy's spot at once).
- fleet: `--fleet-hosts` hosts (32 fake servers in this process, 32 real gpu-worker
  processes, fewer if the memory does not hold them: said), 8 models, hosts holding 2,
  3 or 4 each in turn, calls of 2 s, an eight-step workflow (each step another model);
  `--fleet-records` records (default 300, or 2000 with `--fleet`). Residency on only,
  unless `--fleet-off` (it takes long: every host swaps).

Figures, per scenario and mode:
- loads per host: each fake server's `loads_total` over the batch (the loads of the
  first calls included);
- makespan: submit to the batch's last event;
- utilisation = busy model-call seconds / (makespan x hosts x slots), where the busy
  seconds are the calls the servers answered x the call latency (time spent waiting for
  a load is not busy);
- the no-swap ideal makespan = calls x latency / (hosts x slots) + load_s x
  ceil(models / hosts) (each host loads its share of the models once; loads on one host
  go one at a time, hosts load at the same time);
- placement switches: serve's "placement: ... takes" log lines (on only).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.common import Conditions, positive, scratch_database
from bench.cpu import CpuMeter
from orchestrator import batches, catalog
from orchestrator.db.store import Store
from orchestrator.workflow import load_text
from tests.distributed.farm import BIN, Farm, broker, postings
from tests.model_server import ModelServer

MODELS = [f"res{i}:1b" for i in range(8)]
SCENARIOS = ("2x2", "1x2", "late", "fleet")
MIB = 1024 * 1024


def workflow_text(name: str, models: list[str]) -> str:
    """One sequential AI step per model, each on the next model."""
    lines = [f"name: {name}", "defaults: {timeout: 600, retries: 2}", "steps:"]
    for i, model in enumerate(models, start=1):
        prev = "input.description" if i == 1 else f"steps.s{i - 1}.output"
        lines += [f"  - name: s{i}", f'    model: "{model}"',
                  f'    prompt: "Step {i} for {{{{ input.title }}}}: {{{{ {prev} }}}}"']
        if i < len(models):
            lines.append(f'    next: [{{when: "*", to: s{i + 1}}}]')
    return "\n".join(lines) + "\n"


@dataclass
class Result:
    scenario: str
    mode: str  # on | off
    hosts: int
    slots: int
    latency: float
    load_s: float
    models: int
    records: int
    makespan: float | None = None  # None: did not end within the timeout
    calls: int = 0
    expected: int = 0  # the calls the batches make once done
    loads: list[int] = field(default_factory=list)
    evictions: int = 0
    switches: int | None = None
    ok: bool = True
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def utilisation(self) -> float | None:
        if not self.makespan:
            return None
        return self.calls * self.latency / (self.makespan * self.hosts * self.slots)

    @property
    def ideal(self) -> float:
        calls = max(self.calls, self.expected)
        return calls * self.latency / (self.hosts * self.slots) + self.load_s * math.ceil(self.models / self.hosts)

    def line(self) -> str:
        span = (f"makespan {self.makespan:.1f} s" if self.makespan is not None else
                f"DID NOT END ({self.calls / self.extra['waited_s']:.1f} calls/s while it ran)"
                if self.extra.get("waited_s") else "DID NOT END")
        util = f", utilisation {self.utilisation:.3f}" if self.utilisation is not None else ""
        loads = "/".join(map(str, self.loads))
        sw = f", placement switches {self.switches}" if self.switches is not None else ""
        calls = f"{self.calls} calls" if self.makespan is not None else f"{self.calls} of {self.expected} calls answered"
        return (f"{self.scenario:<5} residency {self.mode:<3}: {self.records} records, {calls}, "
                f"{span} (no-swap ideal {self.ideal:.1f} s){util}; loads per host {loads} "
                f"(total {sum(self.loads)}), evictions {self.evictions}{sw}"
                f"{'' if self.ok else '  (NOT ALL OK: ' + self.note + ')'}")


# -- a farm of H hosts ------------------------------------------------------------------
class Rig:
    """serve, H fake servers and H GPU workers on a fresh database and vhost."""

    def __init__(self, tmp: Path, logs: Path, *, models: list[str], capacities: list[int], slots: int,
                 latency: float, load_s: float, residency: str, wait_s: float, timeout: float,
                 memory_check: bool = False) -> None:
        self.tmp, self.logs, self.models, self.slots = tmp, logs, models, slots
        self.capacities, self.latency, self.load_s = capacities, latency, load_s
        self.residency, self.wait_s, self.timeout = residency, wait_s, timeout
        self.memory_check = memory_check
        self.stall_s = max(40.0, 2 * wait_s)
        self.stalled = ""
        self.servers: list[ModelServer] = []
        self.names: list[str] = []
        self.worker_mib: float | None = None
        self.note = ""

    def __enter__(self) -> "Rig":
        self._db = scratch_database()
        self._broker = broker("amqp")
        db_url = self._db.__enter__()
        try:
            broker_url = self._broker.__enter__()
        except BaseException:
            self._db.__exit__(*sys.exc_info())
            raise
        self.logs.mkdir(parents=True, exist_ok=True)
        self.farm = Farm(db_url, broker_url, self.logs)
        try:
            self._start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self) -> None:
        farm = self.farm
        farm.start("serve", [str(BIN / "orchestrator"), "serve"],
                   farm.env(WAVEFARM_DATABASE_URL=farm.db_url, WAVEFARM_RESIDENCY_WAIT_S=f"{self.wait_s:g}"))
        hosts = len(self.capacities)
        if self.memory_check and hosts > 1:
            # One worker first: what it takes decides how many the memory holds.
            self._host(0)
            self._wait_ready(self.names)
            self.worker_mib = rss_mib(farm.procs[self.names[0]].pid)
            room = psutil.virtual_memory().available / MIB - 2048  # 2 GiB left for the rest
            fits = max(1, 1 + int(room // max(self.worker_mib, 1.0)))
            if fits < hosts:
                self.note = (f"memory holds {fits} gpu-workers of {self.worker_mib:.0f} MiB, not {hosts}: "
                             f"running {fits} hosts")
                self.capacities = self.capacities[:fits]
            for k in range(1, len(self.capacities)):
                self._host(k)
        else:
            for k in range(hosts):
                self._host(k)
        self._wait_ready(self.names)
        if self.memory_check:
            sizes = [rss_mib(farm.procs[n].pid) for n in self.names]
            self.worker_mib = sum(sizes) / len(sizes)
            self.extra_mem = (min(sizes), max(sizes))

    def _host(self, k: int) -> None:
        server = ModelServer(models=self.models, latency=self.latency, slots=self.slots, load_s=self.load_s,
                             max_loaded=self.capacities[k]).start()
        self.servers.append(server)
        name = f"gpu{k}"
        self.farm.gpu(name, server.url, concurrency=self.slots, max_loaded=self.capacities[k],
                      residency="off" if self.residency == "off" else None)
        self.names.append(name)

    def _wait_ready(self, names: list[str]) -> None:
        from tests.distributed.farm import READY

        def ready() -> bool:
            rows = self.farm.db.execute(f"SELECT name FROM workers WHERE {READY} AND NOT stopping").fetchall()
            return set(names) <= {r["name"] for r in rows}

        self.farm.wait_for(f"{len(names)} GPU workers to be ready", ready, timeout=60 + 5 * len(names), every=0.5)

    def __exit__(self, *exc: object) -> None:
        try:
            farm = getattr(self, "farm", None)
            if farm is not None:
                for name in ["serve", *self.names]:
                    if name in farm.procs:
                        farm.kill(name, signal.SIGTERM)
                farm.stop_all()
        finally:
            for s in self.servers:
                s.stop()
            self._broker.__exit__(*exc)
            self._db.__exit__(*exc)

    # -- work ---------------------------------------------------------------------------
    def reset(self) -> None:
        for s in self.servers:
            s.reset_stats()

    def submit(self, models: list[str], records: int, first: int = 0) -> tuple[int, float]:
        name = f"res_{uuid.uuid4().hex[:6]}"
        text = workflow_text(name, models)
        catalog.store(Store(self.farm.db), load_text(text), text)
        csv_path = postings(self.tmp / f"{name}.csv", records, first=first)
        t0 = time.time()
        return batches.submit(Store(self.farm.db), csv_path, name).batch_id, t0

    def running(self, batch_id: int) -> int:
        return self.farm.db.execute("SELECT count(*) AS n FROM runs WHERE batch_id = %s AND status = 'running'",
                                    (batch_id,)).fetchone()["n"]

    def wait_end(self, batch_ids: list[int], until: float) -> bool:
        """Whether the batches ended before `until`; gives up sooner when nothing moved
        (no attempt recorded, no call answered) for `stall_s`: the state is kept in
        self.stalled for the output."""
        moved, last = None, time.time()
        while time.time() < until:
            if all(self.running(b) == 0 for b in batch_ids):
                return True
            now = (self.farm.db.execute("SELECT count(*) AS n FROM attempts").fetchone()["n"],
                   sum(sum(s.served.values()) for s in self.servers))
            if now != moved:
                moved, last = now, time.time()
            elif time.time() - last > self.stall_s:
                self.stalled = self.stall_state(batch_ids, f"nothing moved for {self.stall_s:.0f} s")
                return False
            time.sleep(0.2)
        self.stalled = self.stall_state(batch_ids, f"not ended within {self.timeout:.0f} s")
        return False

    def stall_state(self, batch_ids: list[int], why: str) -> str:
        db = self.farm.db
        steps = db.execute("SELECT step, status, count(*) AS n FROM interactions WHERE batch_id = ANY(%s) "
                           "GROUP BY 1, 2 ORDER BY 1, 2", (batch_ids,)).fetchall()
        workers = db.execute("SELECT name, placed FROM workers ORDER BY name").fetchall()
        return (f"{why}; interactions "
                + ", ".join(f"{r['step']} {r['status']} {r['n']}" for r in steps)
                + "; workers' placement as they last said it: "
                + ", ".join(f"{w['name']} {w['placed']}" for w in workers[:8])
                + (" ..." if len(workers) > 8 else "")
                + "; serve's last placement log line: " + self.last_switch())

    def last_switch(self) -> str:
        path = self.logs / "serve.log"
        lines = [x for x in (path.read_text(errors="replace") if path.exists() else "").splitlines()
                 if "placement:" in x]
        return lines[-1].strip() if lines else "none"

    def end_of(self, batch_id: int) -> float:
        return self.farm.db.execute("SELECT extract(epoch FROM max(at))::float8 AS t FROM events WHERE batch_id = %s",
                                    (batch_id,)).fetchone()["t"]

    def completed(self, batch_id: int) -> tuple[int, int]:
        row = self.farm.db.execute(
            "SELECT count(*) FILTER (WHERE status = 'completed') AS ok, count(*) AS n FROM runs WHERE batch_id = %s",
            (batch_id,)).fetchone()
        return row["ok"], row["n"]

    def switches(self) -> int | None:
        if self.residency == "off":
            return None
        path = self.logs / "serve.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return len(re.findall(r"placement: \S+ takes ", text))

    def meter(self) -> CpuMeter:
        return CpuMeter({"serve": [self.farm.procs["serve"].pid],
                         "workers": [self.farm.procs[n].pid for n in self.names]})

    def result(self, scenario: str, records: int, batch_id: int, t0: float, ended: bool,
               models: int) -> Result:
        r = Result(scenario, self.residency, len(self.servers), self.slots, self.latency, self.load_s, models,
                   records)
        r.calls = sum(sum(s.served.values()) for s in self.servers)
        r.loads = [s.loads_total for s in self.servers]
        r.evictions = sum(sum(s.evictions.values()) for s in self.servers)
        r.switches = self.switches()
        done, n = self.completed(batch_id)
        if ended:
            r.makespan = self.end_of(batch_id) - t0
        else:
            r.extra["waited_s"] = time.time() - t0
        r.ok = ended and done == n == records
        if not r.ok:
            r.note = f"{done} of {records} records completed" + ("" if ended else f"; {self.stalled}")
        return r


def rss_mib(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / MIB
    except psutil.NoSuchProcess:
        return 0.0


# -- the scenarios ----------------------------------------------------------------------------
def workflow_run(args, tmp: Path, logs: Path, scenario: str, mode: str, hosts: int) -> Result:
    models = MODELS[:4]
    with Rig(tmp, logs / f"{scenario}-{mode}", models=models, capacities=[2] * hosts, slots=args.slots,
             latency=args.latency, load_s=args.load, residency=mode, wait_s=args.wait,
             timeout=args.timeout) as rig:
        rig.reset()
        batch_id, t0 = rig.submit(models, args.records)
        ended = rig.wait_end([batch_id], t0 + args.timeout)
        r = rig.result(scenario, args.records, batch_id, t0, ended, len(models))
        r.expected = args.records * len(models)
        return r


def late_run(args, tmp: Path, logs: Path, mode: str) -> Result:
    a, b, c = MODELS[:3]
    with Rig(tmp, logs / f"late-{mode}", models=[a, b, c], capacities=[2], slots=args.slots,
             latency=args.late_latency, load_s=args.load, residency=mode, wait_s=args.wait,
             timeout=args.timeout) as rig:
        rig.reset()
        long_id, t0 = rig.submit([a, b], args.late_records)
        time.sleep(args.late_after)
        late_id, t1 = rig.submit([c], args.late_batch, first=args.late_records)
        first = None
        until = t1 + args.timeout
        while time.time() < until:
            row = rig.farm.db.execute(
                "SELECT extract(epoch FROM min(started_at))::float8 AS s, extract(epoch FROM min(ended_at))::float8 AS e "
                "FROM attempts WHERE batch_id = %s", (late_id,)).fetchone()
            if row["s"] is not None:
                first = row
                break
            time.sleep(0.1)
        ended = rig.wait_end([long_id, late_id], max(until, t0 + args.timeout))
        r = rig.result("late", args.late_records, long_id, t0, ended, 2)
        r.calls = sum(sum(s.served.values()) for s in rig.servers)
        late_done, late_n = rig.completed(late_id)
        r.ok = r.ok and late_done == late_n == args.late_batch if ended else False
        r.extra.update(late_submitted=t1 - t0, late_end=(rig.end_of(late_id) - t1) if ended else None,
                       first_started=(first["s"] - t1) if first else None,
                       first_answered=(first["e"] - t1) if first and first["e"] is not None else None,
                       late_records=args.late_batch)
        r.models = 3
        r.expected = 2 * args.late_records + args.late_batch
        return r


def late_line(r: Result, wait: float) -> str:
    x = r.extra
    started = f"{x['first_started']:.1f} s" if x["first_started"] is not None else "never"
    answered = f"{x['first_answered']:.1f} s" if x["first_answered"] is not None else "-"
    late_end = f"{x['late_end']:.1f} s" if x["late_end"] is not None else "-"
    return (f"late  residency {r.mode:<3}: batch for a model no host holds submitted {x['late_submitted']:.1f} s "
            f"into the long batch; its first call started {started} after its submit (answered {answered}, "
            f"its {x['late_records']} records done {late_end} after submit); bound "
            f"WAVEFARM_RESIDENCY_WAIT_S = {wait:g} s")


def fleet_run(args, tmp: Path, logs: Path, mode: str) -> Result:
    models = MODELS
    capacities = [2 + k % 3 for k in range(args.fleet_hosts)]
    with Rig(tmp, logs / f"fleet-{mode}", models=models, capacities=capacities, slots=args.slots,
             latency=args.fleet_latency, load_s=args.load, residency=mode, wait_s=args.wait,
             timeout=args.fleet_timeout, memory_check=True) as rig:
        rig.reset()
        with rig.meter() as meter:
            batch_id, t0 = rig.submit(models, args.fleet_records)
            ended = rig.wait_end([batch_id], t0 + args.fleet_timeout)
        r = rig.result("fleet", args.fleet_records, batch_id, t0, ended, len(models))
        r.expected = args.fleet_records * len(models)
        r.extra.update(cpu=meter.seconds, worker_mib=rig.worker_mib, worker_mib_range=getattr(rig, "extra_mem", None),
                       asked_hosts=args.fleet_hosts, mem_note=rig.note,
                       capacities=rig.capacities, idle_hosts=sum(1 for s in rig.servers if not sum(s.served.values())))
        return r


def fleet_lines(r: Result) -> list[str]:
    x = r.extra
    cpu = x["cpu"]
    calls = max(r.calls, 1)
    held = {n: x["capacities"].count(n) for n in sorted(set(x["capacities"]))}
    out = [f"fleet residency {r.mode:<3}: {r.hosts} hosts (asked {x['asked_hosts']}; holding "
           + ", ".join(f"{n} models: {c}" for n, c in held.items())
           + f"), {x['idle_hosts']} hosts answered no call"]
    if x["mem_note"]:
        out.append(f"  {x['mem_note']}")
    lo, hi = x["worker_mib_range"] or (x["worker_mib"], x["worker_mib"])
    out.append(f"  gpu-worker memory: {x['worker_mib']:.0f} MiB RSS each on average ({lo:.0f}-{hi:.0f}), "
               f"{x['worker_mib'] * r.hosts / 1024:.1f} GiB for {r.hosts}")
    out.append("  CPU s per AI call: " + ", ".join(f"{g} {1000 * cpu.get(g, 0.0) / calls:.2f} ms"
                                                   for g in ("serve", "workers", "rabbitmq", "postgres", "bench"))
               + f"; serve {cpu.get('serve', 0.0):.1f} CPU s over the batch")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.residency", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=SCENARIOS, default=None, help="scenarios to run (default all)")
    p.add_argument("--records", type=positive, default=300, help="records of the 2x2 and 1x2 batches")
    p.add_argument("--slots", type=positive, default=4, help="slots per server = gpu-worker --concurrency")
    p.add_argument("--latency", type=float, default=0.05, help="call latency s of the 2x2 and 1x2 scenarios")
    p.add_argument("--load", type=float, default=3.0, help="seconds a model load takes")
    p.add_argument("--wait", type=float, default=20.0, help="WAVEFARM_RESIDENCY_WAIT_S given to serve")
    p.add_argument("--late-records", type=positive, default=160, help="records of the late scenario's long batch")
    p.add_argument("--late-batch", type=positive, default=20, help="records of the late batch")
    p.add_argument("--late-latency", type=float, default=0.5, help="call latency s of the late scenario")
    p.add_argument("--late-after", type=float, default=10.0, help="s into the long batch the late batch comes")
    p.add_argument("--fleet", action="store_true", help="the fleet scenario at full size (2000 records)")
    p.add_argument("--fleet-hosts", type=positive, default=32)
    p.add_argument("--fleet-records", type=positive, default=None, help="default 300, or 2000 with --fleet")
    p.add_argument("--fleet-latency", type=float, default=2.0)
    p.add_argument("--fleet-off", action="store_true", help="also run the fleet with residency off (long)")
    p.add_argument("--modes", nargs="+", choices=["on", "off"], default=["on", "off"])
    p.add_argument("--timeout", type=float, default=120.0,
                   help="s a batch of 2x2, 1x2 or late may take (residency off swaps: it may not end in time; "
                        "what it did by then is printed)")
    p.add_argument("--fleet-timeout", type=float, default=600.0)
    p.add_argument("--logs", type=Path, default=None, help="keep the processes' logs here")
    args = p.parse_args(argv)
    if args.fleet_records is None:
        args.fleet_records = 2000 if args.fleet else 300
    parts = args.only or (["fleet"] if args.fleet else list(SCENARIOS))
    conditions = Conditions("bench.residency", argv)
    results: list[Result] = []
    print("utilisation = busy model-call seconds (calls answered x latency) / (makespan x hosts x slots); "
          "no-swap ideal = calls x latency / (hosts x slots) + load_s x ceil(models / hosts)", flush=True)
    with tempfile.TemporaryDirectory(prefix="wavefarm-residency-") as tmp_name:
        tmp = Path(tmp_name)
        logs = args.logs or tmp / "logs"
        for scenario in parts:
            print(f"\n== {scenario}", flush=True)
            if scenario in ("2x2", "1x2"):
                hosts = 2 if scenario == "2x2" else 1
                print(f"{hosts} host(s) x {args.slots} slots holding 2 of 4 models, load {args.load:g} s, "
                      f"latency {args.latency * 1000:g} ms, a 4-step workflow (each step another model)", flush=True)
                for mode in args.modes:
                    r = workflow_run(args, tmp, logs, scenario, mode, hosts)
                    results.append(r)
                    print(r.line(), flush=True)
            elif scenario == "late":
                print(f"1 host x {args.slots} slots holding 2 of 3 models, load {args.load:g} s, latency "
                      f"{args.late_latency * 1000:g} ms; long batch {args.late_records} records on models A then B, "
                      f"late batch {args.late_batch} records on model C", flush=True)
                for mode in args.modes:
                    r = late_run(args, tmp, logs, mode)
                    results.append(r)
                    print(r.line(), flush=True)
                    print(late_line(r, args.wait), flush=True)
            else:
                modes = [m for m in args.modes if m == "on" or args.fleet_off]
                print(f"{args.fleet_hosts} hosts x {args.slots} slots, 8 models, hosts holding 2-4, load "
                      f"{args.load:g} s, latency {args.fleet_latency:g} s, an 8-step workflow; residency "
                      + ("on and off" if len(modes) == 2 else "on only (off left out: add --fleet-off)"), flush=True)
                for mode in modes:
                    r = fleet_run(args, tmp, logs, mode)
                    results.append(r)
                    print(r.line(), flush=True)
                    for line in fleet_lines(r):
                        print(line, flush=True)
    conditions.print(f"slots {args.slots}, load {args.load:g} s, WAVEFARM_RESIDENCY_WAIT_S {args.wait:g} s")
    # Residency off may not end in time (that is its figure); residency on must.
    return 0 if all(r.ok for r in results if r.mode == "on") else 1


if __name__ == "__main__":
    sys.exit(main())
