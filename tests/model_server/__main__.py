"""`python -m tests.model_server --port 11434 --models gemma3:1b,qwen2.5:7b --latency 0.05 --slots 4`

Serves Ollama's API and the OpenAI-compatible one (/v1) until interrupted (Ctrl-C or
SIGTERM); `--api-key KEY` makes /v1 ask for `Authorization: Bearer KEY`, as vLLM does. Faults: `--fault MODEL=KIND:RATE`,
repeatable, MODEL "*" for every model, e.g. `--fault '*=error:0.05'`. `--max-loaded N` holds at most N models
at once (OLLAMA_MAX_LOADED_MODELS), each load taking `--load` seconds, one at a time.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from tests.model_server.server import FAULT_KINDS, ModelServer


def _fault(text: str) -> tuple[str, str, float]:
    try:
        model, _, spec = text.partition("=")
        kind, _, rate = spec.partition(":")
        if not model or kind not in FAULT_KINDS:
            raise ValueError
        return model, kind, float(rate or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MODEL=KIND[:RATE] with KIND in {', '.join(FAULT_KINDS)}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.model_server", description="A fake Ollama / OpenAI-compatible model server.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=11434)
    p.add_argument("--models", default="gemma3:1b", help="comma-separated model names")
    p.add_argument("--latency", type=float, default=0.0, help="base seconds per request (prompt evaluation)")
    p.add_argument("--per-token", type=float, default=0.0, help="seconds per output token")
    p.add_argument("--slots", type=int, default=4, help="parallel requests per model (OLLAMA_NUM_PARALLEL)")
    p.add_argument("--load", type=float, default=0.0, help="seconds to load a model that is not resident")
    p.add_argument("--max-loaded", type=int, default=None, metavar="N",
                   help="models resident at once (OLLAMA_MAX_LOADED_MODELS); the least recently used idle one "
                        "is evicted to make room (default: no limit)")
    p.add_argument("--fault", type=_fault, action="append", default=[], metavar="MODEL=KIND:RATE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=None, help="bearer token the /v1 routes require")
    p.add_argument("--verbose", action="store_true", help="log every request")
    args = p.parse_args(argv)

    server = ModelServer([m.strip() for m in args.models.split(",") if m.strip()], host=args.host, port=args.port,
                         latency=args.latency, per_token=args.per_token, slots=args.slots, load_s=args.load,
                         seed=args.seed, verbose=args.verbose, api_key=args.api_key, max_loaded=args.max_loaded)
    for model, kind, rate in args.fault:
        server.set_fault(model, kind, rate)  # type: ignore[arg-type]

    def _stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever, which runs in this thread: hand it off.
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    print(f"fake model server at {server.url} (Ollama API, OpenAI API under /v1) serving {', '.join(server.models)}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
