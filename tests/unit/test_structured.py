"""What a structured answer must be before it reaches a branch, a template or a script."""

import pytest

from common.structured import InvalidOutput, parse_answer, schema_problem

GRADE = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["PASS", "FAIL"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "reason": {"type": "string"},
    },
    "required": ["verdict", "score"],
}


def test_a_valid_answer_is_its_json_value():
    assert parse_answer('{"verdict": "PASS", "score": 7, "reason": "ok"}', GRADE) == {
        "verdict": "PASS", "score": 7, "reason": "ok"}
    assert parse_answer('["Python", "SQL"]', {"type": "array", "items": {"type": "string"}}) == ["Python", "SQL"]


@pytest.mark.parametrize("answer, says", [
    ('{"verdict": "MAYBE", "score": 7}', "verdict: 'MAYBE' is not one of ['PASS', 'FAIL']"),
    ('{"verdict": "PASS", "score": 11}', "score: 11 is greater than the maximum of 10"),
    ('{"verdict": "PASS"}', "'score' is a required property"),
    ('{"verdict": "PASS", "score": "7"}', "score: '7' is not of type 'integer'"),
    ('{"verdict": "PASS", "score": 7', "did not answer JSON"),  # cut at the token limit
    ("Sure! Here is the grade: PASS", "did not answer JSON"),
])
def test_an_answer_outside_the_schema_says_what_is_wrong(answer, says):
    with pytest.raises(InvalidOutput) as exc:
        parse_answer(answer, GRADE)
    assert says in str(exc.value)


def test_every_violation_is_reported():
    with pytest.raises(InvalidOutput) as exc:
        parse_answer('{"verdict": "MAYBE", "score": 0}', GRADE)
    assert "verdict:" in str(exc.value) and "score:" in str(exc.value)


def test_json_mode_wants_an_object_or_array():
    assert parse_answer('{"a": 1}', "json") == {"a": 1}
    with pytest.raises(InvalidOutput, match="not an object or array"):
        parse_answer("42", "json")


def test_schema_problems_are_found_before_any_call():
    assert schema_problem(GRADE) is None
    assert "is not valid under any of the given schemas" in schema_problem({"type": "objekt"})
    assert schema_problem({"properties": {"score": {"minimum": "one"}}}) is not None
