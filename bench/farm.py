"""wavefarm against a plain Celery chain, on the same broker, in one run.

    .venv/bin/python -m bench.farm [--records 200] [--hosts 2] [--slots 4] [--latency 0.05]
                                   [--steps 4] [--chain-steps 40] [--broker amqp|redis]
                                   [--only farm|celery|chain40 ...] [--profile DIR]

K fake GPU hosts (tests.model_server.ModelServer, `latency=L, slots=S`, one model that
every host serves) and, on the same broker (a fresh RabbitMQ vhost or Redis db):

- wavefarm: `orchestrator serve` and one `gpu-worker --concurrency S` per host
  (tests/distributed/farm.py's Farm), a workflow of `--steps` sequential AI steps,
  N records submitted as one batch; wall time from submit to the batch's last event.
- the baseline (bench/celery_baseline.py): one plain Celery worker per host,
  `--pool threads --concurrency S`, each calling its own host; all workers consume one
  queue, as wavefarm's GPU workers all consume the model's one queue `ai.<model>`.
  N chains of `--steps` tasks published at once; wall time from the first publish to
  the last chain's last task.

Measured: throughput at L (records/s, AI calls/s, utilisation = calls/s / (K*S/L)),
throughput at L=0, and one record through a `--chain-steps` sequential chain at L=0
(per-step overhead = wall / steps). Each system gets a small warm-up batch first.
Each wavefarm batch also says the model loads the fake servers made during it (their
`loads_total`): with one model that every host serves, one per host at most, 0 once warm.

`--only` picks parts: `farm` (wavefarm throughput), `celery` (baseline throughput),
`chain40` (the long chain, both systems); repeatable; default all.
`--profile DIR` adds one more wavefarm batch (`--profile-batch thr|thr0|chain`, default
thr) with py-spy attached to serve and to every GPU worker: raw collapsed stacks in DIR
(`py-spy record --idle --threads --format raw`), and a summary of where serve's loop and
the workers' threads spend their wall-clock time; with `--profile-gil`, only samples of
the thread holding the GIL (`py-spy --gil`: where the Python CPU goes, idle left out).
The headline figures come from the unprofiled batches. Every batch also reports the
CPU time per AI call of each process group (bench/cpu.py): serve, the workers,
RabbitMQ, Postgres, and this process (the fake model servers). A batch that does not end within `--timeout` s gets its
interactions by status and a `py-spy dump` of every process printed; `--logs DIR`
keeps the processes' logs.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.common import Conditions, scratch_database
from bench.cpu import CpuMeter
from orchestrator import batches, catalog
from orchestrator.db.store import Store
from orchestrator.workflow import load_text
from tests.distributed.farm import BIN, Farm, broker, postings
from tests.model_server import ModelServer

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench:1b"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BATCH_TIMEOUT = 300.0  # --timeout


# -- workloads ------------------------------------------------------------------------
def workflow_text(name: str, steps: int) -> str:
    """`steps` sequential AI steps; prompts match bench.celery_baseline.prompt."""
    lines = [f"name: {name}", "defaults: {timeout: 60, retries: 2}", "steps:"]
    for i in range(1, steps + 1):
        prev = "input.description" if i == 1 else f"steps.s{i - 1}.output"
        lines += [f"  - name: s{i}", f'    model: "{MODEL}"',
                  f'    prompt: "Step {i} for {{{{ input.title }}}}: {{{{ {prev} }}}}"']
        if i < steps:
            lines.append(f'    next: [{{when: "*", to: s{i + 1}}}]')
    return "\n".join(lines) + "\n"


@dataclass
class Measure:
    system: str
    label: str
    records: int
    steps: int
    latency: float
    wall_s: float
    calls: int
    capacity: int  # K*S
    ok: bool = True
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        return self.records / self.wall_s

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.wall_s

    @property
    def utilisation(self) -> float | None:
        return None if self.latency <= 0 else self.calls_per_s / (self.capacity / self.latency)

    @property
    def idle_per_call_ms(self) -> float:
        """Slot time per call not spent inside the model: K*S*wall/calls - L."""
        return 1000 * (self.capacity * self.wall_s / self.calls - self.latency)

    @property
    def per_step_ms(self) -> float:
        return 1000 * self.wall_s / self.steps

    def line(self) -> str:
        u = f", utilisation {self.utilisation:.3f}" if self.utilisation is not None else ""
        loaded = f", model loads {self.extra['loads']}" if "loads" in self.extra else ""
        return (f"{self.system:>8} {self.label:<9} {self.records} x {self.steps} steps, L={self.latency * 1000:g} ms: "
                f"{self.wall_s:.2f} s, {self.records_per_s:.1f} records/s, {self.calls_per_s:.1f} calls/s{u}{loaded}"
                f"{'' if self.ok else '  (NOT ALL OK: ' + self.note + ')'}")


def served(servers: list[ModelServer]) -> int:
    return sum(sum(s.served.values()) for s in servers)


def set_latency(servers: list[ModelServer], latency: float) -> None:
    for s in servers:
        s.latency = latency
        s.reset_stats()


# -- wavefarm ---------------------------------------------------------------------------
def farm_batch(farm: Farm, servers: list[ModelServer], tmp: Path, *, tag: str, records: int, steps: int,
               latency: float, capacity: int, timeout: float | None = None) -> Measure:
    name = f"bench_{tag}_{uuid.uuid4().hex[:6]}"
    text = workflow_text(name, steps)
    conn = farm.db
    catalog.store(Store(conn), load_text(text), text)
    csv_path = postings(tmp / f"{name}.csv", records)
    set_latency(servers, latency)
    with cpu_meter(farm) as meter:
        t0 = time.time()
        batch_id = batches.submit(Store(conn), csv_path, name).batch_id
        submit_s = time.time() - t0
        poll = 0.02 if records * steps <= 100 else 0.1

        def ended() -> bool:
            row = conn.execute("SELECT count(*) FILTER (WHERE status = 'running') AS running FROM runs "
                               "WHERE batch_id = %s", (batch_id,)).fetchone()
            return row["running"] == 0

        try:
            farm.wait_for(f"wavefarm batch {name}", ended, timeout=timeout or BATCH_TIMEOUT, every=poll)
        except AssertionError:
            stalled(farm, batch_id)
            raise
    end = conn.execute("SELECT extract(epoch FROM max(at))::float8 AS t FROM events WHERE batch_id = %s",
                       (batch_id,)).fetchone()["t"]
    runs = {r["status"]: r["n"] for r in conn.execute(
        "SELECT status, count(*) AS n FROM runs WHERE batch_id = %s GROUP BY status", (batch_id,))}
    # Where a step's time goes, from the interactions' own timestamps (now() of the
    # transaction that made each change): pending -> dispatched, dispatched -> result
    # applied, and the model call as the GPU worker timed it.
    b = conn.execute(
        """SELECT count(*) AS n,
                  avg(extract(epoch FROM c.dispatched_at - coalesce(p.ended_at, c.created_at)))::float8 AS pending_s,
                  avg(extract(epoch FROM c.ended_at - c.dispatched_at))::float8 AS in_flight_s,
                  avg((SELECT (a.metrics->>'wall_s')::float8 FROM attempts a
                       WHERE a.interaction_id = c.id AND a.attempt = c.attempt AND a.outcome = 'completed'))::float8
                      AS model_s,
                  sum(c.attempt - 1)::int AS retries
           FROM interactions c LEFT JOIN interactions p ON p.id = c.parent_ids[1]
           WHERE c.batch_id = %s AND c.status = 'completed'""", (batch_id,)).fetchone()
    # now() is the transaction's start: interactions sharing ended_at were applied in one
    # transaction, those sharing dispatched_at were published by one dispatch.
    tx = conn.execute(
        """SELECT (SELECT extract(epoch FROM min(dispatched_at))::float8 FROM interactions WHERE batch_id = %(b)s)
                      AS first_dispatch,
                  (SELECT count(DISTINCT ended_at) FROM interactions WHERE batch_id = %(b)s) AS applies,
                  (SELECT count(DISTINCT dispatched_at) FROM interactions WHERE batch_id = %(b)s) AS dispatches""",
        {"b": batch_id}).fetchone()
    calls = served(servers)
    ok = runs.get("completed", 0) == records and b["n"] == records * steps
    return Measure("wavefarm", tag, records, steps, latency, end - t0, calls, capacity, ok=ok,
                   note=f"runs {runs}, interactions completed {b['n']}, model calls {calls}",
                   extra={"submit_s": submit_s, "pending_ms": 1000 * b["pending_s"],
                          "in_flight_ms": 1000 * b["in_flight_s"], "model_ms": 1000 * b["model_s"],
                          "retries": b["retries"], "batch_id": batch_id,
                          "first_dispatch_ms": 1000 * (tx["first_dispatch"] - t0),
                          "per_apply": b["n"] / max(1, tx["applies"]),
                          "per_dispatch": b["n"] / max(1, tx["dispatches"]),
                          "max_concurrent": [s.max_concurrent[MODEL] for s in servers],
                          "served": [sum(s.served.values()) for s in servers], "cpu": meter.seconds,
                          "loads": loads(servers)})


def loads(servers: list[ModelServer]) -> int:
    """Model loads the fake servers made since their stats were reset (set_latency): one
    model that every host serves never needs a swap, so one per host at most, 0 once warm."""
    return sum(s.loads_total for s in servers)


def cpu_meter(farm: Farm) -> CpuMeter:
    """serve, the workers (GPU workers or the baseline's), and by name RabbitMQ, Postgres, this process."""
    groups: dict[str, list[int]] = {}
    for name, proc in farm.procs.items():
        groups.setdefault("serve" if name.startswith("serve") else "workers", []).append(proc.pid)
    return CpuMeter(groups)


def stalled(farm: Farm, batch_id: int | None) -> None:
    """A batch that did not end: say where it stands and where every process is stuck."""
    if batch_id is not None:
        rows = farm.db.execute("SELECT step, status, count(*) AS n FROM interactions WHERE batch_id = %s "
                               "GROUP BY step, status ORDER BY step, status", (batch_id,)).fetchall()
        print("stalled batch, interactions:", [(r["step"], r["status"], r["n"]) for r in rows], file=sys.stderr)
    spy = BIN / "py-spy"
    for name, proc in farm.procs.items():
        if spy.exists() and proc.poll() is None:
            dump = subprocess.run([str(spy), "dump", "--pid", str(proc.pid)], capture_output=True, text=True)
            (farm.logs / f"{name}.stacks.txt").write_text(dump.stdout + dump.stderr)
            print(f"--- {name} stacks (py-spy dump)\n{dump.stdout[-4000:]}", file=sys.stderr)


def start_farm(farm: Farm, servers: list[ModelServer], slots: int) -> list[str]:
    farm.serve()
    names = [f"gpu{k}" for k in range(len(servers))]
    for name, server in zip(names, servers):
        farm.gpu(name, server.url, concurrency=slots)
    farm.wait_workers(*names)
    return names


def stop(farm: Farm, names: list[str]) -> None:
    for name in names:
        if name in farm.procs:
            farm.kill(name, signal.SIGTERM)


# -- the baseline -------------------------------------------------------------------------
def start_celery(farm: Farm, servers: list[ModelServer], slots: int, tmp: Path) -> list[str]:
    names = []
    for k, server in enumerate(servers):
        name = f"base{k}"
        ready = tmp / f"{name}.ready"
        ready.unlink(missing_ok=True)
        env = farm.env(BENCH_BROKER_URL=farm.broker_url, BENCH_MODEL_URL=server.url, BENCH_READY_FILE=str(ready),
                       BENCH_REDIS_URL=REDIS_URL, PYTHONPATH=str(ROOT))
        farm.start(name, [str(BIN / "celery"), "-A", "bench.celery_baseline", "worker", "--pool", "threads",
                          "--concurrency", str(slots), "-Q", "bench.baseline", "-n", f"{name}@%h",
                          "--without-mingle", "--without-gossip", "--loglevel", "WARNING"], env)
        names.append(name)
    farm.wait_for("baseline workers", lambda: all((tmp / f"{n}.ready").exists() for n in names), timeout=60)
    return names


def celery_batch(farm: Farm, servers: list[ModelServer], *, tag: str, records: int, steps: int, latency: float,
                 capacity: int, timeout: float | None = None) -> Measure:
    from bench import celery_baseline as cb

    cb.app.conf.broker_url = farm.broker_url
    r = redis.Redis.from_url(REDIS_URL)
    key = f"wavefarm-bench:{uuid.uuid4().hex}"
    set_latency(servers, latency)
    chains = [cb.record_chain(f"Role {i}", f"Posting {i}: SQL, Python, care for detail.", steps, MODEL, key)
              for i in range(records)]
    with cpu_meter(farm) as meter:
        t0 = time.time()
        with cb.app.producer_or_acquire() as producer:
            for c in chains:
                c.apply_async(producer=producer)
        publish_s = time.time() - t0
        poll = 0.02 if records * steps <= 100 else 0.1
        try:
            farm.wait_for(f"celery chains {tag}", lambda: r.llen(key) >= records, timeout=timeout or BATCH_TIMEOUT,
                          every=poll)
            end = max(float(t) for t in r.lrange(key, 0, -1))
        finally:
            r.delete(key)
    calls = served(servers)
    return Measure("celery", tag, records, steps, latency, end - t0, calls, capacity, ok=calls == records * steps,
                   note=f"model calls {calls}",
                   extra={"submit_s": publish_s, "max_concurrent": [s.max_concurrent[MODEL] for s in servers],
                          "served": [sum(s.served.values()) for s in servers], "cpu": meter.seconds})


def median_of(n: int, measure) -> Measure:
    """The median of `n` runs of `measure` by wall time, with the range of all of them."""
    runs = sorted((measure() for _ in range(max(1, n))), key=lambda m: m.wall_s)
    m = runs[len(runs) // 2]
    m.ok = all(r.ok for r in runs)
    m.extra["per_step_range"] = (runs[0].per_step_ms, runs[-1].per_step_ms, len(runs))
    return m


# -- profiling ------------------------------------------------------------------------------
def profile_start(farm: Farm, names: list[str], out: Path, *, gil: bool = False) -> list[tuple[str, subprocess.Popen, Path]]:
    """`gil`: sample only the thread holding the GIL (where Python CPU goes), not wall clock."""
    out.mkdir(parents=True, exist_ok=True)
    sampling = ["--gil"] if gil else ["--idle"]
    spies = []
    for name in names:
        path = out / f"{name}.txt"
        proc = subprocess.Popen([str(BIN / "py-spy"), "record", "--pid", str(farm.procs[name].pid), "--format", "raw",
                                 "--rate", "200", *sampling, "--threads", "-o", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spies.append((name, proc, path))
    time.sleep(1.0)  # py-spy attaches
    return spies


def profile_stop(spies: list[tuple[str, subprocess.Popen, Path]]) -> None:
    for _, proc, _ in spies:
        proc.send_signal(signal.SIGINT)
    for _, proc, _ in spies:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


DB_WAIT = {"Connection.wait", "BaseCursor._send_query_prepared", "BaseConnection._exec_command"}
BROKER_IO = {"TCPTransport._read", "_AbstractTransport.write", "_epoll.poll", "SocketIO.readinto",
             "Connection.blocking_read"}


def _samples(path: Path):
    """(thread name, [function names, outermost first], count) from py-spy's raw output."""
    for raw in path.read_text(errors="replace").splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].partition(": ")[2] or frames[0]
        yield thread, [f.split(" (")[0] for f in frames[1:]], int(count)


def _pct(counter: Counter, total: int, top: int = 12) -> list[str]:
    return [f"      {100 * n / max(1, total):5.1f}%  {key}" for key, n in counter.most_common(top)]


def summarise_serve(path: Path) -> str:
    """serve's loop, wall-clock (idle included): phase x (waiting on Postgres | on the broker | CPU)."""
    phases: Counter = Counter()
    publish: Counter = Counter()
    hot: Counter = Counter()
    total = 0
    for thread, names, n in _samples(path):
        if thread != "MainThread" or "Service.turn" not in names:
            continue
        total += n
        leaf = names[-1]
        kind = "waiting on Postgres" if leaf in DB_WAIT else "waiting on the broker" if leaf in BROKER_IO else "CPU"
        phase = next((p for p in ("Inbox.collect", "Inbox.ack", "record", "apply_in",
                                  "Dispatcher.dispatch_in", "sweep") if p in names), "other")
        phases[f"{phase:<24} {kind}"] += n
        if "Celery.send_task" in names:
            what = "task-sent event" if "EventDispatcher.publish" in names else \
                "waiting for the publisher confirm" if kind != "CPU" else "send_task CPU"
            publish[what] += n
        if kind == "CPU" or kind == "waiting on Postgres":
            # the innermost orchestrator frame: which of our lines asked for the time
            ours = [x for x in names if x in ("apply_in", "_apply_set", "_lock_targets", "_views", "_store",
                                               "_ignore", "_end_runs") or
                    x.startswith(("Dispatcher", "RunView", "Decisions", "on_completed", "run_ending",
                                  "transition_many", "claim_for_dispatch", "build_interaction", "_render"))]
            hot[f"{(ours[-1] if ours else '?'):<28} {kind}"] += n
    out = [f"  serve main loop: {total} samples (wall clock, idle included)"]
    out += _pct(phases, total)
    out.append("    of which publishing tasks (Dispatcher._publish -> send_task):")
    out += _pct(publish, total)
    out.append("    innermost orchestrator function, Postgres waits and CPU:")
    out += _pct(hot, total, 14)
    return "\n".join(out)


def summarise_gpu(path: Path) -> str:
    """A GPU worker: what its pool threads do inside a task, how busy they are, and its event loop."""
    task: Counter = Counter()
    loop: Counter = Counter()
    pool_total = loop_total = 0
    for thread, names, n in _samples(path):
        if thread == "MainThread":
            loop_total += n
            leaf = names[-1]
            loop["idle (epoll)" if leaf == "_epoll.poll" else
                 "publishing task events" if "EventDispatcher.flush" in names or "EventDispatcher.send" in names else
                 "acking / receiving messages" if leaf in BROKER_IO else "other CPU"] += n
            continue
        if not thread.startswith("ThreadPoolExecutor"):
            continue
        pool_total += n
        if "GpuWorker._task" not in names:
            task["no task (idle pool thread)"] += n
        elif "HttpBackend.complete" in names:
            task["model call: waiting for the answer" if names[-1] in BROKER_IO
                 else "model call: requests/JSON CPU"] += n
        elif "publish_result" in names:
            task["publish_result: broker confirm" if names[-1] in BROKER_IO else "publish_result: CPU"] += n
        else:
            task["task: other (validation, logging, metrics)"] += n
    out = [f"  {path.stem}: pool threads {pool_total} samples (wall clock, idle included)"]
    out += _pct(task, pool_total)
    out.append(f"    event loop (MainThread) {loop_total} samples:")
    out += _pct(loop, loop_total)
    return "\n".join(out)


def summarise_profile(path: Path) -> str:
    if not path.exists():
        return f"  {path.name}: no profile written"
    return summarise_serve(path) if path.stem.startswith("serve") else summarise_gpu(path)


# -- the run ---------------------------------------------------------------------------------
CPU_GROUPS = ("serve", "workers", "rabbitmq", "postgres", "bench")
# CPU time per AI call by process group (bench.cpu): "bench" is this process, where the
# fake model servers answer; on two shared cores the total is what bounds throughput.
CPU_ROWS = [(f"CPU ms per call: {g}", lambda m, g=g: f"{1000 * m.extra['cpu'].get(g, 0.0) / m.calls:.2f}")
            for g in CPU_GROUPS]
CPU_ROWS.append(("CPU ms per call: total", lambda m: f"{1000 * sum(m.extra['cpu'].values()) / m.calls:.2f}"))


def table(results: list[Measure]) -> str:
    def get(system: str, label: str) -> Measure | None:
        return next((m for m in results if m.system == system and m.label == label), None)

    def cell(m: Measure | None, f) -> str:
        return "-" if m is None else f(m)

    rows = [
        ("throughput at L", "thr", [
            ("wall s (submit -> end)", lambda m: f"{m.wall_s:.2f}"),
            ("  of which submit/publish s", lambda m: f"{m.extra['submit_s']:.2f}"),
            ("records/s", lambda m: f"{m.records_per_s:.1f}"),
            ("AI calls/s", lambda m: f"{m.calls_per_s:.1f}"),
            ("utilisation", lambda m: f"{m.utilisation:.3f}"),
            ("slot idle per call ms", lambda m: f"{m.idle_per_call_ms:.1f}"),
            ("calls per host", lambda m: "/".join(map(str, m.extra["served"]))),
            ("max concurrent per host", lambda m: "/".join(map(str, m.extra["max_concurrent"]))),
            ("model loads per batch", lambda m: str(m.extra["loads"]) if "loads" in m.extra else "-"),
        ]),
        ("throughput at L=0", "thr0", [
            ("wall s", lambda m: f"{m.wall_s:.2f}"),
            ("records/s", lambda m: f"{m.records_per_s:.1f}"),
            ("AI calls/s", lambda m: f"{m.calls_per_s:.1f}"),
            ("calls per host", lambda m: "/".join(map(str, m.extra["served"]))),
            ("model loads per batch", lambda m: str(m.extra["loads"]) if "loads" in m.extra else "-"),
            *CPU_ROWS,
        ]),
        ("sequential chain at L=0", "chain", [
            ("steps x records", lambda m: f"{m.steps} x {m.records}"),
            ("wall s", lambda m: f"{m.wall_s:.3f}"),
            ("per-step overhead ms (median)", lambda m: f"{m.per_step_ms:.1f}"),
            ("  range over the repeats", lambda m: "{:.1f}-{:.1f} ({})".format(*m.extra["per_step_range"])),
            # serve learns of a new batch from Postgres's NOTIFY (within its 10 ms idle
            # wait): what a step costs once the run is under way.
            ("  without the wait for 1st dispatch", lambda m: (
                f"{(1000 * m.wall_s - m.extra['first_dispatch_ms']) / m.steps:.1f}"
                if "first_dispatch_ms" in m.extra else "-")),
        ]),
    ]
    lines = [f"{'':<34}{'wavefarm':>12}{'celery chain':>14}"]
    for title, label, fields in rows:
        w, c = get("wavefarm", label), get("celery", label)
        if w is None and c is None:
            continue
        lat = (w or c).latency
        lines.append(f"{title} ({lat * 1000:g} ms)" if label == "thr" else title)
        for name, f in fields:
            lines.append(f"  {name:<32}{cell(w, f):>12}{cell(c, f):>14}")
    breakdown = [m for m in results if m.system == "wavefarm" and m.label in ("thr", "thr0", "chain")]
    if breakdown:
        lines.append("wavefarm per interaction, mean ms (pending->dispatched / dispatched->applied / model call):")
        for m in breakdown:
            lines.append(f"  {m.label:<6} {m.extra['pending_ms']:8.1f} / {m.extra['in_flight_ms']:8.1f} / "
                         f"{m.extra['model_ms']:8.1f}   (in flight minus model: "
                         f"{m.extra['in_flight_ms'] - m.extra['model_ms']:.1f} ms; retries {m.extra['retries']}; "
                         f"{m.extra['per_apply']:.1f} results per apply transaction, "
                         f"{m.extra['per_dispatch']:.1f} messages per dispatch; first dispatch "
                         f"{m.extra['first_dispatch_ms']:.0f} ms after submit)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.farm", description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200)
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=4, help="sequential AI steps of the throughput workflow")
    p.add_argument("--chain-steps", type=int, default=40)
    p.add_argument("--chain-records", type=int, default=1)
    p.add_argument("--chain-repeats", type=int, default=5,
                   help="the chain is short (under half a second): run it this often, report the median")
    p.add_argument("--broker", choices=["amqp", "redis"], default="amqp")
    p.add_argument("--only", action="append", choices=["farm", "celery", "chain40"])
    p.add_argument("--profile", type=Path, default=None, help="directory for py-spy profiles of an extra batch")
    p.add_argument("--profile-batch", choices=["thr", "thr0", "chain"], default="thr",
                   help="which wavefarm batch to repeat under py-spy")
    p.add_argument("--profile-gil", action="store_true",
                   help="py-spy samples only the thread holding the GIL (CPU) instead of wall clock")
    p.add_argument("--logs", type=Path, default=None,
                   help="keep the processes' logs here (default: a temporary directory)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one batch may take before the bench gives up")
    args = p.parse_args(argv)
    if args.profile and not (BIN / "py-spy").exists():
        p.error(f"--profile needs py-spy beside this Python ({BIN}): {BIN / 'pip'} install py-spy")
    global BATCH_TIMEOUT
    BATCH_TIMEOUT = args.timeout
    parts = set(args.only or ["farm", "celery", "chain40"])
    conditions = Conditions("bench.farm", argv)
    capacity = args.hosts * args.slots
    warm = max(8, capacity * 2)
    results: list[Measure] = []
    profile_text = ""

    def report(m: Measure) -> None:
        results.append(m)
        print(m.line(), flush=True)

    with tempfile.TemporaryDirectory(prefix="wavefarm-bench-") as tmp_name, scratch_database() as db_url, \
            broker(args.broker) as broker_url:
        tmp = Path(tmp_name)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
        logs = args.logs or tmp
        servers = [ModelServer(models=[MODEL], latency=args.latency, slots=args.slots).start()
                   for _ in range(args.hosts)]
        farm = Farm(db_url, broker_url, logs)
        try:
            if parts & {"farm", "chain40"} or args.profile:
                names = start_farm(farm, servers, args.slots)
                names.append("serve")
                farm_batch(farm, servers, tmp, tag="warm", records=warm, steps=args.steps, latency=args.latency,
                           capacity=capacity)
                if "farm" in parts:
                    report(farm_batch(farm, servers, tmp, tag="thr", records=args.records, steps=args.steps,
                                      latency=args.latency, capacity=capacity))
                    report(farm_batch(farm, servers, tmp, tag="thr0", records=args.records, steps=args.steps,
                                      latency=0.0, capacity=capacity))
                if "chain40" in parts:
                    report(median_of(args.chain_repeats, lambda: farm_batch(
                        farm, servers, tmp, tag="chain", records=args.chain_records, steps=args.chain_steps,
                        latency=0.0, capacity=capacity)))
                if args.profile:
                    spies = profile_start(farm, ["serve", *[n for n in names if n != "serve"]], args.profile,
                                          gil=args.profile_gil)
                    try:
                        shape = {"thr": (args.records, args.steps, args.latency),
                                 "thr0": (args.records, args.steps, 0.0),
                                 "chain": (args.chain_records, args.chain_steps, 0.0)}[args.profile_batch]
                        m = farm_batch(farm, servers, tmp, tag="profiled", records=shape[0], steps=shape[1],
                                       latency=shape[2], capacity=capacity)
                    finally:
                        profile_stop(spies)
                    print(m.line() + "  [py-spy attached]", flush=True)
                    profile_text = "\n".join(summarise_profile(path) for _, _, path in spies)
                stop(farm, names)
            if parts & {"celery", "chain40"}:
                names = start_celery(farm, servers, args.slots, tmp)
                celery_batch(farm, servers, tag="warm", records=warm, steps=args.steps, latency=args.latency,
                             capacity=capacity)
                if "celery" in parts:
                    report(celery_batch(farm, servers, tag="thr", records=args.records, steps=args.steps,
                                        latency=args.latency, capacity=capacity))
                    report(celery_batch(farm, servers, tag="thr0", records=args.records, steps=args.steps,
                                        latency=0.0, capacity=capacity))
                if "chain40" in parts:
                    report(median_of(args.chain_repeats, lambda: celery_batch(
                        farm, servers, tag="chain", records=args.chain_records, steps=args.chain_steps,
                        latency=0.0, capacity=capacity)))
                stop(farm, names)
        finally:
            farm.stop_all()
            for s in servers:
                s.stop()

    print()
    print(table(results))
    if profile_text:
        print(f"\npy-spy (raw stacks in {args.profile}):\n{profile_text}")
    conditions.print(f"{args.hosts} hosts x {args.slots} slots, broker {args.broker}")
    return 0 if all(m.ok for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
