"""Pydantic models of a workflow file.

The models check what one value can check on its own (types, ranges, names, unknown
keys). Rules that span steps (targets, reachability, loops, template references) live
in validate.py, which reports them all at once with their lines; always build a
Workflow from text through validate.load_text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import date, datetime
from typing import Annotated, Any, Literal

from jinja2 import TemplateSyntaxError
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr, Tag

WORKFLOW_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
# A step name must be an identifier so that templates can say steps.NAME.
STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

AI_ONLY_KEYS = ("prompt", "system", "options", "format")
SCRIPT_ONLY_KEYS = ("input",)

TemplatePath = tuple[str | int, ...]


def _workflow_name(value: str) -> str:
    if not WORKFLOW_NAME.fullmatch(value):
        raise ValueError(
            f"invalid workflow name {value!r}: use letters, digits, '_', '.' and '-', starting with a letter"
        )
    return value


def _step_name(value: str) -> str:
    if not STEP_NAME.fullmatch(value):
        raise ValueError(
            f"invalid step name {value!r}: use letters, digits and '_', not starting with a digit"
            " (templates refer to it as steps.NAME)"
        )
    return value


def _when(value: Any) -> Any:
    # YAML reads an unquoted [PASS] as a one-item list: say so rather than "not a string".
    if isinstance(value, list):
        raise ValueError(f'when must be text or a field condition, got the list {value!r}: '
                         'quote markers, as in when: "[PASS]"')
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError('branch condition when is empty: use "*" to always take this branch')
    return value


def _format(value: Any) -> Any:
    if isinstance(value, dict):
        return _json_like(value)
    if value is None or value == "json":
        return value
    raise ValueError(f'format must be "json" or a mapping (a JSON schema), got {value!r}')


# Integers beyond 2**53 are not the same number in every JSON reader (a float64 one
# rounds them); NaN and infinity are not JSON at all.
MAX_JSON_INT = 2**53


def _json_like(value: dict[str, Any]) -> dict[str, Any]:
    # Values travel as JSON (database, workers); a YAML date, a non-text key, a NaN or
    # a number past what JSON readers agree on would not.
    def walk(v: Any, where: str) -> None:
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise ValueError(f"key {k!r} at {where or 'top level'} must be text: quote it")
                walk(item, f"{where}.{k}" if where else k)
        elif isinstance(v, list):
            for i, item in enumerate(v):
                walk(item, f"{where}[{i}]")
        elif isinstance(v, (date, datetime)):
            raise ValueError(f"value at {where} is a YAML date ({v}): quote it to make it text")
        elif isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"value at {where} is {v}, which JSON cannot carry: give a finite number")
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_JSON_INT:
            raise ValueError(f"value at {where} is {v}, beyond what JSON readers agree on (±2**53)")
        elif not isinstance(v, (str, int, float, bool)) and v is not None:
            raise ValueError(f"value at {where} is a {type(v).__name__}, which JSON cannot carry")

    walk(value, "")
    return value


# Options the farm itself reads (the OpenAI backend maps num_predict to max_tokens; the
# context size decides what a host must load): bounded to what a model server can take.
OPTION_BOUNDS: dict[str, tuple[int, int]] = {"num_ctx": (1, 1 << 21), "num_predict": (-2, 1 << 21)}


def _options(value: dict[str, Any]) -> dict[str, Any]:
    _json_like(value)
    for key, (low, high) in OPTION_BOUNDS.items():
        v = value.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"option {key} must be a whole number, got {v!r}")
        if not low <= v <= high:
            raise ValueError(f"option {key} is {v}: it must be between {low} and {high}")
    return value


WorkflowName = Annotated[str, AfterValidator(_workflow_name)]
StepName = Annotated[str, AfterValidator(_step_name)]
JsonDict = Annotated[dict[str, Any], AfterValidator(_json_like)]


class _Model(BaseModel):
    # strict: `retries: true` or `model: 3` are mistakes, not values to coerce.
    model_config = ConfigDict(extra="forbid", strict=True)


JsonScalar = str | int | float | bool


class FieldCondition(_Model):
    """A test on one field of a JSON output: `when: {field: verdict, equals: PASS}`.

    `field` is a dotted path into the output (`scores.total`, `items.0`). The output is
    a script's JSON object or the JSON an AI step with a `format` answered. A missing
    field, or an output that is not JSON, does not match. Give `equals`, `one_of`, or
    `gte` and/or `lte` (numbers, or numbers written as text).
    """

    field: Annotated[str, AfterValidator(_field_path)]
    equals: JsonScalar | None = None
    one_of: list[JsonScalar] | None = None
    gte: float | None = None
    lte: float | None = None

    def model_post_init(self, context: Any, /) -> None:
        given = [k for k in ("equals", "one_of", "gte", "lte") if getattr(self, k) is not None]
        if not given:
            raise ValueError(f"condition on field {self.field!r} tests nothing: give equals, one_of, gte or lte")
        if len(given) > 1 and not set(given) <= {"gte", "lte"}:
            raise ValueError(f"condition on field {self.field!r} gives {' and '.join(given)}: "
                             "give one of equals and one_of (or gte and lte together)")

    def describe(self) -> str:
        if self.equals is not None:
            return f"{self.field} == {self.equals!r}"
        if self.one_of is not None:
            return f"{self.field} in {self.one_of!r}"
        bounds = [f"{self.field} >= {self.gte:g}" if self.gte is not None else "",
                  f"{self.field} <= {self.lte:g}" if self.lte is not None else ""]
        return " and ".join(b for b in bounds if b)

    def matches(self, output: Any) -> bool:
        value = _json_field(output, self.field)
        if value is _MISSING:
            return False
        if self.equals is not None:
            return _same(value, self.equals)
        if self.one_of is not None:
            return any(_same(value, v) for v in self.one_of)
        number = _number(value)
        return (number is not None and (self.gte is None or number >= self.gte)
                and (self.lte is None or number <= self.lte))


_MISSING = object()


def _field_path(value: str) -> str:
    if not value or any(not part for part in value.split(".")):
        raise ValueError(f"invalid field path {value!r}: use key names joined by '.', as in scores.total")
    return value


def _json_field(output: Any, path: str) -> Any:
    value = output
    if isinstance(value, str):  # an AI answer stored as text (JSON mode before structured output)
        try:
            value = json.loads(value)
        except ValueError:
            return _MISSING
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _same(value: Any, expected: JsonScalar) -> bool:
    # JSON's true is not 1, and "7" is not 7: compare like with like.
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(expected, str) or isinstance(value, str):
        return isinstance(value, str) and isinstance(expected, str) and value == expected
    return isinstance(value, (int, float)) and value == expected


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):  # a model that wrote "7" where a number was meant
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _when_kind(value: Any) -> str:
    return "field" if isinstance(value, (dict, FieldCondition)) else "marker"


# `to: $end` ends the run on purpose, not as a failure, with the branch's `outcome`
# (a name such as `rejected`, counted by `status`); it is not a step.
END = "$end"
OUTCOME = re.compile(r"[a-z][a-z0-9_-]{0,39}")


def _outcome(value: str) -> str:
    if not OUTCOME.fullmatch(value):
        raise ValueError(f"invalid outcome {value!r}: use lower-case letters, digits, '_' and '-', starting with a "
                         "letter, at most 40 characters (e.g. rejected)")
    return value


class Branch(_Model):
    when: Annotated[
        Annotated[Annotated[str, AfterValidator(_not_blank)], Tag("marker")]
        | Annotated[FieldCondition, Tag("field")],
        Discriminator(_when_kind),
        BeforeValidator(_when),
    ]
    to: str
    outcome: Annotated[str, AfterValidator(_outcome)] | None = None

    @property
    def ends(self) -> bool:
        """Whether this branch ends the run (`to: $end`) instead of leading to a step."""
        return self.to == END

    def matches(self, output: Any) -> bool:
        if isinstance(self.when, FieldCondition):
            return self.when.matches(output)
        return self.when == "*" or self.when in output_text(output)

    def describe(self) -> str:
        return self.when.describe() if isinstance(self.when, FieldCondition) else self.when


def output_text(output: Any) -> str:
    """What a branch marker is searched in: the text, or JSON output as text."""
    if output is None:
        return ""
    return output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)


# Bounds on every number the farm computes with: a value past them is a mistake in the
# file, and refused there with its line, not an overflow later inside serve's turn
# (a deadline past the year 294276, a retry count past a 32-bit column).
MAX_TIMEOUT_S = 86_400.0   # a day: no model call or script waits longer
MAX_RETRIES = 100
MAX_VISITS = 1_000
Timeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]
Retries = Annotated[int, Field(ge=0, le=MAX_RETRIES)]


class Defaults(_Model):
    timeout: Timeout = 300
    retries: Retries = 2
    # Reuse the answer of an earlier identical call (orchestrator/cache.py): AI steps
    # only, as a script runs for its effects.
    cache: bool = False


class Step(_Model):
    name: StepName
    model: str | None = None
    prompt: str | None = None
    system: str | None = None
    options: Annotated[dict[str, Any], AfterValidator(_options)] = Field(default_factory=dict)
    format: Annotated[Literal["json"] | dict[str, Any] | None, BeforeValidator(_format)] = None
    script: str | None = None
    input: JsonDict = Field(default_factory=dict)
    next: list[Branch] = Field(default_factory=list)
    needs: list[str] = Field(default_factory=list)
    timeout: Timeout | None = None
    retries: Retries | None = None
    max_visits: Annotated[int, Field(ge=1, le=MAX_VISITS)] | None = None
    cache: bool | None = None  # None: the workflow's defaults.cache
    # Where a run goes instead of a visit past max_visits: a loop that gives up gracefully
    # ("improve twice, then file a ticket and go on") rather than ending the run failed.
    on_max_visits: str | None = None

    _model_name: str | None = PrivateAttr(None)  # what `model` names through the workflow's models

    @property
    def kind(self) -> Literal["ai", "script"]:
        return "script" if self.script is not None else "ai"

    @property
    def actor(self) -> str:
        """The model name of an AI step (its alias resolved), the script path of a script step."""
        return (self.script if self.kind == "script" else self._model_name or self.model) or ""

    def templates(self) -> Iterator[tuple[TemplatePath, str]]:
        return template_fields(self.prompt, self.system, self.input)


def template_fields(prompt: Any, system: Any, input: Any) -> Iterator[tuple[TemplatePath, str]]:
    """Every template string of a step with its path; tolerant of ill-typed raw YAML values."""
    if isinstance(prompt, str):
        yield ("prompt",), prompt
    if isinstance(system, str):
        yield ("system",), system
    if isinstance(input, dict):
        yield from _strings(input, ("input",))


def _strings(value: Any, path: TemplatePath) -> Iterator[tuple[TemplatePath, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, (*path, i))


def format_path(path: TemplatePath) -> str:
    """("steps", 1, "next", 0, "to") -> "steps[1].next[0].to"."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and STEP_NAME.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{str(part)!r}]"
    return out


def _non_empty(steps: list[Step]) -> list[Step]:
    if not steps:
        raise ValueError("steps is empty: a workflow needs at least one step")
    return steps


def _models(value: dict[str, str]) -> dict[str, str]:
    for alias, model in value.items():
        if not STEP_NAME.fullmatch(alias):
            raise ValueError(f"invalid model alias {alias!r}: use letters, digits and '_', not starting with a digit")
        if not model.strip():
            raise ValueError(f"model alias {alias!r} names no model")
    return value


class Workflow(_Model):
    name: WorkflowName
    description: str | None = None
    # Aliases -> model names: steps say `model: grader`, and the fleet's actual models are
    # settings of the file (or of `workflow load --model grader=qwen2.5:7b`).
    models: Annotated[dict[str, str], AfterValidator(_models)] = Field(default_factory=dict)
    start: str | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    steps: Annotated[list[Step], AfterValidator(_non_empty)]

    _by_name: dict[str, Step] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        # The engine looks steps up by name for every result; the first of a name wins,
        # as duplicates are refused by validation anyway.
        for s in reversed(self.steps):
            self._by_name[s.name] = s
            if s.model is not None:
                s._model_name = self.models.get(s.model)

    def has_step(self, name: str) -> bool:
        return name in self._by_name

    def step(self, name: str) -> Step:
        """The step called `name`; KeyError if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"workflow {self.name} has no step {name!r}") from None

    @property
    def start_step(self) -> Step:
        return self.step(self.start) if self.start is not None else self.steps[0]

    def timeout_for(self, step: Step) -> float:
        return step.timeout if step.timeout is not None else self.defaults.timeout

    def retries_for(self, step: Step) -> int:
        return step.retries if step.retries is not None else self.defaults.retries

    def cached(self, step: Step) -> bool:
        """Whether the step's calls may be answered from the cache: AI steps only."""
        return step.kind == "ai" and (step.cache if step.cache is not None else self.defaults.cache)

    def fan_in_dependents(self, name: str) -> list[Step]:
        """The steps that wait for `name` (those whose needs include it)."""
        return [s for s in self.steps if name in s.needs]

    def reachable_from(self, name: str) -> set[str]:
        """Every step that can run after `name` (by a branch, a loop's exit or a fan-in);
        `name` itself only when a loop leads back to it."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            step = self.step(todo.pop())
            after = [b.to for b in step.next if not b.ends]
            after += [step.on_max_visits] if step.on_max_visits else []
            after += [s.name for s in self.fan_in_dependents(step.name)]
            for nxt in after:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def input_columns(self) -> set[str]:
        """Every column that a template reads as input.X or input['X']."""
        from orchestrator.workflow.render import analyze  # render imports this module

        columns: set[str] = set()
        for s in self.steps:
            for _, source in s.templates():
                try:
                    columns |= analyze(source).inputs
                except TemplateSyntaxError:  # validation reports it; it reads no column we can know
                    continue
        return columns
