"""Parse a workflow file and report every problem in it, each with its line and path.

Two passes over the same YAML: pydantic checks each value (types, ranges, unknown
keys), then the cross-step rules run over the raw data, tolerating ill-typed parts, so
that one typo never hides the other problems of the file.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import yaml
from jinja2 import TemplateSyntaxError
from pydantic import ValidationError

from common.errors import WorkflowInvalid
from common.scripts import locate_script
from common.structured import schema_problem
from orchestrator.workflow.model import (
    AI_ONLY_KEYS,
    END,
    SCRIPT_ONLY_KEYS,
    Branch,
    Defaults,
    FieldCondition,
    Step,
    TemplatePath,
    Workflow,
    format_path,
    template_fields,
)
from orchestrator.workflow.render import CONTEXT_NAMES, analyze

Loc = tuple[Any, ...]


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = ", ".join(p for p in (f"line {self.line}" if self.line else "", self.path) if p)
        return f"{where}: {self.message}" if where else self.message

    def located(self, source: str) -> str:
        """`FILE:LINE: path: message`, the form editors and CI logs jump to."""
        place = f"{source}:{self.line}" if self.line else source
        return f"{place}: {self.path}: {self.message}" if self.path else f"{place}: {self.message}"


class _Lines:
    """Maps a path such as ("steps", 1, "next", 0, "to") to its line in the file."""

    def __init__(self, root: yaml.Node) -> None:
        self.root = root

    def node(self, path: Loc) -> tuple[yaml.Node, yaml.Node | None]:
        """The deepest node on the path, and the key node when the last step was a key."""
        node, key_node = self.root, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                hit = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
                if hit is None:
                    break
                key_node, node = hit
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                key_node, node = None, node.value[part]
            else:
                break
        return node, key_node

    def line(self, path: Loc) -> int:
        node, key_node = self.node(path)
        return (key_node or node).start_mark.line + 1

    def template_line(self, path: Loc, lineno: int) -> int:
        """The file line of line `lineno` of the template at `path`."""
        node, key_node = self.node(path)
        if isinstance(node, yaml.ScalarNode) and node.style == "|":
            return node.start_mark.line + 1 + lineno  # a literal block keeps the template's lines
        return (key_node or node).start_mark.line + 1


class _Findings:
    def __init__(self, lines: _Lines) -> None:
        self.lines = lines
        self.problems: list[Problem] = []

    def add(self, path: Loc, message: str, line: int | None = None) -> None:
        if line is None:
            line = self.lines.line(path)
        self.problems.append(Problem(format_path(path), line, message))


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _step_label(steps: Any, index: int) -> str:
    raw = steps[index] if isinstance(steps, list) and index < len(steps) else None
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"step {name!r}" if isinstance(name, str) else f"step #{index + 1}"


# ---- pass 1: values -------------------------------------------------------------------

_FIELDS_AT = {"steps": set(Step.model_fields), "next": set(Branch.model_fields), "defaults": set(Defaults.model_fields),
              "when": set(FieldCondition.model_fields)}


def _file_loc(loc: tuple) -> tuple:
    # A branch's `when` is a marker or a field condition; pydantic names the variant it
    # tried in the location ("when", "field", ...), which is no key of the file.
    out = list(loc)
    for k in range(len(out) - 1):
        if out[k] == "when" and out[k + 1] in ("field", "marker"):
            del out[k + 1]
            break
    return tuple(out)


def _allowed_keys(loc: Loc) -> set[str]:
    for part in reversed(loc[:-1]):
        if isinstance(part, str):
            return _FIELDS_AT.get(part, set())
    return set(Workflow.model_fields)


def _value_problems(data: dict, findings: _Findings) -> Workflow | None:
    try:
        return Workflow.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    steps = data.get("steps")
    for err in errors:
        loc = _file_loc(tuple(err["loc"]))
        field = format_path(loc[-1:]) if loc and isinstance(loc[-1], str) else format_path(loc) or "file"
        kind, msg, given = err["type"], err["msg"], err.get("input")
        if kind == "missing":
            text = f"missing required key {loc[-1]!r}"
        elif kind == "extra_forbidden":
            text = f"unknown key {loc[-1]!r}{_suggest(str(loc[-1]), _allowed_keys(loc))}"
        elif kind in ("model_type", "dict_type") and len(loc) == 2 and loc[0] == "steps":
            text = f"should be a mapping with a name and a model or a script, got {given!r}"[:100]
        elif kind == "value_error":
            text = msg.removeprefix("Value error, ")
        else:
            text = f"{field} {msg.removeprefix('Input ')}".replace("a valid dictionary", "a mapping")
            if not isinstance(given, (dict, list)):
                text += f", got {given!r}"[:80]
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            label = _step_label(steps, loc[1])
            if label.removeprefix("step ") not in text:  # "invalid step name 'x'" names it already
                text = f"{label}: {text}"
        elif loc and loc[0] == "defaults":
            text = f"defaults: {text}"
        findings.add(loc, text)
    return None


# ---- pass 2: rules across steps ------------------------------------------------------


class _Graph:
    """Steps by index (a nameless or duplicate step still has edges), next + needs edges.

    Linear in the size of the file: strongly connected groups (Tarjan's algorithm) and,
    per group, what it reaches as a bitset (a Python int), filled in reverse topological
    order; a 3,000-step chain no longer costs a set of 3,000 per step.
    """

    def __init__(self, steps: list[Any]) -> None:
        self.raw = [s if isinstance(s, dict) else {} for s in steps]
        self.names = [s.get("name") if isinstance(s.get("name"), str) else None for s in self.raw]
        self.index: dict[str, int] = {}
        for i, name in enumerate(self.names):
            if name is not None:
                self.index.setdefault(name, i)
        self.edges: list[set[int]] = [set() for _ in self.raw]
        for i, s in enumerate(self.raw):
            for branch in s.get("next") if isinstance(s.get("next"), list) else []:
                target = branch.get("to") if isinstance(branch, dict) else None
                if isinstance(target, str) and target in self.index:
                    self.edges[i].add(self.index[target])
            exit_to = s.get("on_max_visits")
            if isinstance(exit_to, str) and exit_to in self.index:
                # The exit runs instead of a visit past the bound: this step has run by then.
                self.edges[i].add(self.index[exit_to])
            for need in s.get("needs") if isinstance(s.get("needs"), list) else []:
                # A step needing itself is reported as such, not also as an unbounded loop.
                if isinstance(need, str) and need in self.index and self.index[need] != i:
                    self.edges[self.index[need]].add(i)  # a need leads to the step that waits for it
        everyone = set(range(len(self.raw)))
        self._groups, self._group_of = _strong_groups(self.edges, everyone)
        self._reach_bits = self._reach_of_groups()

    def label(self, i: int) -> str:
        return self.names[i] or f"#{i + 1}"

    def reaches(self, i: int, j: int) -> bool:
        """Whether j can run after i: reachable by one edge or more (i itself only through a cycle)."""
        return bool(self._reach_bits[self._group_of[i]] >> j & 1)

    def reached_from(self, i: int) -> set[int]:
        bits = self._reach_bits[self._group_of[i]]
        return {j for j in range(len(self.raw)) if bits >> j & 1}

    def _reach_of_groups(self) -> list[int]:
        # Tarjan yields a group only after every group it reaches: one pass fills them.
        bits = [0] * len(self._groups)
        for g, members in enumerate(self._groups):
            reach = 0
            cyclic = len(members) > 1 or any(m in self.edges[m] for m in members)
            for m in members:
                if cyclic:
                    reach |= 1 << m
                for k in self.edges[m]:
                    if self._group_of[k] != g:
                        reach |= (1 << k) | bits[self._group_of[k]]
            bits[g] = reach
        return bits

    def bounded(self, i: int) -> bool:
        v = self.raw[i].get("max_visits")
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    def unbounded_cycles(self) -> list[list[int]]:
        """One cycle per group of unbounded steps that loop among themselves."""
        free = {i for i in range(len(self.raw)) if not self.bounded(i)}
        groups, _ = _strong_groups(self.edges, free)
        cycles = []
        for members in groups:
            if len(members) > 1 or any(m in self.edges[m] for m in members):
                cycles.append(self._cycle_through(min(members), set(members)))
        return sorted(cycles, key=min)

    def _cycle_through(self, i: int, allowed: set[int]) -> list[int]:
        """The shortest cycle from i back to i inside `allowed`, or []."""
        parent: dict[int, int] = {}
        frontier = [i]
        while frontier:
            nxt = []
            for j in frontier:
                for k in sorted(self.edges[j]):
                    if k not in allowed:
                        continue
                    if k == i:
                        path = [j]
                        while path[-1] != i:
                            path.append(parent[path[-1]])
                        return list(reversed(path))
                    if k not in parent:
                        parent[k] = j
                        nxt.append(k)
            frontier = nxt
        return []


def _strong_groups(edges: list[set[int]], nodes: set[int]) -> tuple[list[list[int]], dict[int, int]]:
    """Tarjan's strongly connected groups of the graph restricted to `nodes`, iteratively
    (a long chain must not exhaust Python's stack), in reverse topological order; and
    each node's group."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    groups: list[list[int]] = []
    group_of: dict[int, int] = {}
    counter = 0
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(k for k in edges[root] if k in nodes)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            advanced = False
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(k for k in edges[w] if k in nodes))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                members = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group_of[w] = len(groups)
                    members.append(w)
                    if w == v:
                        break
                groups.append(sorted(members))
    return groups, group_of


def _step_shape(i: int, s: dict, label: str, findings: _Findings) -> None:
    has_model = s.get("model") is not None
    has_script = s.get("script") is not None
    where = ("steps", i)
    if has_model and has_script:
        findings.add((*where, "script"), f"{label} has both model and script: a step is an AI step or a script step")
    elif not has_model and not has_script:
        if s.get("prompt") is not None:
            findings.add((*where, "prompt"), f"{label} has a prompt but no model")
        else:
            findings.add(where, f"{label} has neither model nor script")
    elif has_model:
        if s.get("prompt") is None:
            findings.add((*where, "model"), f"AI {label} has no prompt")
        for key in SCRIPT_ONLY_KEYS:
            if key in s:
                findings.add((*where, key), f"AI {label} cannot have {key} (only script steps take an input mapping)")
    else:
        for key in AI_ONLY_KEYS:
            if key in s:
                findings.add((*where, key), f"script {label} cannot have {key} (it is for AI steps)")
        if s.get("cache") is True:
            findings.add((*where, "cache"), f"script {label} cannot be cached: a script runs for its effects "
                                            "(only AI steps take cache: true)")


def _script_path(i: int, script: Any, label: str, scripts_dir: Path | None, findings: _Findings) -> None:
    if not isinstance(script, str):
        return
    path = ("steps", i, "script")
    posix, windows = PurePosixPath(script), PureWindowsPath(script)
    if not script.strip():
        findings.add(path, f"{label}: script path is empty")
    elif posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        findings.add(path, f"{label}: script path {script!r} must stay inside the scripts directory (relative, no '..')")
    elif scripts_dir is not None:
        # The runner's own rule: a symlink that leads out, a file that is not executable,
        # are refused here as they would be at run time.
        found, problem = locate_script(script, scripts_dir)
        if found is None:
            findings.add(path, f"{label}: {problem}")


def _templates(i: int, s: dict, label: str, graph: _Graph, findings: _Findings) -> None:
    for field, source in template_fields(s.get("prompt"), s.get("system"), s.get("input")):
        path: TemplatePath = ("steps", i, *field)
        at = f"{label}, {format_path(field)}"

        def line(lineno: int, path: TemplatePath = path) -> int:
            return findings.lines.template_line(path, lineno)

        try:
            refs = analyze(source)
        except TemplateSyntaxError as exc:
            findings.add(path, f"{at}: template does not parse: {exc.message}", line(exc.lineno or 1))
            continue
        for name, lineno in refs.unknown:
            hint = _suggest(name, CONTEXT_NAMES) or " (templates see input, steps, run and batch)"
            findings.add(path, f"{at}: unknown variable {name!r}{hint}", line(lineno))
        for lineno in refs.loads:
            findings.add(path, f"{at}: templates cannot include, import or extend other templates", line(lineno))
        for ref in refs.steps:
            j = graph.index.get(ref.step)
            if j is None:
                findings.add(path, f"{at}: unknown step {ref.step!r} in steps.{ref.step}{_suggest(ref.step, graph.index)}",
                           line(ref.lineno))
            elif ref.attr is not None and ref.attr != "output":
                findings.add(path, f"{at}: steps.{ref.step}.{ref.attr} is not defined; a step only has steps.{ref.step}.output",
                           line(ref.lineno))
            elif not graph.reaches(j, i):
                why = "it is never run before this one" if j != i else "this step never runs again after itself"
                findings.add(path, f"{at}: steps.{ref.step} can have no output when {label} runs ({why})", line(ref.lineno))


def _model_alias(i: int, s: dict, label: str, aliases: Any, findings: _Findings) -> None:
    # With a models mapping, steps name models only through it: a literal name beside
    # the aliases is usually a typo of one, and would wait for a host that never comes.
    model = s.get("model")
    if isinstance(aliases, dict) and aliases and isinstance(model, str) and model not in aliases:
        findings.add(("steps", i, "model"), f"{label}: model {model!r} is not one of the file's models"
                                          f"{_suggest(model, aliases)} (it has: {', '.join(aliases)})")


def _format(i: int, s: dict, label: str, findings: _Findings) -> None:
    fmt = s.get("format")
    if isinstance(fmt, dict):
        problem = schema_problem(fmt)
        if problem:
            findings.add(("steps", i, "format"), f"{label}: format is not a valid JSON Schema: {problem}")


def _field_condition(i: int, j: int, s: dict, when: dict, label: str, findings: _Findings) -> None:
    """A field condition reads JSON: a script's object, or an AI step's structured answer."""
    path = ("steps", i, "next", j, "when")
    field = when.get("field")
    if s.get("model") is None or not isinstance(field, str):
        return  # a script step answers a JSON object; a bad field is a value problem
    fmt = s.get("format")
    if fmt is None:
        findings.add(path, f"{label}: a condition on field {field!r} needs JSON output: "
                         "give the step a format (a JSON Schema, or \"json\")")
        return
    props = fmt.get("properties") if isinstance(fmt, dict) else None
    head = field.split(".")[0]
    if isinstance(props, dict) and props and head not in props:
        findings.add(path, f"{label}: field {head!r} is not among the format's properties"
                         f"{_suggest(head, props)} (it has: {', '.join(props)})")


def _rule_problems(data: dict, scripts_dir: Path | None, findings: _Findings) -> None:
    steps = data.get("steps")
    if not isinstance(steps, list):
        return
    graph = _Graph(steps)
    first_at: dict[str, int] = {}
    for i, s in enumerate(graph.raw):
        name, label = graph.names[i], _step_label(steps, i)
        if name is not None:
            if name in first_at:
                line = findings.lines.line(("steps", first_at[name], "name"))
                findings.add(("steps", i, "name"), f"duplicate step name {name!r} (first defined at line {line})")
            first_at.setdefault(name, i)
        if not s:
            continue
        _step_shape(i, s, label, findings)
        _script_path(i, s.get("script"), label, scripts_dir, findings)
        _format(i, s, label, findings)
        _model_alias(i, s, label, data.get("models"), findings)
        exit_to = s.get("on_max_visits")
        if isinstance(exit_to, str):
            if s.get("max_visits") is None:
                findings.add(("steps", i, "on_max_visits"), f"{label}: on_max_visits needs max_visits (the bound it acts on)")
            if exit_to not in graph.index:
                findings.add(("steps", i, "on_max_visits"),
                           f"{label}: on_max_visits names unknown step {exit_to!r}{_suggest(exit_to, graph.index)}")
            elif exit_to == name:
                findings.add(("steps", i, "on_max_visits"), f"{label}: on_max_visits cannot name the step itself")
        for j, branch in enumerate(s.get("next") if isinstance(s.get("next"), list) else []):
            target = branch.get("to") if isinstance(branch, dict) else None
            if isinstance(target, str) and target != END and target not in graph.index:
                findings.add(("steps", i, "next", j, "to"),
                           f"{label}: branch leads to unknown step {target!r}{_suggest(target, graph.index)}"
                           + (f" (to end the run on purpose: to: {END}, with an outcome)" if target.startswith("$")
                              else ""))
            if isinstance(branch, dict) and branch.get("outcome") is not None and target != END:
                findings.add(("steps", i, "next", j, "outcome"),
                           f"{label}: a branch's outcome names how the run ends: it goes with to: {END}, "
                           f"not to: {target!r}")
            if isinstance(branch, dict) and isinstance(branch.get("when"), dict):
                _field_condition(i, j, s, branch["when"], label, findings)
        for j, need in enumerate(s.get("needs") if isinstance(s.get("needs"), list) else []):
            if isinstance(need, str) and need == name:
                findings.add(("steps", i, "needs", j), f"{label} needs itself")
            elif isinstance(need, str) and need not in graph.index:
                findings.add(("steps", i, "needs", j), f"{label} needs unknown step {need!r}{_suggest(need, graph.index)}")
        _templates(i, s, label, graph, findings)

    start = data.get("start")
    if start is not None and isinstance(start, str) and start not in graph.index:
        findings.add(("start",), f"start names unknown step {start!r}{_suggest(start, graph.index)}")
    elif graph.raw:
        origin = graph.index[start] if isinstance(start, str) else 0
        reached = graph.reached_from(origin) | {origin}
        for i, name in enumerate(graph.names):
            # Nameless and duplicate steps are reported as such already.
            if i not in reached and name is not None and graph.index[name] == i:
                findings.add(("steps", i, "name"),
                           f"step {name!r} is unreachable: no branch or needs leads to it from start step "
                           f"{graph.label(origin)!r}")

    for cycle in graph.unbounded_cycles():
        loop = " -> ".join(graph.label(k) for k in [*cycle, cycle[0]])
        first = min(cycle)
        findings.add(("steps", first, "name"), f"loop with no bound: {loop}; give one of these steps max_visits")


# ---- entry points --------------------------------------------------------------------


def _override_models(data: dict, models: Mapping[str, str], lines: _Lines) -> list[Problem]:
    aliases = data.get("models")
    if not isinstance(aliases, dict):
        return [Problem("", lines.line(()), f"--model {k}={v}: the file has no models mapping to override")
                for k, v in models.items()]
    problems = []
    for alias, model in models.items():
        if alias not in aliases:
            problems.append(Problem("models", lines.line(("models",)), f"--model {alias}={model}: the file has no model "
                                    f"alias {alias!r}{_suggest(alias, aliases)} (it has: {', '.join(aliases)})"))
        aliases[alias] = model
    return problems


# libyaml's parser where PyYAML was built with it (its wheels are): ten times faster on a
# large file, with the same nodes and marks.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check(text: str, scripts_dir: Path | None,
           models: Mapping[str, str] | None = None) -> tuple[list[Problem], Workflow | None]:
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        too_big = _shape_problem(root) if root is not None else None
        if too_big:
            return [too_big], None
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark is not None:  # e.g. where an unclosed quote began
            problem = f"{problem} ({context} started at line {context_mark.line + 1})"
        return [Problem("", mark.line + 1 if mark else None, f"YAML syntax error: {problem}")], None
    except RecursionError:  # the YAML parser's own stack, thousands of levels down
        return [Problem("", None, f"the file is nested deeper than {MAX_YAML_DEPTH} levels: no workflow is")], None
    finally:
        loader.dispose()
    if root is None:
        return [Problem("", None, "the file is empty: a workflow needs name and steps")], None
    lines = _Lines(root)
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "nothing"
        return [Problem("", lines.line(()), f"the top level must be a mapping with name and steps, got {kind}")], None

    findings = _Findings(lines)
    if models:
        findings.problems.extend(_override_models(data, models, lines))
    _duplicate_keys(root, (), findings)
    workflow = _value_problems(data, findings)
    _rule_problems(data, scripts_dir, findings)
    problems = sorted(dict.fromkeys(findings.problems), key=lambda p: p.line or 0)
    return problems, None if problems else workflow


# A workflow is a few hundred values; an alias may repeat a part of the file, but a file
# whose aliases multiply it past these bounds is an alias bomb (500 bytes that expand to
# gigabytes), refused before it is expanded, stored or rendered.
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _shape_problem(root: yaml.Node) -> Problem | None:
    """Why the composed file is too large or too deep once its aliases are expanded (or
    refers to itself), or None. One pass over the nodes, each counted once however many
    aliases point at it, so the check costs what the file is, not what it expands to."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    work: list[tuple[yaml.Node, bool]] = [(root, False)]
    while work:
        node, done = work.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            line = node.start_mark.line + 1
            if size[key] > MAX_YAML_VALUES:
                return Problem("", line, f"the file's aliases expand it to more than {MAX_YAML_VALUES:,} values "
                                         "(a YAML alias bomb?): write the values out, or alias less")
            if depth[key] > MAX_YAML_DEPTH:
                return Problem("", line, f"the file is nested deeper than {MAX_YAML_DEPTH} levels: no workflow is")
            continue
        if key in size:
            continue
        if key in on_path:
            return Problem("", node.start_mark.line + 1, "an alias refers to a value that contains it: "
                                                         "the file would never end")
        on_path.add(key)
        work.append((node, True))
        work.extend((k, False) for k in _children(node) if id(k) not in size)
    return None


def _duplicate_keys(node: yaml.Node, path: Loc, findings: _Findings, seen_nodes: set[int] | None = None) -> None:
    # YAML silently keeps the last of two equal keys: a second `prompt:` would hide the first.
    # A node an alias repeats is looked at once (its duplicates are at its own lines).
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key is not None and key in seen:
                findings.add((*path, key), f"duplicate key {key!r}", k.start_mark.line + 1)
            if key is not None:
                seen.add(key)
            _duplicate_keys(v, (*path, key), findings, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, (*path, i), findings, seen_nodes)


def validate_text(text: str, source: str = "<workflow>", scripts_dir: Path | None = None,
                  models: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem of a workflow file, in file order; [] means it is valid.

    `models` overrides entries of the file's models mapping (alias -> model name)."""
    return _check(text, scripts_dir, models)[0]


def load_text(text: str, source: str = "<workflow>", scripts_dir: Path | None = None,
              models: Mapping[str, str] | None = None) -> Workflow:
    """The workflow of a valid file; raises WorkflowInvalid(source, problems) otherwise."""
    problems, workflow = _check(text, scripts_dir, models)
    if workflow is None:
        raise WorkflowInvalid(source, problems)
    return workflow


def load_file(path: Path, scripts_dir: Path | None = None, models: Mapping[str, str] | None = None) -> Workflow:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise WorkflowInvalid(str(path), [Problem("", None, f"cannot read the file: {reason}")]) from exc
    return load_text(text, str(path), scripts_dir, models)
