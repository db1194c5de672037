"""deploy/prometheus/alerts.yml: it loads, and every rule names metrics that
`orchestrator serve --metrics-port` really exports (a renamed gauge would otherwise
silence an alert without a word)."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import yaml

from orchestrator.metrics import FarmCollector

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


class _NoDatabase:
    """A pool that cannot connect: the collector still declares every family it has."""

    @contextmanager
    def connection(self, timeout: float):
        raise ConnectionError("no database in a unit test")
        yield


def exported() -> set[str]:
    return {family.name for family in FarmCollector(_NoDatabase()).collect()}


def test_the_alert_rules_load_and_name_only_metrics_the_collector_exports():
    rules = [r for group in yaml.safe_load(ALERTS.read_text())["groups"] for r in group["rules"]]
    assert {r["alert"] for r in rules} == {"WavefarmBatchEscalated", "WavefarmQueueWithoutConsumer",
                                           "WavefarmWorkerCircuitOpen"}
    names = exported()
    for rule in rules:
        used = set(re.findall(r"\bwavefarm_\w+", rule["expr"]))
        assert used, f"{rule['alert']}: its expression names no wavefarm metric"
        assert used <= names, f"{rule['alert']}: {sorted(used - names)} not exported (exported: {sorted(names)})"
        assert rule["annotations"]["summary"]


def test_the_collector_declares_the_batch_and_circuit_gauges():
    assert {"wavefarm_batch_runs", "wavefarm_batch_state", "wavefarm_batch_escalations",
            "wavefarm_batch_eta_seconds", "wavefarm_worker_circuit_open"} <= exported()
