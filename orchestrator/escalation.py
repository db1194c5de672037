"""Escalation: a step that keeps failing the same way is held for a person.

A broken script, a prompt the model cannot answer in the asked format, a template that
does not fit the data: every run of the batch would fail at that step the same way, and
retrying them one by one costs a call each (ten thousand for a big batch). When the
step's latest attempts in a batch show a step fault of one class over and over
(common/retries.py `Escalation.judge`: so many in a row, or more than half of a window),
the step is escalated: an open row in `escalations` holds it through the same hold as a
pause (claims skip it, workers hand back what they hold of it), the event log says why
with examples, and `resume --batch` lifts it once the cause is fixed.

Failures of the fleet (timeouts, lost workers, busy servers) never escalate: they say
nothing about the step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from common.retries import Escalation
from orchestrator.db.rows import Event
from orchestrator.db.store import Store

log = logging.getLogger(__name__)

EXAMPLES = 3
EXAMPLE_CHARS = 500


def escalate_failing(store: Store, candidates: Iterable[tuple[int, str]], rule: Escalation) -> list[tuple[int, str]]:
    """Judge each (batch, step) that has just recorded a step fault; escalate those the
    rule says must stop. Returns the ones escalated now (within the caller's transaction)."""
    if not rule.looks_back:
        return []
    escalated = []
    for batch_id, step in sorted(set(candidates)):
        recent = store.step_recent_failures(batch_id, step, rule.looks_back)
        verdict = rule.judge([r.failure_class for r in recent])
        if verdict is None:
            continue
        failure_class, reason = verdict
        examples = [{"run_id": r.run_id, "interaction_id": r.interaction_id, "attempt": r.attempt,
                     "message": (r.failure_message or "")[:EXAMPLE_CHARS]}
                    for r in recent if r.failure_class == failure_class][:EXAMPLES]
        if not store.escalate(batch_id, step, failure_class, reason, examples):
            continue  # escalated already: the results of what was in flight keep coming
        store.insert_events([Event(batch_id, None, None, "escalated", None,
                                   {"step": step, "failure_class": failure_class, "reason": reason,
                                    "examples": examples})])
        log.warning("batch %s: step %s escalated (%s); held until `orchestrator resume --batch %s`",
                    batch_id, step, reason, batch_id)
        escalated.append((batch_id, step))
    if escalated:
        store.notify_controls()
    return escalated
