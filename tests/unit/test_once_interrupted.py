"""``backupd once`` stopped by a signal: its last line says what the signal stopped.

In process, with the backup, prune and notifications replaced by stand-ins that only record and
wait (``tests/integration/test_failures.py`` stops real runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

import backupd.cli as cli
import backupd.report as report
from backupd import notify
from backupd.config import TargetConfig
from backupd.environment import load_settings
from backupd.notify import Report, State
from backupd.prune import PruneResult
from tests.unit.test_config import MINIMAL


def stored(target: TargetConfig) -> list[Report]:
    now = datetime.now(UTC)
    return [Report(target.name, "app", "postgres", State.SUCCEEDED, now, key="k", size=1)]


def stop_once(
    monkeypatch: pytest.MonkeyPatch, reached: asyncio.Event | None = None, **extra: str
) -> tuple[int, list[str]]:
    """Run ``once`` and cancel it, as its signal handler does, once ``reached`` is set (None:
    while the run is told): the exit status and what was told."""
    told: list[str] = []
    telling = asyncio.Event()

    async def backed_up(target: TargetConfig, *args: Any) -> list[Report]:
        return stored(target)

    async def started(target: TargetConfig) -> None:
        told.append("start")

    async def finished(target: TargetConfig, reports: list[Report], ping: bool = True) -> None:
        telling.set()
        await asyncio.sleep(0.2)
        told.extend(r.state.value for r in reports)

    monkeypatch.setattr(report, "backup_and_log", backed_up)
    monkeypatch.setattr(notify, "run_started", started)
    monkeypatch.setattr(notify, "run_finished", finished)
    settings = load_settings({**MINIMAL, **extra})
    args = argparse.Namespace(target=None, database=None)

    async def main() -> int:
        once = asyncio.create_task(cli._once(settings, args))
        await (telling if reached is None else reached).wait()
        once.cancel()
        return await once

    return cli.run_cancellable(main(), "once"), told


def last_error(caplog: pytest.LogCaptureFixture) -> str:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR][-1]


def test_a_signal_while_a_finished_run_is_told_is_not_called_an_aborted_backup(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The backup was stored and is told as such: the last line said a backup in progress was
    aborted and reported as failed."""
    status, told = stop_once(monkeypatch)

    assert status == cli.EXIT_FAILED
    assert told == ["start", "succeeded"]
    line = last_error(caplog)
    assert line == f"interrupted: {cli.ONCE_STOPPED_AFTER_RUN}"
    assert "reported as failed" not in line


def test_a_signal_during_the_prune_after_a_run_says_the_prune_was_stopped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pruning = asyncio.Event()

    async def prune(target: TargetConfig) -> PruneResult:
        pruning.set()
        await asyncio.sleep(10)
        return PruneResult(target.name, dry_run=False)

    monkeypatch.setattr(cli, "prune_after_run", prune)
    status, told = stop_once(monkeypatch, pruning, RETENTION_KEEP_LAST="3")

    assert status == cli.EXIT_FAILED
    assert told == ["start", "succeeded"]
    assert last_error(caplog) == f"interrupted: {cli.ONCE_STOPPED_IN_PRUNE}"
