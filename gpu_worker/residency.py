"""Residency on the GPU host: consume only the models serve placed here, keep them
loaded while they are, and let them go when they are placed elsewhere.

serve decides (orchestrator/placement.py); this applies it:
- which queues to consume: the placed models the server has. Until serve's word names
  this host (FIRST_WORD_S), none: a worker that took every queue in the meantime would
  load models only to drop them. Past that, with no word (serve is down), every model,
  as with `--residency off`.
- each call is sent with the farm's keep_alive (the model stays loaded between calls
  for as long as it is placed) and the context serve fixed for the model on this host
  (a step that asks for a smaller `num_ctx` runs under the larger one instead of making
  Ollama reload the model; the attempt records the options used).
- a task whose model is no longer placed here is handed back unstarted (it goes to the
  host the model is placed on now, not to its deadline), and a model placed here before
  is unloaded once its calls in progress have ended, so that the next one loads into
  free memory instead of evicting.
An OpenAI-compatible server (vLLM, llama.cpp) serves the models it was started with:
nothing to place, and the worker consumes them all.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter

from common.messages import AiTask, Resident
from common.placement import PlacementBoard, covers

log = logging.getLogger(__name__)

MAX_LOADED = 1000   # more models than any host holds: a bigger number is a typo
FIRST_WORD_S = 6.0   # serve says the placement every few seconds, at once to a new host
DEFAULT_KEEP_ALIVE = "30m"  # renewed by every call; a worker killed without unloading frees memory in 30 min


def max_loaded_default(given: int | None) -> tuple[int, str | None]:
    """How many models the host holds: --max-loaded, else the server's own setting in this
    environment, else 1, with a warning: learning it from what the host holds now would
    only confirm whatever happened to be loaded."""
    if given is not None:
        return given, None
    text = os.environ.get("OLLAMA_MAX_LOADED_MODELS", "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value > MAX_LOADED:
            return MAX_LOADED, f"OLLAMA_MAX_LOADED_MODELS={text[:20]!r} is more than any host holds: taking {MAX_LOADED}"
        if value >= 1:
            return value, None
        return 1, f"OLLAMA_MAX_LOADED_MODELS={text[:20]!r} is not a number of models: taking 1; say --max-loaded N"
    return 1, ("neither --max-loaded nor OLLAMA_MAX_LOADED_MODELS says how many models this host holds at once: "
               "taking 1 (one model at a time); say --max-loaded N")


class Residency:
    def __init__(self, *, enabled: bool, max_loaded: int, machine: str, server: str,
                 keep_alive: str = DEFAULT_KEEP_ALIVE, first_word_s: float = FIRST_WORD_S) -> None:
        self.enabled = enabled
        self.max_loaded = max_loaded
        self.keep_alive = keep_alive
        self.first_word_s = first_word_s
        self.board = PlacementBoard(machine=machine, server=server)
        self.resident: list[Resident] = []
        self._started = time.monotonic()
        self._said_no_word = False
        self._ours: set[str] = set()          # placed here at some time: unloaded when no longer
        self._calls: Counter[str] = Counter()  # calls in progress per model
        self._lock = threading.Lock()

    # -- what to consume -------------------------------------------------------------------
    def placed(self) -> frozenset[str] | None:
        return self.board.models() if self.enabled else None

    def allowed(self, models: list[str]) -> list[str]:
        """Of the models the server has, those to consume now."""
        if not self.enabled:
            return models
        placed = self.board.models()
        if placed is None:
            if time.monotonic() - self._started < self.first_word_s:
                return []
            if not self._said_no_word:
                self._said_no_word = True
                log.warning("no placement from serve in %.0fs: consuming every model until it says", self.first_word_s)
            return models
        with self._lock:
            self._ours |= placed
        return [m for m in models if covers(placed, m)]

    # -- each call ---------------------------------------------------------------------------
    def elsewhere(self, task: AiTask) -> str | None:
        """Why this host must not run `task` now (its model is placed on other hosts), or None."""
        placed = self.placed()
        if placed is None or covers(placed, task.model):
            return None
        return f"model {task.model} is placed on another host now"

    def prepare(self, task: AiTask) -> AiTask:
        """The task as this host runs it: the farm's keep_alive, and the model's fixed context."""
        if not self.enabled or self.board.models() is None:
            return task
        update: dict = {"keep_alive": self.keep_alive}
        fixed = self.board.num_ctx(task.model)
        asked = task.options.get("num_ctx")
        if fixed is not None and (not isinstance(asked, int) or asked < fixed):
            update["options"] = {**task.options, "num_ctx": fixed}
        return task.model_copy(update=update)

    def started(self, model: str) -> None:
        with self._lock:
            self._calls[model] += 1

    def ended(self, model: str) -> bool:
        """A call ended; whether its model now waits to be unloaded (no longer placed, idle)."""
        with self._lock:
            self._calls[model] -= 1
            idle = self._calls[model] <= 0
        placed = self.placed()
        return idle and placed is not None and not covers(placed, model)

    # -- letting go ------------------------------------------------------------------------------
    def to_release(self) -> list[str]:
        """Models placed here before, not now, with no call in progress: to unload."""
        placed = self.placed()
        if placed is None:
            return []
        with self._lock:
            gone = sorted(m for m in self._ours if not covers(placed, m) and self._calls[m] <= 0)
        return gone

    def released(self, model: str) -> None:
        with self._lock:
            self._ours.discard(model)

    def describe(self) -> dict:
        """The heartbeat's residency fields."""
        described = {"machine": self.board.machine, "resident": list(self.resident)}
        if not self.enabled:
            return described  # no max_loaded: serve does not place models on this host
        placed = self.board.models()
        return {**described, "max_loaded": self.max_loaded, "placed": None if placed is None else sorted(placed)}
