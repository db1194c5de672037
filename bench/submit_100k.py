"""How long `orchestrator submit` takes for a 100,000-row CSV, and its peak memory.

    .venv/bin/python bench/submit_100k.py [ROWS ...]
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import scratch_database, write_postings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def main(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp, scratch_database() as url:
        env = dict(os.environ, WAVEFARM_DATABASE_URL=url)
        subprocess.run([BIN / "orchestrator", "workflow", "load", ROOT / "examples/posting_pipeline.yaml"],
                       env=env, check=True, capture_output=True)
        for rows in sizes:
            path = write_postings(Path(tmp) / f"p{rows}.csv", rows)
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            subprocess.run([BIN / "orchestrator", "submit", "--batch", path, "--workflow", "posting_pipeline"],
                           env=env, check=True, capture_output=True)
            took = time.perf_counter() - t0
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            size_mb = path.stat().st_size / 1e6
            print(f"submit {rows:>7} rows ({size_mb:6.1f} MB): {took:6.2f} s, "
                  f"{rows / took:8.0f} rows/s, peak RSS {max(peak, before) / 1024:.0f} MiB")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10_000, 100_000])
