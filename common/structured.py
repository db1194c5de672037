"""Structured output: a step's `format` (JSON mode or a JSON Schema), checked both ways.

The same schema goes to the model server (Ollama's `format`, OpenAI's `response_format`)
and is validated here when the answer comes back: a server's grammar constrains the
shape, but an answer cut at the token limit, a server that ignored the format, or a
value outside an enum still gets through, and must become an `invalid_output` failure
before it reaches a branch, a template or a script.

jsonschema, not pydantic, validates: the workflow file carries a JSON Schema (what the
servers take), and jsonschema implements that standard in full; a pydantic model built
from it would implement a subset. The workflow validator checks each schema with
`schema_problem` at load time, so a malformed schema never reaches a worker.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from common import storable
from common.errors import WavefarmError

Format = str | dict[str, Any]  # "json" or a JSON Schema


class InvalidOutput(WavefarmError):
    """An answer that does not satisfy the step's format; the message says how."""


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a valid JSON Schema, or None."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"{exc.message}" + (f" (at {where})" if where else "")
    return None


def parse_answer(content: str, fmt: Format) -> Any:
    """The JSON value a structured answer holds; raises InvalidOutput when it does not
    parse or does not satisfy the schema (every violation, most specific first)."""
    try:
        value = storable.loads(content)
    except ValueError as exc:
        raise InvalidOutput(f"did not answer JSON ({exc})") from None
    found = storable.problem(value)
    if found:
        raise InvalidOutput(f"answered JSON that {found}")
    if isinstance(fmt, dict):
        errors = sorted(Draft202012Validator(fmt).iter_errors(value), key=lambda e: (list(e.absolute_path), e.message))
        if errors:
            raise InvalidOutput("answered JSON that does not match the schema: "
                                + "; ".join(_describe(e) for e in errors[:5]))
    elif not isinstance(value, (dict, list)):
        # JSON mode asks for an object; a bare number or string is a model talking past it.
        raise InvalidOutput(f"answered a JSON {type(value).__name__}, not an object or array")
    return value


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    return f"{where}: {message}" if where else message
