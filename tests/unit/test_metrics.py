"""What each result stamps: the alerts compare a target's newest failure with its newest
success, so a result stamps one of the two or, skipped, neither."""

from __future__ import annotations

import pytest

from backupd.metrics import Metrics, RunResult


def stamps(metrics: Metrics, *names: str, **labels: str) -> list[str]:
    """Which of ``names`` have a sample with ``labels``."""
    return [n for n in names if metrics.registry.get_sample_value(n, labels) is not None]


@pytest.mark.parametrize(
    ("result", "stamped"),
    [
        ("success", ["backupd_last_success_timestamp_seconds"]),
        ("anomaly", ["backupd_last_success_timestamp_seconds"]),  # stored, and told apart
        ("failure", ["backupd_last_failure_timestamp_seconds"]),
        ("skipped", []),
    ],
)
def test_a_backup_run_stamps_its_success_or_failure(result: RunResult, stamped: list[str]) -> None:
    metrics = Metrics()
    metrics.declare("t")

    metrics.run_ended("t", result)

    success, failure = (
        "backupd_last_success_timestamp_seconds",
        "backupd_last_failure_timestamp_seconds",
    )
    assert stamps(metrics, success, failure, target="t") == stamped
    assert (
        metrics.registry.get_sample_value("backupd_runs_total", {"target": "t", "result": result})
        == 1
    )


@pytest.mark.parametrize("ok", [True, False])
def test_a_prune_stamps_its_success_or_failure(ok: bool) -> None:
    metrics = Metrics()

    metrics.prune_ended("t", ok)

    success, failure = (
        "backupd_last_prune_success_timestamp_seconds",
        "backupd_last_prune_failure_timestamp_seconds",
    )
    assert stamps(metrics, success, failure, target="t") == [success if ok else failure]


def test_a_verify_stamps_each_database_and_the_target_as_a_whole() -> None:
    metrics = Metrics()

    metrics.verify_ended("t", {"*": True, "app": True, "shop": False})

    success, failure = (
        "backupd_last_verify_success_timestamp_seconds",
        "backupd_last_verify_failure_timestamp_seconds",
    )
    assert stamps(metrics, success, failure, target="t", database="*") == [success]
    assert stamps(metrics, success, failure, target="t", database="app") == [success]
    assert stamps(metrics, success, failure, target="t", database="shop") == [failure]
    runs = {"target": "t", "result": "failure"}
    assert metrics.registry.get_sample_value("backupd_verify_runs_total", runs) == 1
