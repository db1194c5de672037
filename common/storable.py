"""What the farm can keep of a value that came from outside: a model's answer, a
script's JSON, a script's stderr, a server's error text.

Checked where it enters, on the worker, before the result is published: a value that
Postgres would refuse (a NUL character, an unpaired UTF-16 surrogate) or that JSON
cannot carry (NaN, infinity), or one nested past any use, becomes an `invalid_output`
with the reason in seconds, instead of a result the orchestrator cannot store, which
would wait for its deadline and come back as a lost worker. Text that only explains
a failure (stderr, an error body) is cleaned instead: it is kept, with the offending
characters replaced.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64  # nesting deeper than this is no answer a step means (and a parser's stack at risk)
REPLACEMENT = "\ufffd"


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "holds a NUL character (\\u0000), which the database cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds an unpaired UTF-16 surrogate, which is not text"
    return None


def problem(value: Any) -> str | None:
    """Why `value` cannot be kept as it is, or None. Walks without recursion, so a value
    nested a hundred thousand deep is answered, not a crash."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"is nested deeper than {MAX_DEPTH} levels"
        if isinstance(item, str):
            found = _text_problem(item)
            if found:
                return found
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"holds {item}, which JSON cannot carry"
        elif isinstance(item, dict):
            for key, inner in item.items():
                stack.append((key, depth + 1))
                stack.append((inner, depth + 1))
        elif isinstance(item, list):
            stack.extend((inner, depth + 1) for inner in item)
    return None


def loads(text: str) -> Any:
    """JSON as JSON means it: NaN and Infinity refused, and a nesting too deep for the
    parser a ValueError like any other bad input, not a RecursionError."""
    try:
        # strict=False: a raw newline inside a string is not strict JSON, but it is what
        # some servers' grammars let through (llama.cpp's), and the value is unambiguous.
        return json.loads(text, strict=False, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than any JSON reader goes (more than {MAX_DEPTH} levels)") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def clean(text: str) -> str:
    """Explanatory text made storable: NUL characters and unpaired surrogates replaced."""
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(REPLACEMENT if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
