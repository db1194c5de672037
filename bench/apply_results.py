"""How many results per second the orchestrator applies (guarded transition, branching,
children, events, run endings), one result per transaction vs. batches of results.

    .venv/bin/python -m bench.apply_results [RUNS]     (default: 2000)

RUNS rows are submitted twice, as two batches of the workflow below (four results a
run), and every pending interaction is answered with a result until none is left: once
one result per transaction, once 50.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Conditions, positive, scratch_database, write_postings
from common.messages import TaskResult
from orchestrator import batches, catalog
from orchestrator.catalog import WorkflowCache
from orchestrator.db import connect
from orchestrator.db.store import Store
from orchestrator.results import apply_results
from orchestrator.states import claim_pending
from orchestrator.workflow import load_text

# Fan-out to two steps, then a fan-in: every result creates or waits for children.
WORKFLOW = """
name: bench
steps:
  - name: a
    model: "m"
    prompt: "{{ input.title }}"
    next: [{when: "*", to: b}, {when: "*", to: c}]
  - name: b
    model: "m"
    prompt: "{{ steps.a.output }}"
  - name: c
    model: "m"
    prompt: "{{ steps.a.output }}"
  - name: d
    model: "m"
    needs: [b, c]
    prompt: "{{ steps.b.output }} {{ steps.c.output }}"
"""


def drain(db: Store, batch_id: int, per_transaction: int) -> tuple[int, float]:
    cache = WorkflowCache()
    applied, spent = 0, 0.0
    while True:
        with db.transaction():
            rows = claim_pending(db, limit=2000, batch_id=batch_id)
        if not rows:
            return applied, spent
        results = [TaskResult(interaction_id=r.id, attempt=r.attempt, output=f"out {r.id}") for r in rows]
        t0 = time.perf_counter()
        for i in range(0, len(results), per_transaction):
            apply_results(db, results[i:i + per_transaction], cache)
        spent += time.perf_counter() - t0
        applied += len(results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.apply_results", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="?", type=positive, default=2000, metavar="RUNS",
                   help="runs per batch (default: 2000)")
    runs = p.parse_args(argv).runs
    conditions = Conditions("bench.apply_results", argv)
    with tempfile.TemporaryDirectory() as tmp, scratch_database() as url, connect(url) as conn:
        db = Store(conn)
        catalog.store(db, load_text(WORKFLOW), WORKFLOW)
        for per_transaction in (1, 50):
            path = write_postings(Path(tmp) / f"p{per_transaction}.csv", runs)
            path.write_text(path.read_text().replace("Data analyst", f"Analyst{per_transaction}"))
            batch_id = batches.submit(db, path, "bench").batch_id
            applied, spent = drain(db, batch_id, per_transaction)
            print(f"{per_transaction:>3} result(s)/transaction: {applied} results in {spent:.2f} s = "
                  f"{applied / spent:,.0f} results/s", flush=True)
        conditions.print(postgres=conn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
