"""`orchestrator status --batch` on a database holding a million interactions.

Fills the tables directly in SQL (a 1,000,000-interaction batch of 200,000 runs and
a second batch around it), then times the command and prints the plans.

    .venv/bin/python bench/status_1m.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import scratch_database
from orchestrator.db import Q, connect

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

FILL = """
INSERT INTO workflows (name, version, digest, definition, source) VALUES ('w', 1, 'd', '{}', '');
INSERT INTO batches (workflow_id, workflow_name, source_name, source_digest)
SELECT 1, 'w', 'b' || b || '.csv', 'digest' || b FROM generate_series(1, 2) b;
INSERT INTO runs (batch_id, workflow_id, workflow_name, row_key, line, input, status)
SELECT 1 + (r % 2), 1, 'w', 'k' || r, r, '{"posting_id": "1"}',
       CASE WHEN r % 10 = 0 THEN 'running' WHEN r % 13 = 0 THEN 'failed' ELSE 'completed' END
FROM generate_series(1, 400000) r;
INSERT INTO interactions (run_id, batch_id, step, kind, actor, visit, status, max_attempts, timeout_s, input, output)
SELECT r.id, r.batch_id, s.step, s.kind, s.actor, 1,
       CASE WHEN r.status = 'running' AND s.n = 5 THEN 'pending' ELSE 'completed' END,
       3, 60, '{"prompt": "p"}', '"out"'
FROM runs r
CROSS JOIN (VALUES (1, 'extract', 'ai', 'gemma3:1b'), (2, 'grade', 'ai', 'qwen2.5:7b'),
                   (3, 'skills', 'ai', 'gemma3:1b'), (4, 'improve', 'ai', 'qwen2.5:7b'),
                   (5, 'record', 'script', 'assemble_record.py')) AS s(n, step, kind, actor);
VACUUM ANALYZE;
"""


def main() -> None:
    with scratch_database() as url:
        conn = connect(url)
        t0 = time.perf_counter()
        conn.execute("ALTER TABLE interactions DISABLE TRIGGER interactions_events")
        for statement in FILL.split(";\n"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("ALTER TABLE interactions ENABLE TRIGGER interactions_events")
        n = conn.execute("SELECT count(*) AS n FROM interactions").fetchone()["n"]
        print(f"filled {n:,} interactions in {time.perf_counter() - t0:.1f} s")
        for name in ("batch_interaction_counts", "batch_run_counts"):
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + Q[name], {"batch_id": 1}).fetchall()
            print(f"\n-- {name}")
            print("\n".join(r["QUERY PLAN"] for r in plan))
        conn.close()
        env = dict(os.environ, WAVEFARM_DATABASE_URL=url)
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([BIN / "orchestrator", "status", "--batch", "1", "--json"], env=env, check=True,
                           capture_output=True)
            print(f"orchestrator status --batch 1 --json: {time.perf_counter() - t0:.3f} s (whole process)")


if __name__ == "__main__":
    main()
