"""The GPU worker's OpenAI backend against a real model server: llama-cpp-python's
`llama_cpp.server` with Gemma 3 270M (gpu_worker.local_model). The model is a small
base model, so these tests check structure (text, token counts, JSON that satisfies the
schema the step gave), never wording. Answers are kept to a few dozen tokens: schema
steps are sampled through a grammar that llama-cpp-python checks against all of Gemma's
262k-token vocabulary at every token, several times the cost of a plain token on a CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from common.messages import AiTask
from common.queues import model_queue
from gpu_worker import local_model
from tests.real_model.conftest import NOT_INSTALLED

pytestmark = pytest.mark.skipif(not local_model.available(), reason=NOT_INSTALLED)

GPU_WORKER = Path(sys.executable).parent / "gpu-worker"
# Strings carry a pattern: llama-cpp-python's schema grammar (0.3.x) lets a string hold a
# raw newline or other control character (abetlen/llama-cpp-python#1259, fixed upstream in
# llama.cpp), which is not JSON, and Gemma 270M does write one. A pattern narrows the
# characters in the grammar itself; jsonschema checks it again on the way back.
VERDICT = {"type": "object",
           "properties": {"verdict": {"type": "string", "enum": ["PASS", "FAIL"]},
                          "reason": {"type": "string", "pattern": "^[A-Za-z0-9 ,.'-]{1,24}$"}},
           "required": ["verdict", "reason"], "additionalProperties": False}
SKILLS = {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z0-9 +#.-]{1,16}$"},
          "minItems": 1, "maxItems": 3}
SCHEMA_OPTIONS = {"num_predict": 96, "temperature": 0, "seed": 7}


def task(prompt: str, **kw) -> AiTask:
    fields = dict(interaction_id=1, attempt=1, run_id=1, batch_id=1, step="step", timeout_s=120.0,
                  model=local_model.MODEL_NAME, prompt=prompt,
                  options={"num_predict": 16, "temperature": 0, "seed": 7})
    return AiTask(**{**fields, **kw})


def test_gpu_worker_check_lists_the_model(model_url):
    done = subprocess.run([str(GPU_WORKER), "--openai-url", model_url, "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert local_model.MODEL_NAME in done.stdout
    assert model_queue(local_model.MODEL_NAME) == "ai.gemma3-270m"


def test_plain_prompt_gives_text_and_token_metrics(backend):
    result = backend.complete(task("Write one sentence about a night-shift nurse job in Leeds."))
    assert result.ok, result.failure
    assert isinstance(result.output, str) and result.output.strip()
    m = result.metrics
    assert m["prompt_eval_count"] > 0 and 0 < m["eval_count"] <= 16
    assert m["finish_reason"] in ("stop", "length") and m["total_duration"] > 0 and m["wall_s"] > 0


def test_object_schema_with_an_enum_answers_json_that_validates(backend):
    result = backend.complete(task("Grade this posting. Posting: nurse in Leeds, night shifts, no salary given. "
                                   "Answer PASS or FAIL with a short reason.", format=VERDICT, options=SCHEMA_OPTIONS))
    assert result.ok, result.failure
    assert isinstance(result.output, dict)
    assert not list(Draft202012Validator(VERDICT).iter_errors(result.output))
    assert result.output["verdict"] in ("PASS", "FAIL")
    # llama-cpp-python's server refuses response_format type json_schema: the backend
    # learnt to send the schema as {"type": "json_object", "schema": ...}.
    assert backend.schema_form == "json_object"


def test_array_schema_answers_a_json_array_of_strings(backend):
    result = backend.complete(task("List the skills in this posting as a JSON array of strings. "
                                   "Posting: data engineer, SQL, Python, Airflow.", format=SKILLS,
                                   options=SCHEMA_OPTIONS))
    assert result.ok, result.failure
    assert isinstance(result.output, list) and result.output and all(isinstance(s, str) for s in result.output)
    assert not list(Draft202012Validator(SKILLS).iter_errors(result.output))
