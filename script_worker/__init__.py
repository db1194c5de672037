"""script_worker: runs script actors (one subprocess per interaction) on CPU hosts.

`run_script` (runner.py) is the subprocess contract; `ScriptActor` (actor.py) is
the base class a script uses to keep it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ScriptActor", "run_script"]

if TYPE_CHECKING:
    from script_worker.actor import ScriptActor
    from script_worker.runner import run_script


def __getattr__(name: str) -> Any:
    # Lazy: every script actor imports this package, and loading the runner (pydantic)
    # would add ~150 ms to each script start for nothing.
    if name == "ScriptActor":
        from script_worker.actor import ScriptActor
        return ScriptActor
    if name == "run_script":
        from script_worker.runner import run_script
        return run_script
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
