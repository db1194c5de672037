"""Rendering step templates: strict, sandboxed, and compiled once."""

from __future__ import annotations

import re

import pytest

from common.errors import RenderError
from orchestrator.workflow import Step, load_text, render_step
from orchestrator.workflow import render as render_module

WORKFLOW = load_text("""
name: w
steps:
  - name: extract
    model: m
    system: "You read postings from {{ input.company }}."
    prompt: |
      Summarise: {{ input.job_description }}
    next: [{when: "*", to: save}]
  - name: save
    script: save.py
    input:
      posting_id: "{{ input.posting_id }}"
      summary: "{{ steps.extract.output }}"
      nested: {a: "{{ run }}", list: ["{{ batch }}", 3, true, null]}
""")


def context(outputs: dict | None = None, **row: str) -> dict:
    # The shape the engine builds: steps maps a name to {"output": latest output}.
    return {
        "input": row,
        "steps": {name: {"output": out} for name, out in (outputs or {}).items()},
        "run": 7,
        "batch": 3,
    }


def ai(prompt: str, system: str | None = None) -> Step:
    return Step(name="probe", model="m", prompt=prompt, system=system)


def test_prompt_and_system():
    out = render_step(WORKFLOW.step("extract"), context(job_description="Cook wanted", company="Acme"))
    assert out == {"prompt": "Summarise: Cook wanted\n", "system": "You read postings from Acme."}


def test_no_system_renders_as_none():
    assert render_step(ai("hi {{ run }}"), context()) == {"prompt": "hi 7", "system": None}


def test_nested_script_input_renders_every_string_and_keeps_the_rest():
    out = render_step(WORKFLOW.step("save"), context({"extract": "short"}, posting_id="p1"))
    assert out == {"input": {"posting_id": "p1", "summary": "short", "nested": {"a": "7", "list": ["3", 3, True, None]}}}


def test_missing_column_is_an_error_naming_step_field_and_column():
    with pytest.raises(RenderError) as info:
        render_step(WORKFLOW.step("extract"), context(job_desc="x", company="Acme"))
    assert str(info.value) == "step extract, prompt: input has no column 'job_description'"


def test_a_step_without_output_in_this_run_is_an_error():
    with pytest.raises(RenderError) as info:
        render_step(WORKFLOW.step("save"), context(posting_id="p1"))
    assert str(info.value) == "step save, input.summary: steps.extract has no output in this run"


def test_nested_field_is_named_in_the_error():
    step = Step(name="s", script="s.py", input={"deep": {"list": [1, "{{ input.nope }}"]}})
    with pytest.raises(RenderError, match=r"^step s, input.deep.list\[1\]: input has no column 'nope'$"):
        render_step(step, context())


def test_unknown_variable_never_renders_empty():
    with pytest.raises(RenderError, match="step probe, prompt: unknown variable 'nothing'"):
        render_step(ai("a{{ nothing }}b"), context())
    with pytest.raises(RenderError, match="system: unknown variable 'nothing'"):
        render_step(ai("ok", system="{{ nothing }}"), context())


def test_missing_key_of_a_script_output():
    with pytest.raises(RenderError, match="no key 'posting' .*'posting_id'"):
        render_step(ai("{{ steps.save.output.posting }}"), context({"save": {"posting_id": "p1"}}))


def test_is_defined_guards_a_step_that_has_not_run():
    step = ai("{{ steps.improve.output if steps.improve is defined else steps.extract.output }}")
    assert render_step(step, context({"extract": "first"}))["prompt"] == "first"
    assert render_step(step, context({"extract": "first", "improve": "better"}))["prompt"] == "better"


def test_dict_output_access():
    out = {"posting_id": "p9", "items": ["a", "b"], "meta": {"score": 4}}
    step = ai("{{ steps.save.output.posting_id }} {{ steps.save.output['meta'].score }} {{ steps.save.output.items | join(',') }}")
    assert render_step(step, context({"save": out}))["prompt"] == "p9 4 a,b"


def test_columns_win_over_dict_methods():
    step = ai("{{ input.items }}/{{ input.values }}/{{ input.get('x', 'default') }}")
    assert render_step(step, context(items="3 items", values="v"))["prompt"] == "3 items/v/default"


def test_trailing_newline_is_kept_and_nothing_is_escaped():
    assert render_step(ai("<b>{{ input.x }}</b>\n"), context(x="a & b"))["prompt"] == "<b>a & b</b>\n"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ input.__class__ }}",
        "{{ steps._data }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ '{0.__class__}'.format(input.x) }}",
    ],
)
def test_templates_cannot_reach_python_internals(template):
    with pytest.raises(RenderError, match="^step probe, prompt: "):
        render_step(ai(template), context(x="1"))


def test_a_template_that_does_not_parse_is_a_render_error():
    with pytest.raises(RenderError, match="step probe, prompt: template does not parse"):
        render_step(ai("{% if %}"), context())


def test_a_failing_expression_is_a_render_error():
    with pytest.raises(RenderError, match="step probe, prompt: ZeroDivisionError"):
        render_step(ai("{{ 1 / 0 }}"), context())


def test_templates_are_compiled_once():
    source = "cached {{ input.x }} template"
    step = ai(source)
    render_step(step, context(x="1"))
    compiled = render_module._template(source)
    for n in range(50):
        assert render_step(step, context(x=str(n)))["prompt"] == f"cached {n} template"
    assert render_module._template(source) is compiled


@pytest.mark.parametrize(("template", "reason"), [
    ("{{ 'x' * 10000000 }}", "repeats a value into more than 1,000,000 items"),
    ("{{ [1] * 10**9 }}", "repeats a value"),
    ("{{ 7 ** 999999 }}", "raises a number to the power"),
    ("{% for i in range(10**7) %}{% endfor %}", re.escape("range() of 10,000,000 items")),
    ("{% for i in range(10000) %}{% for j in range(1000) %}word {% endfor %}{% endfor %}",
     "longer than 1,000,000 characters"),
    ("{{ input.big ~ input.big }}", "longer than 1,000,000 characters"),
])
def test_a_template_cannot_make_more_than_the_bound_and_fails_as_its_interaction(template, reason):
    with pytest.raises(RenderError, match=reason):
        render_step(ai(template), context(big="y" * 600_000))


def test_the_bound_is_for_the_prompt_and_system_together_and_for_a_whole_script_input():
    half = "{{ input.big }}"
    with pytest.raises(RenderError, match="longer than"):
        render_step(ai(half, system=half), context(big="z" * 600_000))
    script = Step(name="save", script="save.py", input={"a": half, "b": [half]})
    with pytest.raises(RenderError, match="step save, input.b\\[0\\]: the rendered text is longer"):
        render_step(script, context(big="z" * 600_000))
    assert len(render_step(ai(half), context(big="z" * 600_000))["prompt"]) == 600_000
