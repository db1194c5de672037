"""`orchestrator retry --from-step` on a whole big batch, as a user runs it.

    .venv/bin/python -m bench.retry_big [RUNS]     (default: 20000)

Fills a batch of RUNS completed runs of a four-step workflow (a -> b -> c -> d, AI
steps) directly in SQL, then times `orchestrator retry --batch 1 --from-step b` (which
supersedes b, c and d of every run and renders a new visit of b), and reports the
command's peak memory: retry works in chunks of 1,000 runs in its one transaction.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

from bench.common import Conditions, positive, run, scratch_database
from orchestrator import catalog
from orchestrator.db import connect
from orchestrator.db.store import Store
from orchestrator.workflow import load_text

BIN = Path(sys.executable).parent
WORKFLOW = """
name: four
steps:
  - {name: a, model: "m:1", prompt: "a {{ input.x }}", next: [{when: "*", to: b}]}
  - {name: b, model: "m:1", prompt: "b {{ steps.a.output }}", next: [{when: "*", to: c}]}
  - {name: c, model: "m:1", prompt: "c {{ steps.b.output }}", next: [{when: "*", to: d}]}
  - {name: d, model: "m:1", prompt: "d {{ steps.c.output }}"}
"""

FILL = [
    """INSERT INTO batches (workflow_id, workflow_name, source_name, source_digest)
       VALUES (%(wf)s, 'four', 'big.csv', 'digest')""",
    """INSERT INTO runs (batch_id, workflow_id, workflow_name, row_key, line, input, status, end_reason, ended_at)
       SELECT 1, %(wf)s, 'four', 'k' || r, r + 1, jsonb_build_object('x', 'posting ' || r), 'completed', 'done', now()
       FROM generate_series(1, %(runs)s) r""",
]
STEP = """
INSERT INTO interactions (run_id, batch_id, step, kind, actor, visit, status, attempt, max_attempts, timeout_s,
                          parent_ids, input, output, ended_at)
SELECT r.id, 1, %(step)s, 'ai', 'm:1', 1, 'completed', 1, 3, 300,
       coalesce((SELECT array_agg(p.id) FROM interactions p WHERE p.run_id = r.id AND p.step = %(parent)s), '{}'),
       jsonb_build_object('prompt', %(step)s || ' ' || (r.input->>'x')), to_jsonb('output of ' || %(step)s), now()
FROM runs r WHERE r.batch_id = 1
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.retry_big", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="?", type=positive, default=20_000, metavar="RUNS")
    args = p.parse_args(argv)
    conditions = Conditions("bench.retry_big", argv)
    with scratch_database() as url, connect(url) as conn:
        t0 = time.perf_counter()
        stored = catalog.store(Store(conn), load_text(WORKFLOW), WORKFLOW)
        for statement in FILL:
            conn.execute(statement, {"wf": stored.id, "runs": args.runs})
        conn.execute("CREATE INDEX ON interactions (run_id, step)")  # for the fill only
        for parent, step in ((None, "a"), ("a", "b"), ("b", "c"), ("c", "d")):
            conn.execute(STEP, {"step": step, "parent": parent})
        conn.execute("VACUUM ANALYZE")
        print(f"filled {args.runs:,} runs, {4 * args.runs:,} interactions in {time.perf_counter() - t0:.1f} s")
        env = dict(os.environ, WAVEFARM_DATABASE_URL=url)
        t0 = time.perf_counter()
        done = run([BIN / "orchestrator", "retry", "--batch", "1", "--from-step", "b"], env)
        took = time.perf_counter() - t0
        print(done.stdout.strip())
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"orchestrator retry --batch 1 --from-step b: {took:.1f} s (whole process), peak RSS {peak:.0f} MiB")
        new = conn.execute("SELECT count(*) AS n FROM interactions WHERE step = 'b' AND visit = 2"
                           " AND status = 'pending'").fetchone()["n"]
        print(f"new visits of b pending: {new:,}")
        conditions.print(postgres=conn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
