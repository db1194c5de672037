"""How long `orchestrator submit` takes for a 100,000-row CSV, and its peak memory.

    .venv/bin/python -m bench.submit_100k [ROWS ...]     (default: 10000 100000)

Each size is a fresh CSV (bench.common.write_postings, about 340 bytes a row) submitted
to one scratch database for the small pipeline of tests/acceptance/pipeline; the whole
`orchestrator submit` process is timed from outside. Then, over all that pending work,
the query serve's placement runs each second (model_backlog).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Conditions, positive, run, scratch_database, write_postings
from orchestrator.db import connect

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORKFLOW = ROOT / "tests/acceptance/pipeline/posting_pipeline.yaml"


def backlog_ms(conn) -> None:
    """What placement (orchestrator/residency.py) reads each second, over every pending
    interaction the batches made: the median of five readings."""
    from orchestrator.db.store import Store
    from orchestrator.residency import _Backlog

    store = Store(conn)
    pending = conn.execute("SELECT count(*) AS n FROM interactions WHERE status = 'pending'").fetchone()["n"]
    conn.execute("VACUUM ANALYZE interactions")  # as autovacuum leaves a table that stopped growing
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        store.all("model_backlog", {"digests": []}, _Backlog)
        times.append((time.perf_counter() - t0) * 1000)
    print(f"placement's backlog over {pending} pending interactions: {sorted(times)[2]:.1f} ms", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.submit_100k", description=__doc__.split("\n\n")[0])
    p.add_argument("rows", nargs="*", type=positive, default=[10_000, 100_000], metavar="ROWS",
                   help="CSV sizes to submit, one batch each (default: 10000 100000)")
    args = p.parse_args(argv)
    conditions = Conditions("bench.submit_100k", argv)
    with tempfile.TemporaryDirectory() as tmp, scratch_database() as url:
        env = dict(os.environ, WAVEFARM_DATABASE_URL=url)
        run([BIN / "orchestrator", "workflow", "load", WORKFLOW], env)
        for rows in args.rows:
            path = write_postings(Path(tmp) / f"p{rows}.csv", rows)
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            run([BIN / "orchestrator", "submit", "--batch", path, "--workflow", "posting_pipeline"], env)
            took = time.perf_counter() - t0
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            size_mb = path.stat().st_size / 1e6
            print(f"submit {rows:>7} rows ({size_mb:6.1f} MB): {took:6.2f} s, "
                  f"{rows / took:8.0f} rows/s, peak RSS {max(peak, before) / 1024:.0f} MiB", flush=True)
        with connect(url) as conn:
            backlog_ms(conn)
            conditions.print(postgres=conn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
