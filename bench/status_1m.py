"""`orchestrator status --batch` on a database holding a million interactions.

    .venv/bin/python -m bench.status_1m [INTERACTIONS]     (default: 2000000)

Fills the tables directly in SQL: INTERACTIONS / 5 runs of five interactions each, in
two batches of equal size (batch 1, the one asked about, and a second batch around
it), one attempt of every interaction that ended (with usage and a cost), then prints the
plans of the two counting queries and of the cost query and times the whole command
three times (the first after the fill, with what it left in Postgres's cache).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.common import Conditions, positive, run, scratch_database
from orchestrator.db import Q, connect

BIN = Path(sys.executable).parent
STEPS = 5  # interactions per run

FILL = [
    "INSERT INTO workflows (name, version, digest, definition, source) VALUES ('w', 1, 'd', '{}', '')",
    """INSERT INTO batches (workflow_id, workflow_name, source_name, source_digest)
       SELECT 1, 'w', 'b' || b || '.csv', 'digest' || b FROM generate_series(1, 2) b""",
    # The only statement with a parameter, so the only one where % is written %%.
    """INSERT INTO runs (batch_id, workflow_id, workflow_name, row_key, line, input, status)
       SELECT 1 + (r %% 2), 1, 'w', 'k' || r, r, '{"posting_id": "1"}',
              CASE WHEN r %% 10 = 0 THEN 'running' WHEN r %% 13 = 0 THEN 'failed' ELSE 'completed' END
       FROM generate_series(1, %(runs)s) r""",
    """INSERT INTO interactions (run_id, batch_id, step, kind, actor, visit, status, max_attempts, timeout_s, input,
                                output)
       SELECT r.id, r.batch_id, s.step, s.kind, s.actor, 1,
              CASE WHEN r.status = 'running' AND s.n = 5 THEN 'pending' ELSE 'completed' END,
              3, 60, '{"prompt": "p"}', '"out"'
       FROM runs r
       CROSS JOIN (VALUES (1, 'extract', 'ai', 'gemma3:1b'), (2, 'grade', 'ai', 'qwen2.5:7b'),
                          (3, 'skills', 'ai', 'gemma3:1b'), (4, 'improve', 'ai', 'qwen2.5:7b'),
                          (5, 'record', 'script', 'assemble_record.py')) AS s(n, step, kind, actor)""",
    # One attempt of every interaction that ended, with usage and a cost (status's cost section).
    """INSERT INTO attempts (interaction_id, batch_id, attempt, outcome, worker, prompt_tokens, output_tokens, call_s,
                            model, cost)
       SELECT id, batch_id, 1, 'completed', 'gpu', 300, 50, 0.5, CASE WHEN kind = 'ai' THEN actor END,
              CASE WHEN kind = 'ai' THEN 0.0001 END
       FROM interactions WHERE status = 'completed'""",
    "VACUUM ANALYZE",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.status_1m", description=__doc__.split("\n\n")[0])
    p.add_argument("interactions", nargs="?", type=positive, default=2_000_000, metavar="INTERACTIONS",
                   help=f"interactions in the database, half of them in the batch asked about (default: 2000000; "
                        f"at least {2 * STEPS})")
    args = p.parse_args(argv)
    runs = max(2, args.interactions // STEPS)
    conditions = Conditions("bench.status_1m", argv)
    with scratch_database() as url, connect(url) as conn:
        t0 = time.perf_counter()
        conn.execute("ALTER TABLE interactions DISABLE TRIGGER interactions_events")
        for statement in FILL:
            conn.execute(statement, {"runs": runs} if "%(runs)s" in statement else None)
        conn.execute("ALTER TABLE interactions ENABLE TRIGGER interactions_events")
        n = conn.execute("SELECT count(*) AS n FROM interactions").fetchone()["n"]
        in_batch = conn.execute("SELECT count(*) AS n FROM interactions WHERE batch_id = 1").fetchone()["n"]
        print(f"filled {n:,} interactions ({in_batch:,} in batch 1) in {time.perf_counter() - t0:.1f} s")
        for name in ("batch_interaction_counts", "batch_run_counts", "batch_cost"):
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + Q[name], {"batch_id": 1}).fetchall()
            print(f"\n-- {name}")
            print("\n".join(r["QUERY PLAN"] for r in plan))
        env = dict(os.environ, WAVEFARM_DATABASE_URL=url)
        print()
        for _ in range(3):
            t0 = time.perf_counter()
            run([BIN / "orchestrator", "status", "--batch", "1", "--json"], env)
            print(f"orchestrator status --batch 1 --json: {time.perf_counter() - t0:.3f} s (whole process)", flush=True)
        conditions.print(postgres=conn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
