"""How long `orchestrator submit` takes for a 100,000-row CSV, and its peak memory.

    .venv/bin/python -m bench.submit_100k [ROWS ...]     (default: 10000 100000)

Each size is a fresh CSV (bench.common.write_postings, about 340 bytes a row) submitted
to one scratch database for the small pipeline of tests/acceptance/pipeline; the whole
`orchestrator submit` process is timed from outside.
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
            conditions.print(postgres=conn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
