"""``backupd run``: every target on its own schedule, concurrently, in one process.

One scheduler task per target sleeps until its next slot and starts a run; a semaphore bounds
how many dumps run at once across targets; a target never overlaps itself (the later slot is
skipped, logged and counted). A failing target is reported and tried again at its next slot;
nothing it does stops the others.

Signals are handled here and only here: the first SIGTERM/SIGINT stops scheduling and gives
running backups ``SHUTDOWN_TIMEOUT`` seconds; then they are cancelled (children killed,
uploads aborted). A second signal cancels at once. Either way the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from datetime import UTC, datetime
from typing import Any

from backupd.config import Settings, TargetConfig
from backupd.metrics import Metrics, serve
from backupd.prune import prune_after_run
from backupd.report import backup_and_report
from backupd.schedule import Schedule, following_slot, next_fire, sleep_step

log = logging.getLogger(__name__)


def wall_clock() -> datetime:
    return datetime.now(UTC)


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self._slots = asyncio.Semaphore(settings.daemon.max_concurrent)
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._schedulers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()

    def healthy(self) -> bool:
        """True while every target's scheduler is alive and no shutdown has begun."""
        alive = bool(self._schedulers) and not any(task.done() for task in self._schedulers)
        return alive and not self._stopping.is_set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        daemon = self.settings.daemon
        runner = (
            await serve(self.metrics, self.healthy, daemon.http_host, daemon.http_port)
            if daemon.http_port
            else None
        )
        try:
            for target in self.settings.targets:
                self.metrics.declare(target.name)
                self._schedulers.append(
                    asyncio.create_task(self._schedule(target), name=f"schedule-{target.name}")
                )
            log.info(
                "backupd running %d target(s); at most %d at once",
                len(self._schedulers),
                daemon.max_concurrent,
            )
            await self._stopping.wait()
            for task in self._schedulers:
                task.cancel()
            await asyncio.gather(*self._schedulers, return_exceptions=True)
            await self._drain()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if runner is not None:
                await runner.cleanup()
        log.info("backupd stopped")
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self._stopping.is_set():
            log.info(
                "%s: no new backups; running ones get %.0fs to finish",
                sig.name,
                self.settings.daemon.shutdown_timeout,
            )
            self._stopping.set()
        else:
            log.warning("second %s: aborting running backups now", sig.name)
            self._forced.set()

    async def _drain(self) -> None:
        """Give running backups the timeout (a second signal cuts it short), then cancel them."""
        running = [task for task in self._runs.values() if not task.done()]
        if not running:
            return
        everything: asyncio.Future[Any] = asyncio.gather(*running, return_exceptions=True)
        forced: asyncio.Future[Any] = asyncio.ensure_future(self._forced.wait())
        await asyncio.wait(
            [everything, forced],
            timeout=self.settings.daemon.shutdown_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        forced.cancel()
        if not everything.done():
            log.warning(
                "cancelling %d running backup(s): dumps are killed and uploads aborted",
                len(running),
            )
            for task in running:
                task.cancel()
        await asyncio.gather(everything, forced, return_exceptions=True)

    async def _schedule(self, target: TargetConfig) -> None:
        schedule = Schedule(target.schedule.cron, target.layout.timezone)
        if target.schedule.run_on_startup:
            self._start(target, "start-up")
        slot = next_fire(schedule, wall_clock())
        while not self._stopping.is_set():
            self.metrics.next_run.labels(target.name).set(slot.timestamp())
            if await self._sleep_until(slot):
                return
            self._start(target, f"{slot.astimezone(schedule.tz):%Y-%m-%d %H:%M:%S %Z}")
            slot, missed = following_slot(schedule, slot, wall_clock())
            if missed:
                log.warning(
                    "%s: %d more slot(s) passed meanwhile (suspend or clock jump); ran once",
                    target.name,
                    missed,
                )

    async def _sleep_until(self, slot: datetime) -> bool:
        """Sleep until the wall clock reaches ``slot``; True if a shutdown began meanwhile.

        Sleeps are short (see ``sleep_step``) so that a suspend or a clock jump is noticed.
        """
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not stopping.done() and (delay := sleep_step(wall_clock(), slot)) > 0:
                await asyncio.wait([stopping], timeout=delay)
        finally:
            stopping.cancel()
        return self._stopping.is_set()

    def _start(self, target: TargetConfig, slot: str) -> None:
        running = self._runs.get(target.name)
        if running is not None and not running.done():
            log.warning("%s: still running at its %s slot; skipping this slot", target.name, slot)
            self.metrics.runs.labels(target.name, "skipped").inc()
            return
        log.info("%s: starting the %s run", target.name, slot)
        self._runs[target.name] = asyncio.create_task(
            self._run(target), name=f"backup-{target.name}"
        )

    async def _run(self, target: TargetConfig) -> None:
        name = target.name
        async with self._slots:
            self.metrics.in_progress.labels(name).set(1)
            started = time.monotonic()
            try:
                reports = await backup_and_report(target)
            finally:
                self.metrics.in_progress.labels(name).set(0)
                self.metrics.last_duration.labels(name).set(time.monotonic() - started)
        ok = bool(reports) and all(report.ok for report in reports)
        self.metrics.runs.labels(name, "success" if ok else "failure").inc()
        self.metrics.last_bytes.labels(name).set(sum(report.size for report in reports))
        if ok:
            self.metrics.last_success.labels(name).set(time.time())
        if ok and target.retention.policy.enabled:
            pruned = await prune_after_run(target)
            if pruned is not None:
                self.metrics.pruned.labels(name).inc(len(pruned.deleted))
                self.metrics.stored_backups.labels(name).set(pruned.stored_backups)
                self.metrics.stored_bytes.labels(name).set(pruned.stored_bytes)
