"""What the service's metrics say of a run or verify that a claim stopped (COORDINATION=storage):
in process, with the claim and the work replaced by stand-ins, as in test_daemon_shutdown."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

import backupd.daemon as daemon_module
from backupd.daemon import Daemon
from backupd.errors import BackupdError, ClaimLost, CoordinationError
from backupd.verify import Checked
from tests.unit.test_daemon_shutdown import settings


def claim_that_fails(error: BackupdError, lease: bool) -> Any:
    """A stand-in for ``claims.claimed``: raises ``error`` at once, or after the block ran
    under a lease (a claim lost as it was being left)."""

    @contextlib.asynccontextmanager
    async def claimed(*args: Any, **kwargs: Any) -> AsyncIterator[object]:
        if lease:
            yield object()
        raise error

    return claimed


def sample(daemon: Daemon, name: str, **labels: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name, labels)


@pytest.mark.parametrize(
    "error",
    [CoordinationError("cannot read the claim x: no answer"), ClaimLost("replica b took it")],
)
async def test_a_verify_stopped_by_its_claim_is_a_failure_of_the_target(
    monkeypatch: pytest.MonkeyPatch, error: BackupdError
) -> None:
    """As a backup run that did not happen is: with COORDINATION=storage a store that does
    not answer stopped the verify at its claim, and BackupdVerifyFailed never fired, where
    without coordination the same store fails the verify under database "*"."""
    daemon = Daemon(settings())
    target = daemon.settings.targets[0]
    daemon._claims[target.name] = object()  # type: ignore[assignment]
    monkeypatch.setattr(daemon_module, "claimed", claim_that_fails(error, lease=False))

    await daemon._verify(target, datetime.now(UTC))

    whole = {"target": target.name, "database": "*"}
    assert sample(daemon, "backupd_last_verify_failure_timestamp_seconds", **whole)
    assert sample(daemon, "backupd_last_verify_success_timestamp_seconds", **whole) is None
    runs = {"target": target.name, "result": "failure"}
    assert sample(daemon, "backupd_verify_runs_total", **runs) == 1


async def test_a_verify_counted_before_its_claim_was_lost_is_counted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    daemon = Daemon(settings())
    target = daemon.settings.targets[0]
    daemon._claims[target.name] = object()  # type: ignore[assignment]
    daemon.metrics.declare(target.name)
    checked = [Checked(target.name, "app", "backups/app.dump")]

    async def verify_and_log(target: Any, selection: Any) -> list[Checked]:
        return checked

    async def tell_verified(target: Any, results: Any) -> None:
        return None

    monkeypatch.setattr(daemon_module, "verify_and_log", verify_and_log)
    monkeypatch.setattr(daemon_module, "tell_verified", tell_verified)
    monkeypatch.setattr(daemon_module, "claimed", claim_that_fails(ClaimLost("lost"), lease=True))

    await daemon._verify(target, datetime.now(UTC))

    whole = {"target": target.name, "database": "*"}
    assert sample(daemon, "backupd_last_verify_success_timestamp_seconds", **whole)
    assert sample(daemon, "backupd_last_verify_failure_timestamp_seconds", **whole) is None
    for result, count in (("success", 1), ("failure", 0)):
        runs = {"target": target.name, "result": result}
        assert sample(daemon, "backupd_verify_runs_total", **runs) == count
