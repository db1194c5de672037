"""Workflow files: the models, their validation (every problem with its line) and the
sandboxed rendering of step templates."""

from orchestrator.workflow.model import Branch, Defaults, Step, Workflow
from orchestrator.workflow.render import render_step
from orchestrator.workflow.validate import Problem, load_file, load_text, validate_text

__all__ = [
    "Branch",
    "Defaults",
    "Problem",
    "Step",
    "Workflow",
    "load_file",
    "load_text",
    "render_step",
    "validate_text",
]
