"""The Grafana dashboard and Prometheus alert rules in deploy/ name only metrics backupd exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from backupd.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "backupd-alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
NAME = re.compile(r"\b((?:backupd|process)_[a-z_]+)\b")


def exported() -> set[str]:
    """Every series name backupd's registry can produce (counters as ``_total``)."""
    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        else:
            names.add(family.name)
    return names


def rule_expressions() -> list[str]:
    document = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


@pytest.mark.parametrize("expressions", [rule_expressions, dashboard_expressions])
def test_every_metric_named_is_one_backupd_exports(expressions: object) -> None:
    assert callable(expressions)
    named = {name for expr in expressions() for name in NAME.findall(expr)}

    assert named, "no metric found: the file changed shape"
    assert sorted(named - exported()) == []


def test_alerts_cover_staleness_failures_until_a_success_and_anomalies() -> None:
    joined = "\n".join(rule_expressions())

    assert "2 * backupd_schedule_interval_seconds" in joined
    for kind in ("", "verify_", "prune_"):
        assert f"backupd_last_{kind}failure_timestamp_seconds" in joined
        assert f"backupd_last_{kind}success_timestamp_seconds" in joined
    assert 'backupd_runs_total{result="anomaly"}' in joined


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed; .ci/run installs it")
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "case",
    [
        "alerts_with_replicas.yaml",  # the staleness alerts take the newest success of all pods
        "alerts_until_a_success.yaml",  # a failure fires until a later success, on any pod
        "alerts_after_a_restart.yaml",  # ... also one the process before a restart had
        "alerts_after_a_start.yaml",  # a failure before a new pod's first scrape is one too
        "alerts_never_succeeded.yaml",  # not before two intervals: a weekly schedule's
    ],
)
def test_alerts_fire_when_promtool_plays_them_a_history(case: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed; .ci/run installs it")
    tests = Path(__file__).resolve().parent.parent / "data" / case
    result = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
