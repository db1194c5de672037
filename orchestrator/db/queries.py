"""Loads queries.sql once into a mapping: name -> SQL text.

Each query in queries.sql sits under a `-- name: <name>` header followed by a
one-line description; parameters are always %(name)s placeholders, never
formatted into the text.
"""

from __future__ import annotations

import re
from importlib.resources import files
from types import MappingProxyType
from typing import Mapping

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in queries:
            raise ValueError(f"queries.sql: query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


def _load() -> Mapping[str, str]:
    text = files("orchestrator.db").joinpath("queries.sql").read_text(encoding="utf-8")
    return MappingProxyType(parse(text))


Q: Mapping[str, str] = _load()
