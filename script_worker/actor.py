"""ScriptActor: the base class that makes a script keep the script contract.

    class SaveSummary(ScriptActor):
        required = ("posting_id", "summary")
        def process(self, data: dict) -> dict:
            return {"saved": True}
    if __name__ == "__main__":
        SaveSummary.main()

main() reads one JSON object from stdin, checks `required`, calls process() and
writes its result as one JSON object on stdout, exit 0. Any problem is a non-zero
exit with a traceback and a last one-line message on stderr (the runner quotes
that line and keeps the end of stderr): 2 for bad input, 1 for a failure in
process(). While process() runs, stdout is pointed at stderr, down to the file
descriptor, so print() or a child process cannot corrupt the one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any, ClassVar, NoReturn

EXIT_FAILED = 1     # process() raised or returned something that is not a JSON object
EXIT_BAD_INPUT = 2  # stdin is not one JSON object, or a required key is missing


class ScriptActor:
    required: ClassVar[tuple[str, ...]] = ()  # input keys process() cannot do without

    def __init__(self) -> None:
        # For actors that write to the database; the runner passes it on purpose.
        # Never print it: it carries a password.
        self.database_url: str | None = os.environ.get("WAVEFARM_DATABASE_URL") or None

    def process(self, data: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must define process(self, data) -> dict")

    @classmethod
    def main(cls) -> NoReturn:
        """Run the actor once under the script contract; never returns."""
        name = cls.__name__
        # Keep the real stdout for the result alone; fd 1 (Python's and any child's)
        # goes to stderr from here on.
        sys.stdout.flush()
        result_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

        try:
            data = json.loads(sys.stdin.buffer.read())  # bytes: JSON finds its own encoding
        except (ValueError, RecursionError) as exc:
            _fail(EXIT_BAD_INPUT, f"{name}: stdin is not JSON: {exc}", with_traceback=False)
        if not isinstance(data, dict):
            _fail(EXIT_BAD_INPUT, f"{name}: stdin must be one JSON object, got {type(data).__name__}",
                  with_traceback=False)
        missing = [key for key in cls.required if key not in data]
        if missing:
            _fail(EXIT_BAD_INPUT, f"{name}: missing required input key(s): {', '.join(missing)} "
                                  f"(got: {', '.join(sorted(data)) or 'none'})", with_traceback=False)

        try:
            result = cls().process(data)
            if not isinstance(result, dict):
                raise TypeError(f"process() returned {type(result).__name__}, expected a dict")
            # Serialised before anything is written: a failure here leaves stdout empty.
            # No NaN/Infinity: they are not JSON and Postgres refuses them.
            text = json.dumps(result, ensure_ascii=False, allow_nan=False)
        except Exception as exc:
            _fail(EXIT_FAILED, f"{name} failed: {type(exc).__name__}: {exc}")

        sys.stderr.flush()
        with os.fdopen(result_fd, "w", encoding="utf-8") as out:
            out.write(text + "\n")
        raise SystemExit(0)


def _fail(code: int, message: str, *, with_traceback: bool = True) -> NoReturn:
    # The traceback first and the one-line message last: the runner quotes the last
    # stderr line in the failure message.
    if with_traceback:
        traceback.print_exc(file=sys.stderr)
    # One line: the runner quotes the last one, and a driver's message often spans several.
    print(" | ".join(line.strip() for line in message.splitlines() if line.strip()), file=sys.stderr, flush=True)
    raise SystemExit(code)
