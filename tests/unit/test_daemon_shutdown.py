"""The service's shutdown against its own orchestration: which runs start, which are told.

In process, with the backup, prune, verify and notifications replaced by stand-ins that only
record and wait: what is under test is the daemon's order of things, not the work itself (the
integration tests in ``tests/integration/test_daemon.py`` run that for real)."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from typing import Any

import pytest

import backupd.daemon as daemon_module
import backupd.verify_run as verify_run
from backupd import notify
from backupd.config import Settings, TargetConfig
from backupd.daemon import Daemon
from backupd.environment import load_settings
from backupd.notify import Report, State


def settings(**extra: str) -> Settings:
    return load_settings(
        {
            "DB_TYPE": "postgres",
            "DB_HOST": "127.0.0.1",
            "DB_DATABASE": "app",
            "DB_USER": "backupd",
            "STORAGE_TYPE": "local",
            "STORAGE_LOCAL_PATH": "/nonexistent",
            "CRON_SCHEDULE": "0 0 1 1 *",
            "RUN_ON_STARTUP": "false",
            **extra,
        }
    )


def quiet_notifications(monkeypatch: pytest.MonkeyPatch, told: list[list[Report]]) -> None:
    async def tell(target: TargetConfig, reports: list[Report], announced: Any) -> None:
        told.append(reports)

    def announce(target: TargetConfig) -> asyncio.Task[None]:
        return asyncio.create_task(asyncio.sleep(0))

    monkeypatch.setattr(daemon_module, "announce", announce)
    monkeypatch.setattr(daemon_module, "tell", tell)


async def test_a_run_waiting_for_its_targets_verify_does_not_start_after_sigterm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run holds a dump slot and waits for the target, which its verify holds: the
    shutdown stops the verify, and the run must not take the target for a new dump."""
    daemon = Daemon(settings(MAX_CONCURRENT_BACKUPS="2", SHUTDOWN_TIMEOUT="2"))
    target = daemon.settings.targets[0]
    dumps: list[str] = []

    async def slow_verify(target: TargetConfig, selection: Any) -> list[Any]:
        await asyncio.sleep(60)
        return []

    async def backup(target: TargetConfig, progress: Any = None, run: Any = None) -> list[Report]:
        dumps.append(target.name)
        return []

    monkeypatch.setattr(daemon_module, "verify_and_log", slow_verify)
    monkeypatch.setattr(daemon_module, "backup_and_log", backup)
    quiet_notifications(monkeypatch, [])

    verify = asyncio.create_task(daemon._verify(target, datetime.now(UTC)))
    daemon._tasks.add(verify)
    await asyncio.sleep(0.1)  # the verify holds a slot and the target
    daemon._start(target, datetime.now(UTC), "queued")
    await asyncio.sleep(0.1)  # the run holds the second slot and waits for the target
    daemon._on_signal(signal.SIGTERM)
    await daemon._drain()

    assert dumps == []


async def test_a_stored_backup_is_told_when_its_prune_is_cut_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SHUTDOWN_TIMEOUT ends during the prune of a backup already stored: its success is
    still told (mail, webhook, the ping a dead-man's switch waits for)."""
    daemon = Daemon(settings(SHUTDOWN_TIMEOUT="1", RETENTION_KEEP_DAILY="7"))
    target = daemon.settings.targets[0]
    told: list[list[Report]] = []
    succeeded = [Report(target.name, "app", "postgres", State.SUCCEEDED, datetime.now(UTC))]

    async def backup(target: TargetConfig, progress: Any = None, run: Any = None) -> list[Report]:
        return succeeded

    async def slow_prune(target: TargetConfig) -> None:
        await asyncio.sleep(30)

    monkeypatch.setattr(daemon_module, "backup_and_log", backup)
    monkeypatch.setattr(daemon_module, "prune_after_run", slow_prune)
    quiet_notifications(monkeypatch, told)

    daemon._start(target, datetime.now(UTC), "now")
    await asyncio.sleep(0.2)  # stored; its prune runs
    daemon._on_signal(signal.SIGTERM)
    await daemon._drain()

    assert told == [succeeded]


async def test_the_start_line_counts_targets_not_schedules(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With VERIFY_SCHEDULE each target has two schedules (backups, verifies): one target was
    announced as "backupd running 2 target(s)"."""
    caplog.set_level("INFO", logger="backupd")
    daemon = Daemon(settings(VERIFY_SCHEDULE="0 0 1 1 *", HTTP_PORT="0"))
    serving = asyncio.create_task(daemon._serve())
    await asyncio.sleep(0.2)
    daemon._on_signal(signal.SIGTERM)
    assert await serving == 0
    assert "backupd running 1 target(s); at most 2 at once" in caplog.text


async def test_an_anomalous_backup_prunes_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A database emptied by mistake backs up small: the run is an anomaly, and its prune
    must not push the good backups out (with RETENTION_KEEP_LAST=3, three such runs deleted
    every good one while the alerts were still going out). A normal run prunes."""
    daemon = Daemon(settings(RETENTION_KEEP_LAST="3"))
    target = daemon.settings.targets[0]
    now = datetime.now(UTC)
    states = [State.ANOMALY, State.SUCCEEDED]
    pruned: list[str] = []

    async def backup(target: TargetConfig, progress: Any = None, run: Any = None) -> list[Report]:
        return [Report(target.name, "app", "postgres", states.pop(0), now)]

    async def prune(target: TargetConfig) -> None:
        pruned.append(target.name)

    monkeypatch.setattr(daemon_module, "backup_and_log", backup)
    monkeypatch.setattr(daemon_module, "prune_after_run", prune)
    quiet_notifications(monkeypatch, [])

    await daemon._backup(target, None)
    assert pruned == []
    assert "not pruning: the backup of app looks anomalous" in caplog.text
    await daemon._backup(target, None)
    assert pruned == [target.name]
    await asyncio.gather(*daemon._finishing)


async def test_a_verify_tells_its_result_without_holding_a_dump_slot_or_its_target(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A verify's mail and webhook wait on a relay that hangs (up to ~30 s each): meanwhile
    the target's next backup, and any other target's with MAX_CONCURRENT_BACKUPS=1, must get
    their dump slot; they used to wait for the notifications and skip slots. A shutdown still
    waits for the verify's notifications."""
    daemon = Daemon(settings(MAX_CONCURRENT_BACKUPS="1", SHUTDOWN_TIMEOUT="2"))
    target = daemon.settings.targets[0]
    dumps: list[str] = []
    told: list[str] = []

    async def verify_target(target: TargetConfig, selection: Any, progress: Any) -> list[Any]:
        return []

    async def slow_notifications(target: TargetConfig, reports: Any, *args: Any, **kw: Any) -> None:
        await asyncio.sleep(0.5)
        told.append(target.name)

    async def backup(target: TargetConfig, progress: Any = None, run: Any = None) -> list[Report]:
        dumps.append(target.name)
        return []

    monkeypatch.setattr(verify_run, "verify_target", verify_target)
    monkeypatch.setattr(notify, "run_finished", slow_notifications)
    monkeypatch.setattr(daemon_module, "backup_and_log", backup)
    quiet_notifications(monkeypatch, [])

    verify_task = asyncio.create_task(daemon._verify(target, datetime.now(UTC)))
    daemon._tasks.add(verify_task)
    await asyncio.sleep(0.05)  # verified; its notifications are on their way
    daemon._start(target, datetime.now(UTC), "next")
    await asyncio.sleep(0.2)
    assert dumps == [target.name]  # the backup did not wait for the verify's mail
    assert told == []
    daemon._on_signal(signal.SIGTERM)
    await daemon._drain()
    assert told == [target.name]  # sent before the exit
