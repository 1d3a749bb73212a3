"""The service's schedule loop against a wall clock the test moves (no backups run)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from backupd.config import TargetConfig
from backupd.daemon import Daemon
from tests.unit.test_daemon_shutdown import settings as daemon_settings


async def test_runs_go_on_after_the_wall_clock_goes_back_hours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The clock runs 3 h ahead, then is set right: the next slot is computed from the new
    time, instead of waiting 3 h for the one computed before."""
    settings = daemon_settings(CRON_SCHEDULE="* * * * * *")
    ahead = [timedelta(hours=3)]
    daemon = Daemon(settings, clock=lambda: datetime.now(UTC) + ahead[0])
    started: list[datetime] = []

    def start(target: TargetConfig, slot: datetime, label: str) -> None:
        started.append(slot)

    monkeypatch.setattr(daemon, "_start", start)
    scheduler = asyncio.create_task(daemon._schedule(settings.targets[0]))

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 5
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    try:
        await until(lambda: len(started) >= 1, "a run 3 h ahead")
        ahead[0] = timedelta(0)
        before = len(started)
        await until(lambda: len(started) >= before + 2, "two runs after the clock went back")
    finally:
        daemon._stopping.set()
        await scheduler

    assert abs(started[-1] - datetime.now(UTC)) < timedelta(seconds=5)


async def test_the_interval_metric_is_real_time_on_the_night_clocks_go_forward() -> None:
    """The daily 02:00 slot of the night Berlin's clocks go forward runs at 03:00 CEST (02:00
    does not exist), 24 hours after the one before; the wall clock's arithmetic says 25."""
    settings = daemon_settings(CRON_SCHEDULE="0 2 * * *", TIMEZONE="Europe/Berlin")
    daemon = Daemon(settings, clock=lambda: datetime(2026, 3, 29, 0, 30, tzinfo=UTC))
    scheduler = asyncio.create_task(daemon._schedule(settings.targets[0]))
    interval = None
    try:
        deadline = time.monotonic() + 5
        while interval is None:
            assert time.monotonic() < deadline, "timed out waiting for the interval metric"
            await asyncio.sleep(0.01)
            interval = daemon.metrics.registry.get_sample_value(
                "backupd_schedule_interval_seconds", {"target": "default"}
            )
    finally:
        daemon._stopping.set()
        await scheduler

    assert interval == timedelta(hours=24).total_seconds()


@pytest.mark.parametrize(
    ("now", "gap"),
    [
        ("2026-11-27T03:00:00+00:00", 3),  # Friday, after its run: next is Monday's
        ("2026-11-30T03:00:00+00:00", 3),  # Monday, its run may still go on: Friday's counts
        ("2026-12-02T03:00:00+00:00", 1),  # Wednesday
    ],
)
async def test_the_staleness_interval_spans_a_weekend_without_runs(now: str, gap: int) -> None:
    """``backupd_schedule_interval_seconds`` is what BackupdNoRecentBackup doubles: for a
    weekday schedule it must hold the weekend's gap from Friday's slot to Monday's, and keep
    it through Monday's run, or every weekend fires the critical alert while nothing fails."""
    settings = daemon_settings(CRON_SCHEDULE="0 2 * * 1-5")
    daemon = Daemon(settings, clock=lambda: datetime.fromisoformat(now))
    scheduler = asyncio.create_task(daemon._schedule(settings.targets[0]))

    def interval() -> float | None:
        return daemon.metrics.registry.get_sample_value(
            "backupd_schedule_interval_seconds", {"target": settings.targets[0].name}
        )

    try:
        deadline = time.monotonic() + 5
        while interval() is None:
            assert time.monotonic() < deadline, "timed out waiting for the interval"
            await asyncio.sleep(0.05)
    finally:
        daemon._stopping.set()
        await scheduler

    assert interval() == timedelta(days=gap).total_seconds()
