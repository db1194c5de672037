"""Deterministic answers: a pure function of (model, prompt, format).

Tests branch on what a model says, so answers must be repeatable across runs and
processes (sha256, never hash()) yet vary with the input the way a real model's do.

- A prompt naming two or more markers like [PASS] and [FAIL] gets exactly one of
  them, picked by the hash; "prefer [X]" in the prompt forces [X]. A single marker is
  not a choice: it is usually quoted text (an earlier grade being improved), so it
  gets a plain answer.
- A requested JSON format gets a JSON object; a schema gets each property filled
  with a value of its type, within its minimum/maximum; an enum value is picked by
  the hash, or the one the prompt names after "prefer" ("prefer FAIL").
- Anything else gets a short summary built from the prompt's first and last words.
Plain and JSON answers never contain a marker unless the prompt offered a choice,
so a workflow's branches fire exactly where the test meant them to.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

MARKER = re.compile(r"\[[A-Z_]+\]")
PREFER = re.compile(r"prefer\s+(\[[A-Z_]+\])", re.IGNORECASE)
PREFER_VALUE = re.compile(r"prefer\s+\[?(\w+)\]?")
WORD = re.compile(r"[A-Za-z][A-Za-z+#.-]*[A-Za-z+#]")


def stable_hash(*parts: str) -> int:
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def strip_markers(text: str) -> str:
    # Repeat: removing "[PASS]" from "[[PASS]PASS]" would otherwise leave a marker behind.
    while True:
        cleaned = MARKER.sub("", text)
        if cleaned == text:
            return cleaned
        text = cleaned


def chosen_marker(model: str, prompt: str) -> str | None:
    preferred = PREFER.search(prompt)
    if preferred:
        return preferred.group(1).upper()
    markers = list(dict.fromkeys(MARKER.findall(prompt)))  # distinct, in order of appearance
    if len(markers) < 2:
        return None
    return markers[stable_hash(model, prompt) % len(markers)]


def gist(prompt: str, head: int = 6, tail: int = 10) -> str:
    """First and last words: templates share their instructions, records differ in their data."""
    words = strip_markers(prompt).split()
    if len(words) <= head + tail:
        return " ".join(words)
    return " ".join(words[:head] + ["..."] + words[-tail:])


def text_answer(model: str, prompt: str) -> str:
    marker = chosen_marker(model, prompt)
    if marker is not None:
        return f"Reviewed {len(prompt.split())} words of input. Verdict: {marker}"
    return f"Summary: {gist(prompt)}"


def keywords(prompt: str, n: int = 5) -> list[str]:
    """Distinct longer words from the end of the prompt, where a record's data usually sits."""
    found: list[str] = []
    for word in reversed(WORD.findall(strip_markers(prompt))):
        w = word.lower()
        if len(w) >= 4 and w not in found:
            found.append(w)
        if len(found) == n:
            break
    return list(reversed(found))


def json_answer(model: str, prompt: str, fmt: str | dict[str, Any]) -> str:
    if isinstance(fmt, dict):
        value = _fill(fmt, model, prompt, path="$", depth=0)
    else:
        value = {"answer": text_answer(model, prompt), "keywords": keywords(prompt)}
    return json.dumps(value)


def _fill(schema: Any, model: str, prompt: str, path: str, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > 6:
        return text_answer(model, prompt)
    h = stable_hash(model, prompt, path)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        preferred = PREFER_VALUE.findall(prompt)
        return next((v for v in schema["enum"] if v in preferred), schema["enum"][h % len(schema["enum"])])
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return _fill(schema[combinator][0], model, prompt, path, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):  # ["string", "null"]: answer the first real type
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: _fill(sub, model, prompt, f"{path}.{name}", depth + 1) for name, sub in props.items()}
    if kind == "array":
        items = schema.get("items") or {"type": "string"}
        if isinstance(items, dict) and items.get("type", "string") == "string" and "enum" not in items:
            words = [_fit(w, items) for w in keywords(prompt)]
        else:
            words = [_fill(items, model, prompt, f"{path}[0]", depth + 1)]
        return words[:schema.get("maxItems", len(words))]
    if kind in ("integer", "number"):
        low = schema.get("minimum", 0)
        high = schema.get("maximum", low + 99)
        if kind == "integer":
            return int(low) + h % (int(high) - int(low) + 1)
        return low + (h % 1000) / 1000 * (high - low)
    if kind == "boolean":
        return bool(h & 1)
    if kind == "null":
        return None
    return _fit(text_answer(model, prompt), schema)


def _fit(text: str, schema: dict) -> str:
    """A string within the schema's length bounds, as a grammar-constrained server gives."""
    text = text[:schema.get("maxLength", len(text))]
    return text.ljust(schema.get("minLength", 0), ".")
