"""The interaction cache: an answer given once is not paid for twice.

Every AI interaction carries the digest of what it asks (`prompt_key`: the rendered
system and prompt, the options and the format; not the workflow, the step or the
batch, so an identical prompt in another workflow is the same question). When it
completes, its answer is entered under that digest and the digest of the model that
gave it, as the host reported it (Ollama's /api/tags digest; an OpenAI-compatible
server's model id). A step with `cache: true` looks there when it is claimed for
dispatch: an entry from a model digest some live host serves today is a hit, and the
interaction completes with that output in the same turn, without a message, a slot or
a call (`answer`). A re-pulled model has another digest: its old answers are not hits.

A hit never comes from the same run (a loop that asks again means to sample again),
except from work a rerun superseded: `retry --from-step` pays only for the steps whose
prompts changed. A hit is an ordinary completion with `cached_from` naming its source,
and an attempt record with no usage of its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from common.messages import TaskResult, utcnow
from orchestrator.db.rows import Claimed
from orchestrator.db.store import Store

CACHE_WORKER = "cache"  # the worker an attempt answered from the cache names


def prompt_key(ai_input: Mapping[str, Any]) -> str:
    """The digest of what an AI interaction asks: its rendered system and prompt, its
    options and its format, in a canonical JSON form (keys sorted)."""
    asked = {k: ai_input.get(k) for k in ("system", "prompt", "options", "format")}
    text = json.dumps(asked, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class _Hit:
    id: int
    attempt: int
    source: int
    output: Any


def answer(store: Store, claimed: Sequence[Claimed], digests: Mapping[str, Sequence[str]]
           ) -> tuple[list[TaskResult], list[Claimed]]:
    """Split claimed interactions into those the cache answers (as results, to apply in
    this turn) and those to send. `digests`: model -> the digests live hosts serve."""
    asking = [c for c in claimed if c.cache_key is not None]
    if not asking or not digests:
        return [], list(claimed)
    rows = store.all("cache_hits", {
        "claimed": json.dumps([{"id": c.id, "attempt": c.attempt, "run_id": c.run_id, "key": c.cache_key,
                                "actor": c.actor} for c in asking]),
        "digests": json.dumps({m: list(d) for m, d in digests.items()}),
    }, _Hit)
    if not rows:
        return [], list(claimed)
    now = utcnow()
    hits = [TaskResult(interaction_id=h.id, attempt=h.attempt, output=h.output, worker=CACHE_WORKER,
                       cached_from=h.source, started_at=now, finished_at=now) for h in rows]
    answered = {h.id for h in rows}
    return hits, [c for c in claimed if c.id not in answered]


def live_digests(store: Store, stale_s: float) -> dict[str, list[str]]:
    """model -> the digests of it that live hosts reported in their heartbeats."""
    return {r.model: r.digests for r in store.all("live_digests", {"stale_s": stale_s}, _Digests)}


@dataclass(frozen=True, slots=True)
class _Digests:
    model: str
    digests: list[str]


@dataclass(frozen=True, slots=True)
class ModelStats:
    model: str
    entries: int
    hits: int
    oldest: datetime | None
    last_hit: datetime | None
    saved_prompt_tokens: int   # the source calls' tokens, once per hit
    saved_output_tokens: int
    saved_cost: Decimal        # at the prices the source calls were paid at


def stats(store: Store) -> list[ModelStats]:
    return store.all("cache_stats", None, ModelStats)


def clear(store: Store, *, model: str | None = None, older_than_days: float | None = None) -> int:
    """Forget cached answers (the interactions keep their outputs); how many."""
    with store.transaction():
        return store.run("cache_clear", {"model": model, "older_than_days": older_than_days})
