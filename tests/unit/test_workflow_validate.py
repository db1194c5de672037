"""Workflow files: every problem is reported at once, naming its culprit, on the right line.

Inline cases mark the line the problem must point at with `# <-`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from common.errors import WorkflowInvalid
from orchestrator.workflow import Problem, Workflow, load_file, load_text, validate_text

HERE = Path(__file__).parent / "workflows"


def _text(yaml_text: str) -> str:
    return textwrap.dedent(yaml_text).lstrip("\n")


def _marked_line(text: str) -> int:
    (line,) = [n for n, row in enumerate(text.splitlines(), 1) if "# <-" in row]
    return line


def _scripts(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / name).write_text("print('{}')\n")
    return tmp_path


# ---- valid files ---------------------------------------------------------------------


def test_the_good_pipeline_has_no_problems(tmp_path):
    text = (HERE / "good_pipeline.yaml").read_text()
    assert validate_text(text, scripts_dir=_scripts(tmp_path, "save_summary.py")) == []


def test_the_good_pipeline_loads_with_everything_in_place():
    wf = load_file(HERE / "good_pipeline.yaml")
    assert wf.name == "good.pipeline-1"
    assert [s.name for s in wf.steps] == ["extract", "grade", "improve", "skills", "save"]
    assert wf.start_step.name == "extract"
    extract, save = wf.step("extract"), wf.step("save")
    assert (extract.kind, extract.actor) == ("ai", "gemma3:1b")
    assert (save.kind, save.actor) == ("script", "save_summary.py")
    assert extract.options == {"temperature": 0, "num_ctx": 4096, "seed": 1}
    assert wf.step("skills").format["required"] == ["skills"]
    assert [(b.when, b.to) for b in wf.step("grade").next] == [("[PASS]", "save"), ("[FAIL]", "improve")]
    assert save.input["nested"] == {"run": "{{ run }}", "list": ["{{ batch }}", 3, True]}


def test_defaults_and_per_step_overrides():
    wf = load_file(HERE / "good_pipeline.yaml")
    assert wf.timeout_for(wf.step("extract")) == 120 and wf.timeout_for(wf.step("grade")) == 60
    assert wf.retries_for(wf.step("improve")) == 0 and wf.retries_for(wf.step("grade")) == 1
    bare = load_text("name: w\nsteps: [{name: a, model: m, prompt: p}]\n")
    assert (bare.timeout_for(bare.steps[0]), bare.retries_for(bare.steps[0])) == (300, 2)


def test_graph_helpers():
    wf = load_file(HERE / "good_pipeline.yaml")
    assert [s.name for s in wf.fan_in_dependents("skills")] == ["save"]
    assert wf.fan_in_dependents("save") == []
    with pytest.raises(KeyError):
        wf.step("nope")
    started = load_text("name: w\nstart: b\nsteps:\n  - {name: a, model: m, prompt: p}\n"
                        "  - {name: b, model: m, prompt: p, next: [{when: '*', to: a}]}\n")
    assert started.start_step.name == "b"


def test_input_columns_are_every_input_reference():
    wf = load_file(HERE / "good_pipeline.yaml")
    assert wf.input_columns() == {"company", "job_description", "posting_id"}
    # input.get(...) is an optional read, not a column the CSV must have.
    wf = load_text("name: w\nsteps: [{name: a, model: m, prompt: \"{{ input.get('x') }} {{ input['y z'] }}\"}]\n")
    assert wf.input_columns() == {"y z"}


def test_a_dumped_workflow_loads_back_the_same():
    wf = load_file(HERE / "good_pipeline.yaml")
    assert Workflow.model_validate(wf.model_dump(mode="json")) == wf


@pytest.mark.parametrize(
    "yaml_text",
    [
        pytest.param(
            """
            name: w
            steps:
              - name: grade
                model: m
                max_visits: 3
                prompt: "again: {{ steps.grade.output if steps.grade is defined else '' }}"
                next: [{when: "[FAIL]", to: grade}]
            """,
            id="a looping step may read its own output",
        ),
        pytest.param(
            """
            name: w
            steps:
              - name: a
                model: m
                prompt: |
                  {% for k in input %}{{ k }}={{ input[k] }} {% endfor %}{% set n = 3 %}{{ n }}
                  {{ range(2) | list }} {{ run }} {{ batch }} {{ input.get('x', 'none') }}
                format: json
            """,
            id="locals, globals, run and batch are known names",
        ),
        pytest.param(
            """
            name: w
            steps:
              - name: a
                model: m
                prompt: p
                next: [{when: "*", to: b}, {when: "*", to: c}]
              - {name: b, model: m, prompt: "{{ steps['a'].output }}"}
              - {name: c, model: m, prompt: p}
              - name: d
                script: sub/d.py
                needs: [b, c]
                input: {b: "{{ steps.b.output }}", c: "{{ steps.c.output.items }}", n: 4}
            """,
            id="a fan-in step is reached through its needs",
        ),
        pytest.param(
            """
            name: w
            steps:
              - name: check
                script: s.py
                next:
                  - {when: {field: valid, equals: false}, to: $end, outcome: rejected}
                  - {when: {field: valid, equals: true}, to: go}
              - {name: go, model: m, prompt: p}
            """,
            id="a branch may end the run on purpose with an outcome",
        ),
    ],
)
def test_valid_shapes(yaml_text):
    assert validate_text(_text(yaml_text)) == []


# ---- one problem at a time -------------------------------------------------------------

CASES = [
    # (id, yaml with `# <-` on the expected line, expected path, words the message must hold, problem count)
    ("yaml syntax error", """
        name: w
        steps:
          - name: a
            model: m
            prompt: a: b          # <-
        """, "", ["YAML syntax error", "mapping values are not allowed"], 1),
    ("top level not a mapping", """
        - name: a             # <-
        """, "", ["top level must be a mapping", "list"], 1),
    ("missing name", """
        description: nameless # <-
        steps: [{name: a, model: m, prompt: p}]
        """, "name", ["missing required key 'name'"], 1),
    ("missing steps", """
        name: w               # <-
        """, "steps", ["missing required key 'steps'"], 1),
    ("empty steps", """
        name: w
        steps: []             # <-
        """, "steps", ["steps is empty"], 1),
    ("invalid workflow name", """
        name: 2fast           # <-
        steps: [{name: a, model: m, prompt: p}]
        """, "name", ["invalid workflow name '2fast'"], 1),
    ("unknown key (typo)", """
        name: w
        steps:
          - name: extract
            model: m
            prompt: p
            retires: 2        # <-
        """, "steps[0].retires", ["step 'extract'", "unknown key 'retires'", "did you mean 'retries'"], 1),
    ("unknown key in defaults", """
        name: w
        defaults:
          timout: 3           # <-
        steps: [{name: a, model: m, prompt: p}]
        """, "defaults.timout", ["defaults", "unknown key 'timout'", "did you mean 'timeout'"], 1),
    ("wrong type", """
        name: w
        steps:
          - name: extract
            model: m
            prompt: p
            retries: two      # <-
        """, "steps[0].retries", ["step 'extract'", "retries should be a valid integer", "'two'"], 1),
    ("timeout not positive", """
        name: w
        steps:
          - name: extract
            model: m
            prompt: p
            timeout: 0        # <-
        """, "steps[0].timeout", ["step 'extract'", "timeout should be greater than 0"], 1),
    ("default timeout not positive", """
        name: w
        defaults:
          timeout: -5         # <-
        steps: [{name: a, model: m, prompt: p}]
        """, "defaults.timeout", ["defaults", "timeout should be greater than 0", "-5"], 1),
    ("retries negative", """
        name: w
        steps:
          - name: extract
            model: m
            prompt: p
            retries: -1       # <-
        """, "steps[0].retries", ["step 'extract'", "retries should be greater than or equal to 0"], 1),
    ("max_visits below one", """
        name: w
        steps:
          - name: extract
            model: m
            prompt: p
            max_visits: 0     # <-
        """, "steps[0].max_visits", ["step 'extract'", "max_visits should be greater than or equal to 1"], 1),
    ("model and script", """
        name: w
        steps:
          - name: extract
            model: m
            script: s.py      # <-
        """, "steps[0].script", ["step 'extract'", "both model and script"], 1),
    ("neither model nor script", """
        name: w
        steps:
          - name: extract     # <-
            timeout: 3
        """, "steps[0]", ["step 'extract'", "neither model nor script"], 1),
    ("model without prompt", """
        name: w
        steps:
          - name: extract
            model: m          # <-
        """, "steps[0].model", ["step 'extract'", "no prompt"], 1),
    ("prompt without model", """
        name: w
        steps:
          - name: extract
            prompt: p         # <-
        """, "steps[0].prompt", ["step 'extract'", "prompt but no model"], 1),
    ("script with prompt", """
        name: w
        steps:
          - name: save
            script: s.py
            prompt: p         # <-
        """, "steps[0].prompt", ["script step 'save'", "cannot have prompt"], 1),
    ("input on an AI step", """
        name: w
        steps:
          - name: extract
            model: m
            prompt: p
            input: {a: 1}     # <-
        """, "steps[0].input", ["AI step 'extract'", "cannot have input"], 1),
    ("duplicate step names", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            next: [{when: "*", to: b}]
          - {name: b, model: m, prompt: p}
          - {name: a, model: m, prompt: q}   # <-
        """, "steps[2].name", ["duplicate step name 'a'", "first defined at line 3"], 1),
    ("invalid step name", """
        name: w
        steps:
          - name: grade-1     # <-
            model: m
            prompt: p
        """, "steps[0].name", ["invalid step name 'grade-1'", "steps.NAME"], 1),
    ("branch to a missing step", """
        name: w
        steps:
          - name: grade
            model: m
            prompt: p
            next:
              - when: "*"
                to: grdae     # <-
        """, "steps[0].next[0].to", ["step 'grade'", "branch leads to unknown step 'grdae'", "did you mean 'grade'"], 1),
    ("start names a missing step", """
        name: w
        start: extrct         # <-
        steps: [{name: extract, model: m, prompt: p}]
        """, "start", ["start names unknown step 'extrct'", "did you mean 'extract'"], 1),
    ("needs a missing step", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            next: [{when: "*", to: b}]
          - name: b
            model: m
            prompt: p
            needs: [a, ghost] # <-
        """, "steps[1].needs[1]", ["step 'b'", "needs unknown step 'ghost'"], 1),
    ("needs itself", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            needs: [a]        # <-
        """, "steps[0].needs[0]", ["step 'a' needs itself"], 1),
    ("empty when", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            next:
              - when: ""      # <-
                to: b
          - {name: b, model: m, prompt: p}
        """, "steps[0].next[0].when", ["step 'a'", "when is empty"], 1),
    ("unquoted marker read as a list", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            next:
              - when: [PASS]  # <-
                to: b
          - {name: b, model: m, prompt: p}
        """, "steps[0].next[0].when", ["step 'a'", "quote markers", '"[PASS]"'], 1),
    ("unreachable step", """
        name: w
        steps:
          - {name: a, model: m, prompt: p}
          - name: orphan      # <-
            model: m
            prompt: p
        """, "steps[1].name", ["step 'orphan' is unreachable", "start step 'a'"], 1),
    ("loop with no bound", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            next: [{when: "*", to: grade}]
          - name: grade       # <-
            model: m
            prompt: p
            next: [{when: "[FAIL]", to: improve}]
          - name: improve
            model: m
            prompt: p
            next: [{when: "*", to: grade}]
        """, "steps[1].name", ["loop with no bound", "grade -> improve -> grade", "max_visits"], 1),
    ("loop through needs with no bound", """
        name: w
        steps:
          - name: a           # <-
            model: m
            prompt: p
            next: [{when: "*", to: b}]
          - name: b
            model: m
            prompt: p
            needs: [a]
            next: [{when: "again", to: a}]
        """, "steps[0].name", ["loop with no bound", "a -> b -> a"], 1),
    ("template does not parse", """
        name: w
        steps:
          - name: a
            model: m
            prompt: |
              first line
              {{ input.text }}
              third line
              {% if %}        # <-
        """, "steps[0].prompt", ["step 'a', prompt", "template does not parse"], 1),
    ("unknown variable", """
        name: w
        steps:
          - name: a
            model: m
            prompt: |
              fine: {{ input.x }}
              typo: {{ inptu.x }}   # <-
        """, "steps[0].prompt", ["step 'a', prompt", "unknown variable 'inptu'", "did you mean 'input'"], 1),
    ("unknown step in a template", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            next: [{when: "*", to: b}]
          - name: b
            script: b.py
            input:
              x: "{{ steps.extrct.output }}"   # <-
        """, "steps[1].input.x", ["step 'b', input.x", "unknown step 'extrct'"], 1),
    ("step attribute other than output", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            next: [{when: "*", to: b}]
          - name: b
            model: m
            prompt: "{{ steps.a.result }}"    # <-
        """, "steps[1].prompt", ["step 'b', prompt", "steps.a.result", "steps.a.output"], 1),
    ("step that never ran before", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            next: [{when: "*", to: b}, {when: "*", to: c}]
          - {name: b, model: m, prompt: p}
          - name: c
            script: c.py
            input:
              nested: {list: [1, "{{ steps.b.output }}"]}   # <-
        """, "steps[2].input.nested.list[1]", ["step 'c', input.nested.list[1]", "steps.b can have no output"], 1),
    ("subscript reference to a step that never ran before", """
        name: w
        steps:
          - name: a
            model: m
            prompt: "{{ steps['b'].output }}"   # <-
            next: [{when: "*", to: b}]
          - {name: b, model: m, prompt: p}
        """, "steps[0].prompt", ["step 'a', prompt", "steps.b can have no output"], 1),
    ("own output without a loop", """
        name: w
        steps:
          - name: a
            model: m
            prompt: "{{ steps.a.output }}"   # <-
        """, "steps[0].prompt", ["steps.a can have no output", "never runs again"], 1),
    ("include in a template", """
        name: w
        steps:
          - name: a
            model: m
            prompt: "{% include 'other.txt' %}"   # <-
        """, "steps[0].prompt", ["step 'a', prompt", "cannot include"], 1),
    ("absolute script path", """
        name: w
        steps:
          - name: save
            script: /usr/bin/save.py   # <-
        """, "steps[0].script", ["step 'save'", "'/usr/bin/save.py'", "inside the scripts directory"], 1),
    ("script path with ..", """
        name: w
        steps:
          - name: save
            script: ../save.py   # <-
        """, "steps[0].script", ["step 'save'", "'../save.py'", "inside the scripts directory"], 1),
    ("bad format", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            format: xml       # <-
        """, "steps[0].format", ["step 'a'", "format must be \"json\" or a mapping", "'xml'"], 1),
    ("a YAML date cannot travel as JSON", """
        name: w
        steps:
          - name: save
            script: s.py
            input:            # <-
              day: 2024-01-31
        """, "steps[0].input", ["step 'save'", "day", "quote it"], 1),
    ("duplicate key", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            prompt: q         # <-
        """, "steps[0].prompt", ["duplicate key 'prompt'"], 1),
    ("a field condition on an AI step without a format", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            next:
              - when: {field: verdict, equals: PASS}   # <-
                to: b
          - name: b
            script: s.py
        """, "steps[0].next[0].when", ["step 'a'", "field 'verdict'", "needs JSON output", "format"], 1),
    ("a field condition on a property the schema lacks", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            format: {type: object, properties: {verdict: {enum: [PASS, FAIL]}}}
            next:
              - when: {field: verdit, equals: PASS}   # <-
                to: b
          - name: b
            script: s.py
        """, "steps[0].next[0].when", ["'verdit'", "did you mean 'verdict'"], 1),
    ("a field condition that tests nothing", """
        name: w
        steps:
          - name: a
            script: s.py
            next:
              - when: {field: valid}   # <-
                to: b
          - name: b
            script: s.py
        """, "steps[0].next[0].when", ["step 'a'", "tests nothing", "equals"], 1),
    ("a field condition with an unknown key", """
        name: w
        steps:
          - name: a
            script: s.py
            next:
              - when: {field: valid, equal: true}   # <-
                to: b
          - name: b
            script: s.py
        """, "steps[0].next[0].when.equal", ["unknown key 'equal'", "did you mean 'equals'"], 1),
    ("a format that is not a JSON Schema", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            format: {type: objekt}   # <-
        """, "steps[0].format", ["step 'a'", "not a valid JSON Schema"], 1),
    ("a model that is not one of the file's aliases", """
        name: w
        models: {grader: "qwen2.5:7b", writer: "gemma3:1b"}
        steps:
          - name: a
            model: grade          # <-
            prompt: p
        """, "steps[0].model", ["model 'grade' is not one of the file's models", "did you mean 'grader'"], 1),
    ("on_max_visits names an unknown step", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            max_visits: 2
            on_max_visits: tiket     # <-
            next: [{when: "*", to: a}]
          - name: ticket
            model: m
            prompt: "{{ steps.a.output }}"
        """, "steps[0].on_max_visits", ["unknown step 'tiket'", "did you mean 'ticket'"], 3),  # + ticket unreachable
    ("on_max_visits without max_visits", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            on_max_visits: b     # <-
          - name: b
            model: m
            prompt: p
        """, "steps[0].on_max_visits", ["needs max_visits"], 1),
    # Numbers the farm computes with are bounded where they are written: past the bounds
    # they overflowed a deadline or a counter inside serve and stopped every batch.
    ("a timeout of thirty thousand years", """
        name: w
        defaults:
          timeout: 1.0e+13     # <-
        steps: [{name: a, model: m, prompt: p}]
        """, "defaults.timeout", ["less than or equal to 86400"], 1),
    ("an infinite timeout", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            timeout: .inf     # <-
        """, "steps[0].timeout", ["finite number"], 1),
    ("three billion retries", """
        name: w
        defaults:
          retries: 3000000000     # <-
        steps: [{name: a, model: m, prompt: p}]
        """, "defaults.retries", ["less than or equal to 100"], 1),
    ("a loop bound of a million", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            max_visits: 1000000     # <-
            next: [{when: "*", to: a}]
        """, "steps[0].max_visits", ["less than or equal to 1000"], 1),
    ("a NaN in the options", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            options: {temperature: .nan}     # <-
        """, "steps[0].options", ["temperature is nan", "JSON cannot carry"], 1),
    ("a context size no server takes", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            options: {num_ctx: 99999999999}     # <-
        """, "steps[0].options", ["num_ctx is 99999999999", "between 1 and"], 1),
    ("an integer past what JSON readers agree on", """
        name: w
        steps:
          - name: a
            script: s.py
            input: {id: 99999999999999999999}     # <-
        """, "steps[0].input", ["beyond what JSON readers agree on"], 1),
    ("an outcome on a branch that leads to a step", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            next: [{when: "*", to: b, outcome: done}]     # <-
          - {name: b, model: m, prompt: p}
        """, "steps[0].next[0].outcome", ["goes with to: $end", "not to: 'b'"], 1),
    ("an outcome that is not a name", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            next: [{when: "*", to: $end, outcome: "<b>Rejected</b>"}]     # <-
        """, "steps[0].next[0].outcome", ["invalid outcome", "lower-case"], 1),
    ("a misspelt end", """
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            next: [{when: "*", to: $stop}]     # <-
        """, "steps[0].next[0].to", ["unknown step '$stop'", "to: $end"], 1),
]


@pytest.mark.parametrize(("yaml_text", "path", "words", "count"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_problem_names_its_culprit_on_its_line(yaml_text, path, words, count):
    text = _text(yaml_text)
    problems = validate_text(text)
    assert len(problems) == count, "\n".join(map(str, problems))
    hits = [p for p in problems if p.path == path and all(w in p.message for w in words)]
    assert hits, "\n".join(map(str, problems))
    assert hits[0].line == _marked_line(text), str(hits[0])


def test_script_files_are_checked_when_a_scripts_dir_is_given(tmp_path):
    text = _text("""
        name: w
        steps:
          - name: a
            script: there.py
            next: [{when: "*", to: b}]
          - name: b
            script: missing.py
        """)
    assert validate_text(text) == []
    (problem,) = validate_text(text, scripts_dir=_scripts(tmp_path, "there.py"))
    assert (problem.line, problem.path) == (7, "steps[1].script")
    assert "step 'b'" in problem.message and "'missing.py'" in problem.message and "no such file" in problem.message


def test_a_yaml_syntax_error_in_a_file(tmp_path):
    (problem,) = validate_text((HERE / "syntax_error.yaml").read_text())
    assert problem.message.startswith("YAML syntax error")
    assert "started at line 5" in problem.message  # where the unclosed quote began


def test_an_empty_file():
    (problem,) = validate_text("")
    assert "empty" in problem.message and problem.line is None


def test_an_unbounded_loop_file_names_the_steps_of_the_loop():
    (problem,) = validate_text((HERE / "unbounded_loop.yaml").read_text())
    assert (problem.line, problem.path) == (8, "steps[1].name")
    assert "grade -> improve -> grade" in problem.message


def test_five_problems_are_all_reported_at_once():
    problems = validate_text((HERE / "five_problems.yaml").read_text())
    found = {(p.line, p.path): p.message for p in problems}
    assert len(problems) == 5, "\n".join(map(str, problems))
    assert "unknown key 'retires'" in found[(7, "steps[0].retires")]
    assert "unknown step 'grdae'" in found[(9, "steps[0].next[0].to")]
    assert "loop with no bound: grade -> improve -> grade" in found[(11, "steps[1].name")]
    assert "timeout should be greater than 0" in found[(13, "steps[1].timeout")]
    assert "unknown variable 'user'" in found[(14, "steps[1].prompt")]
    assert [p.line for p in problems] == sorted(p.line for p in problems)


def test_problems_read_as_line_path_message():
    assert str(Problem("steps[1].next[0].to", 12, "branch leads to unknown step 'grdae'")) == (
        "line 12, steps[1].next[0].to: branch leads to unknown step 'grdae'"
    )
    assert str(Problem("start", None, "x")) == "start: x"
    assert str(Problem("", 3, "YAML syntax error: x")) == "line 3: YAML syntax error: x"


def test_load_text_raises_with_every_problem():
    with pytest.raises(WorkflowInvalid) as info:
        load_text((HERE / "five_problems.yaml").read_text(), source="five.yaml")
    assert info.value.source == "five.yaml" and len(info.value.problems) == 5
    assert str(info.value).startswith("five.yaml: 5 problem(s)")
    assert "five.yaml:9: steps[0].next[0].to" in str(info.value)


def test_load_file_that_cannot_be_read(tmp_path):
    with pytest.raises(WorkflowInvalid) as info:
        load_file(tmp_path / "nope.yaml")
    assert "cannot read the file" in str(info.value)


def test_load_file_checks_scripts(tmp_path):
    with pytest.raises(WorkflowInvalid) as info:
        load_file(HERE / "good_pipeline.yaml", scripts_dir=tmp_path)
    (problem,) = info.value.problems
    assert "'save_summary.py'" in problem.message and "no such file" in problem.message


MODELS = """
name: w
models: {grader: "qwen2.5:7b", writer: "gemma3:1b"}
steps:
  - name: a
    model: grader
    prompt: p
    next: [{when: "*", to: b}]
  - name: b
    model: writer
    prompt: q
"""


def test_model_aliases_name_the_fleets_models_and_can_be_overridden():
    wf = load_text(MODELS)
    assert [s.actor for s in wf.steps] == ["qwen2.5:7b", "gemma3:1b"]
    other = load_text(MODELS, models={"grader": "llama3:8b"})
    assert [s.actor for s in other.steps] == ["llama3:8b", "gemma3:1b"]
    # What is stored and read back (catalog) keeps the aliases and their resolution.
    assert [s.actor for s in Workflow.model_validate(other.model_dump(mode="json")).steps] == ["llama3:8b", "gemma3:1b"]
    (problem,) = validate_text(MODELS, models={"grade": "x"})
    assert "--model grade=x" in problem.message and "did you mean 'grader'" in problem.message


@pytest.mark.parametrize(("when", "output", "matches"), [
    ({"field": "verdict", "equals": "PASS"}, {"verdict": "PASS"}, True),
    ({"field": "verdict", "equals": "PASS"}, '{"verdict": "PASS"}', True),   # JSON text from JSON mode
    ({"field": "verdict", "equals": "PASS"}, "verdict: PASS", False),        # not JSON: no match
    ({"field": "verdict", "equals": "PASS"}, {"verdict": "pass"}, False),
    ({"field": "valid", "equals": True}, {"valid": True}, True),
    ({"field": "valid", "equals": True}, {"valid": 1}, False),                # true is not 1
    ({"field": "score", "equals": 7}, {"score": "7"}, False),                # "7" is not 7
    ({"field": "score", "gte": 7}, {"score": "8"}, True),                    # but a number written as text compares
    ({"field": "score", "gte": 3, "lte": 7}, {"score": 8}, False),
    ({"field": "score", "gte": 3}, {"score": True}, False),
    ({"field": "scores.total", "lte": 10}, {"scores": {"total": 9.5}}, True),
    ({"field": "items.1", "one_of": ["b", "c"]}, {"items": ["a", "b"]}, True),
    ({"field": "missing", "one_of": ["b"]}, {"items": []}, False),
])
def test_field_conditions(when, output, matches):
    from orchestrator.workflow import Branch

    assert Branch.model_validate({"when": when, "to": "x"}).matches(output) is matches


# ---- files built to hurt -------------------------------------------------------------

BOMB = "name: bomb\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")) + \
    "steps: [{name: s, model: m, prompt: p}]\n"


def test_an_alias_bomb_is_refused_before_it_is_expanded():
    assert len(BOMB) < 600  # nine levels of nine: 387 million values once expanded
    (problem,) = validate_text(BOMB)
    assert "aliases expand it to more than 100,000 values" in problem.message


def test_aliases_that_repeat_a_part_of_the_file_are_fine():
    text = _text("""
        name: w
        steps:
          - name: a
            model: m
            prompt: p
            options: &opts {temperature: 0, num_ctx: 4096}
            next: [{when: "*", to: b}]
          - name: b
            model: m
            prompt: q
            options: *opts
        """)
    assert validate_text(text) == []
    assert load_text(text).step("b").options == {"temperature": 0, "num_ctx": 4096}


@pytest.mark.parametrize(("text", "words"), [
    ("name: deep\nsteps: " + "[" * 5000 + "]" * 5000 + "\n", "nest"),
    ("name: deep\nx: " + "[" * 100 + "]" * 100 + "\nsteps: [{name: s, model: m, prompt: p}]\n",
     "nested deeper than 64 levels"),
    ("name: rec\nx: &x [1, *x]\nsteps: [{name: s, model: m, prompt: p}]\n", "refers to a value that contains it"),
], ids=["five-thousand-deep", "a-hundred-deep", "recursive-alias"])
def test_a_file_nested_past_any_use_is_one_clear_problem(text, words):
    (problem,) = validate_text(text)
    assert words in problem.message


def test_a_three_thousand_step_chain_validates_and_its_references_are_checked():
    steps = "".join(f"  - name: s{i}\n    model: m\n    prompt: \"{{{{ steps.s{max(i - 1, 0)}.output }}}}\"\n"
                    f"    next: [{{when: \"*\", to: s{i + 1}}}]\n" for i in range(1, 2999))
    text = ("name: long\nsteps:\n  - name: s0\n    model: m\n    prompt: p\n    next: [{when: \"*\", to: s1}]\n"
            + steps + "  - name: s2999\n    model: m\n    prompt: \"{{ steps.s2999.output }}\"\n")
    (problem,) = validate_text(text)  # the last step reads its own output: it never runs again after itself
    assert problem.path == "steps[2999].prompt" and "never runs again after itself" in problem.message


def test_validate_refuses_a_script_the_runner_would_refuse(tmp_path):
    """A symlink in the scripts directory that leads out of it, or a file that cannot be
    run: valid once meant the runner refused it at run time, batch after batch."""
    scripts, outside = tmp_path / "scripts", tmp_path / "elsewhere"
    scripts.mkdir()
    outside.mkdir()
    (outside / "steal.py").write_text("print('{}')\n")
    (scripts / "link.py").symlink_to(outside / "steal.py")
    (scripts / "notes.txt").write_text("not a program\n")
    text = _text("""
        name: w
        steps:
          - name: a
            script: link.py
            next: [{when: "*", to: b}]
          - name: b
            script: notes.txt
        """)
    first, second = validate_text(text, scripts_dir=scripts)
    assert first.path == "steps[0].script" and "leads outside the scripts directory" in first.message
    assert second.path == "steps[1].script" and "not executable" in second.message


def test_cache_is_for_ai_steps_and_is_a_boolean():
    script_cached = _text("""
        name: w
        steps:
          - name: a
            script: save.py
            cache: true
        """)
    (problem,) = validate_text(script_cached)
    assert (problem.line, problem.path) == (5, "steps[0].cache") and "effects" in problem.message
    not_a_flag = _text("""
        name: w
        defaults: {cache: "yes"}
        steps:
          - name: a
            model: m
            prompt: hi
        """)
    (problem,) = validate_text(not_a_flag)
    assert problem.path.startswith("defaults") and problem.line == 2
    # defaults: {cache: true} caches the AI steps and leaves the scripts alone.
    wf = load_text(_text("""
        name: w
        defaults: {cache: true}
        steps:
          - name: a
            model: m
            prompt: hi
            next: [{when: "*", to: b}]
          - name: b
            script: save.py
            next: [{when: "*", to: c}]
          - name: c
            model: m
            prompt: again
            cache: false
        """))
    assert [wf.cached(s) for s in wf.steps] == [True, False, False]
