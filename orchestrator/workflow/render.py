"""Sandboxed Jinja2 rendering of step templates, and what a template refers to.

Templates come from workflow files, so they run in Jinja's sandbox (no attribute that
starts with an underscore, no unsafe callables) and every undefined name is an error:
a prompt with a silent hole in it is worse than a failed interaction.

They render inside serve's transaction, so what one template may make is bounded too:
text past `max_rendered_chars` (a setting) is a render_error of that interaction, and
the operators that could build it in one step (`'x' * 10**9`, `9 ** 9 ** 9`) are refused
before they allocate, as is a `range` longer than MAX_RANGE.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import missing

from common.errors import RenderError
from orchestrator.workflow.model import TemplatePath, format_path

if TYPE_CHECKING:
    from orchestrator.workflow.model import Step

CONTEXT_NAMES = frozenset({"input", "steps", "run", "batch"})
MAX_RANGE = 10_000       # items a template's range() may make (Jinja's own sandbox allows 100,000)
MAX_EXPONENT = 1_000     # `a ** b` with a larger b makes numbers no prompt needs, at a cost serve pays


@lru_cache(maxsize=1)
def max_rendered_chars() -> int:
    from common.settings import get_settings

    return get_settings().max_rendered_chars


class _Lookup(Mapping[str, Any]):
    """`input` and `steps` as templates see them: a missing key explains itself."""

    __slots__ = ("_data", "_explain")

    def __init__(self, data: Mapping[str, Any], explain: Callable[[str], str]) -> None:
        self._data = data
        self._explain = explain

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def _no_column(name: str) -> str:
    return f"input has no column {name!r}"


def _no_output(name: str) -> str:
    return f"steps.{name} has no output in this run"


class _Undefined(StrictUndefined):
    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        obj, name = self._undefined_obj, self._undefined_name
        if self._undefined_hint:
            return self._undefined_hint
        if obj is missing:
            return f"unknown variable {name!r} (templates see input, steps, run and batch)"
        if isinstance(obj, _Lookup):
            return obj._explain(str(name))
        if isinstance(obj, Mapping):
            keys = ", ".join(repr(k) for k in list(obj)[:10]) or "none"
            return f"no key {name!r} in this mapping (its keys: {keys})"
        return super()._undefined_message


class _Environment(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        # Refused before the result exists: it would be built in serve's memory first.
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and \
                        len(seq) * times > max_rendered_chars():
                    raise SecurityError(f"the template repeats a value into more than {max_rendered_chars():,} "
                                        "items (WAVEFARM_MAX_RENDERED_CHARS)")
        elif isinstance(right, int) and not isinstance(left, float) and abs(right) > MAX_EXPONENT and \
                left not in (0, 1, -1):
            raise SecurityError(f"the template raises a number to the power {right}: at most {MAX_EXPONENT}")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Data before methods: a CSV column or a script output key called "items" or
        # "values" must read the value, not dict.items.
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (LookupError, TypeError):
                pass
        return super().getattr(obj, attribute)


def _finalize(value: Any) -> Any:
    # A JSON output printed into a prompt or a script input should read as JSON, which
    # scripts can parse and models understand, not as a Python repr with single quotes.
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _range(*args: int) -> range:
    made = range(*args)
    if len(made) > MAX_RANGE:
        raise SecurityError(f"range() of {len(made):,} items: a template may make at most {MAX_RANGE:,}")
    return made


ENV = _Environment(undefined=_Undefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize)
ENV.globals["range"] = _range


@lru_cache(maxsize=8192)
def _template(source: str) -> Template:
    # The engine renders the same few templates for 100,000s of interactions.
    return ENV.from_string(source)


@dataclass(frozen=True)
class StepRef:
    step: str
    attr: str | None  # the key read from steps.X: None for a bare steps.X or a computed key
    lineno: int


@dataclass(frozen=True)
class TemplateRefs:
    inputs: frozenset[str]
    steps: tuple[StepRef, ...]
    unknown: tuple[tuple[str, int], ...]  # (variable, line in the template)
    loads: tuple[int, ...]  # lines of include/import/extends: there is nothing to load


def _key(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return node.arg.value
    return None


def _on(node: nodes.Node, name: str) -> bool:
    return isinstance(node, nodes.Name) and node.name == name and node.ctx == "load"


@lru_cache(maxsize=8192)
def analyze(source: str) -> TemplateRefs:
    """What a template reads; raises jinja2.TemplateSyntaxError if it does not parse."""
    ast = ENV.parse(source)
    accesses = list(ast.find_all((nodes.Getattr, nodes.Getitem)))
    called = {id(c.node) for c in ast.find_all(nodes.Call)}

    inputs = frozenset(
        k for a in accesses if _on(a.node, "input") and id(a) not in called and (k := _key(a)) is not None
    )
    step_nodes = [a for a in accesses if _on(a.node, "steps") and _key(a) is not None]
    attr_of = {id(a.node): _key(a) for a in accesses}
    steps = tuple(StepRef(str(_key(a)), attr_of.get(id(a)), a.lineno) for a in step_nodes)

    free = meta.find_undeclared_variables(ast) - CONTEXT_NAMES - set(ENV.globals)
    first_line: dict[str, int] = {}
    for n in ast.find_all(nodes.Name):
        if n.name in free:
            first_line.setdefault(n.name, n.lineno)
    unknown = tuple(sorted(((name, first_line.get(name, 1)) for name in free), key=lambda u: (u[1], u[0])))
    loads = tuple(n.lineno for n in ast.find_all((nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)))
    return TemplateRefs(inputs, steps, unknown, loads)


def _render(step_name: str, path: TemplatePath, source: str, context: dict[str, Any], budget: list[int]) -> str:
    """`source` rendered; `budget` holds how many characters are left for this prompt or
    this script input, and is spent as the text is made (a runaway loop stops at it)."""
    try:
        parts = []
        for piece in _template(source).generate(context):
            budget[0] -= len(piece)
            if budget[0] < 0:
                raise SecurityError(f"the rendered text is longer than {max_rendered_chars():,} characters "
                                    "(WAVEFARM_MAX_RENDERED_CHARS)")
            parts.append(piece)
        return "".join(parts)
    except TemplateSyntaxError as exc:
        reason = f"template does not parse: {exc.message} (template line {exc.lineno})"
    except TemplateError as exc:  # undefined names, sandbox refusals
        reason = exc.message or type(exc).__name__
    except Exception as exc:  # a filter or an operator failing on this run's data
        reason = f"{type(exc).__name__}: {exc}"
    raise RenderError(f"step {step_name}, {format_path(path)}: {reason}")


def _render_value(step_name: str, path: TemplatePath, value: Any, context: dict[str, Any],
                  budget: list[int]) -> Any:
    if isinstance(value, str):
        return _render(step_name, path, value, context, budget)
    if isinstance(value, dict):
        return {k: _render_value(step_name, (*path, k), v, context, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_value(step_name, (*path, i), v, context, budget) for i, v in enumerate(value)]
    return value


def render_step(step: Step, context: dict[str, Any]) -> dict[str, Any]:
    """AI step: {"prompt", "system"}; script step: {"input": the rendered mapping}.

    `context` holds input (column -> text), steps (name -> {"output": ...}), run and batch.
    Raises RenderError naming the step and the field.
    """
    ctx = dict(context)
    ctx["input"] = _Lookup(context.get("input") or {}, _no_column)
    ctx["steps"] = _Lookup(context.get("steps") or {}, _no_output)
    budget = [max_rendered_chars()]  # for the whole input mapping, or for the prompt and system together
    if step.kind == "script":
        return {"input": _render_value(step.name, ("input",), step.input, ctx, budget)}
    system = None if step.system is None else _render(step.name, ("system",), step.system, ctx, budget)
    return {"prompt": _render(step.name, ("prompt",), step.prompt or "", ctx, budget), "system": system}
