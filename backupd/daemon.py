"""``backupd run``: every target on its own schedule, concurrently, in one process.

One scheduler task per target sleeps until its next slot and starts a run; a semaphore bounds
how many dumps run at once across targets; a target never overlaps itself (the later slot is
skipped, logged and counted). A failing target is reported and tried again at its next slot;
nothing it does stops the others.

Signals are handled here and only here: the first SIGTERM/SIGINT/SIGHUP stops scheduling and gives
running backups ``SHUTDOWN_TIMEOUT`` seconds (a run still waiting for a dump slot never gets
one); then they are cancelled (children killed, uploads aborted) and report what they had not
finished as failed; then finished and cancelled runs send their notifications, each within its
own timeouts.
A second signal cancels at once. Either way the process exits 0.

A run holds its dump slot for its backup and prune only: its start ping goes out alongside the
dump, and its other notifications after the slot is given back, so a slow notifier never
delays a backup, and the target is not "still running" at its next slot meanwhile.

With ``COORDINATION=storage`` several replicas share the schedule: each run first claims its
(target, slot) in the target's bucket (``claims.claimed``) and runs only if it holds the claim; a
slot claimed by another replica is watched and taken over if that replica stops renewing. The
start-up run stands for the latest slot at or before the start, so a restart does not repeat a
slot another replica (or this one, before it restarted) already ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from backupd.backup import TargetRun
from backupd.claims import Claims, Observed, claimed, self_test
from backupd.config import S3Config, Settings, TargetConfig
from backupd.coordination import Kind, job_of
from backupd.errors import BackupdError, ClaimLost
from backupd.metrics import Metrics, RunResult, serve
from backupd.notify import Report, State
from backupd.process import STOP_SIGNALS
from backupd.prune import PruneFailure, prune_after_run
from backupd.report import (
    announce,
    backup_and_log,
    cut_short,
    prune_wanted,
    tell,
    tell_prune_failed,
)
from backupd.schedule import (
    MISSED_CAP,
    Schedule,
    clock_went_back,
    following_slot,
    next_fire,
    previous_fire,
    resumed_slot,
    sleep_step,
    staleness_interval,
)
from backupd.storage import ClaimStore, open_claim_store
from backupd.variables import told
from backupd.verify import Checked, Selection, verdicts
from backupd.verify_run import tell_verified, verify_and_log

log = logging.getLogger(__name__)


def wall_clock() -> datetime:
    return datetime.now(UTC)


def _label(slot: datetime, schedule: Schedule) -> str:
    return f"{slot.astimezone(schedule.tz):%Y-%m-%d %H:%M:%S %Z}"


class ShuttingDown(Exception):
    """A run's turn for a dump slot came after the shutdown began: it does not start."""


class Slots(asyncio.Semaphore):
    """The ``MAX_CONCURRENT_BACKUPS`` dump slots. Once closed (at the first signal), a run
    whose turn comes gets ShuttingDown instead of a slot."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.closed = False
        self.holders: set[asyncio.Task[Any]] = set()
        """The tasks holding a slot (a run claiming its slot or backing up, or a verify)."""

    async def acquire(self) -> Literal[True]:
        await super().acquire()
        if self.closed:
            super().release()  # the next in line learns the same
            raise ShuttingDown
        task = asyncio.current_task()
        if task is not None:
            self.holders.add(task)
        return True

    def release(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.holders.discard(task)
        super().release()


@dataclass(frozen=True)
class Finished:
    """A backup run that is over, with what is left to tell about it."""

    reports: list[Report]
    announced: asyncio.Task[None]
    """Its start notification, sent alongside the run."""


class Daemon:
    def __init__(self, settings: Settings, clock: Callable[[], datetime] = wall_clock) -> None:
        self.settings = settings
        self._clock = clock
        """The wall clock, read for every scheduling decision (a test brings its own)."""
        self.metrics = Metrics()
        self._slots = Slots(settings.daemon.max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: dict[asyncio.Task[None], tuple[str, str]] = {}
        """Run tasks waiting for a dump slot, claiming or backing up a target (not watching
        another replica's claim): (target, slot label)."""
        self._finishing: set[asyncio.Task[None]] = set()
        """What is left of runs whose backup or verify is over (old claims deleted,
        notifications sent), holding no dump slot and not counted as running."""
        self._claims: dict[str, Claims] = {}
        self._busy: dict[str, asyncio.Lock] = {t.name: asyncio.Lock() for t in settings.targets}
        """Held by a target's backup (and prune) or verify: the two never overlap."""
        self._verifying: dict[str, asyncio.Task[None]] = {}
        self._schedulers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()

    def healthy(self) -> bool:
        """True while every target's scheduler is alive and no shutdown has begun."""
        alive = bool(self._schedulers) and not any(task.done() for task in self._schedulers)
        return alive and not self._stopping.is_set()

    async def run(self) -> int:
        """Serve until a signal; 0. Raises CoordinationUnsupported (a store ignores conditional
        writes) or StorageError (it cannot be reached) before anything starts."""
        async with contextlib.AsyncExitStack() as stores:
            if self.settings.coordination.enabled:
                await self._open_claims(stores)
            return await self._serve()

    async def _open_claims(self, stack: contextlib.AsyncExitStack) -> None:
        """One claim store per distinct storage, each self-tested once."""
        coordination = self.settings.coordination
        stores: dict[S3Config, ClaimStore] = {}
        for target in self.settings.targets:
            config = target.storage
            assert isinstance(config, S3Config), "environment.py refuses local storage"
            if config not in stores:
                store = await stack.enter_async_context(open_claim_store(config))
                await self_test(store, target.layout.folder, coordination.replica_id)
                stores[config] = store
            database = target.database
            facts = (
                database.engine.value,
                database.host,
                database.effective_port,
                ",".join(sorted(database.databases)) or "*",
            )
            job = job_of(*facts)
            log.info(
                "target %s claims slots as job %s (%s %s:%d, databases %s); its replicas "
                "must show the same",
                target.name,
                job,
                *facts,
            )
            self._claims[target.name] = Claims(
                stores[config],
                target.layout.folder,
                coordination.replica_id,
                coordination.lease,
                job=job,
            )
        log.info(
            "replica %s: every slot is claimed in storage first (lease %.0fs)",
            coordination.replica_id,
            coordination.lease,
        )

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
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
                if target.verify.schedule is not None:
                    self._schedulers.append(
                        asyncio.create_task(
                            self._schedule_verify(target, target.verify.schedule),
                            name=f"verify-{target.name}",
                        )
                    )
            log.info(
                "backupd running %d target(s); at most %d at once",
                len(self.settings.targets),
                daemon.max_concurrent,
            )
            await self._stopping.wait()
            for task in self._schedulers:
                task.cancel()
            await asyncio.gather(*self._schedulers, return_exceptions=True)
            await self._drain()
        finally:
            for sig in STOP_SIGNALS:
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
            self._slots.closed = True
        else:
            log.warning("second %s: aborting running backups now", sig.name)
            self._forced.set()

    async def _drain(self) -> None:
        """Give running backups the timeout (a second signal cuts it short), then cancel them;
        then let finished runs send their notifications, each within its own timeouts."""
        running = [task for task in self._active if task in self._slots.holders]
        waiting = [task for task in self._tasks if task not in running]
        for task in waiting:
            if task in self._active:  # queued for a dump slot
                self._not_started(*self._active[task])
            task.cancel()  # or a verify, or watching another replica's claim
        await asyncio.gather(*waiting, return_exceptions=True)
        if running and not await self._wait_for(running, self.settings.daemon.shutdown_timeout):
            log.warning(
                "cancelling %d running backup(s): dumps are killed and uploads aborted",
                len(running),
            )
            await self._cancel(running)
        finishing = [task for task in self._finishing if not task.done()]
        if finishing:
            log.info("sending the notifications of %d finished run(s)", len(finishing))
            if not await self._wait_for(finishing, None):
                log.warning("not sending the notifications of %d run(s)", len(finishing))
                await self._cancel(finishing)

    async def _wait_for(self, tasks: list[asyncio.Task[None]], timeout: float | None) -> bool:
        """Wait for ``tasks`` at most ``timeout`` seconds (None: as long as they take); False if
        they are not all done by then or a second signal came first."""
        if self._forced.is_set():
            return False
        everything: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
        forced: asyncio.Future[Any] = asyncio.ensure_future(self._forced.wait())
        await asyncio.wait(
            [everything, forced], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        forced.cancel()
        await asyncio.gather(forced, return_exceptions=True)
        return everything.done()  # if not, it ends when the caller cancels the tasks

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _schedule(self, target: TargetConfig) -> None:
        schedule = Schedule(target.schedule.cron, target.layout.timezone)
        reached = self._clock()  # where the next slot is computed from
        if target.schedule.run_on_startup:
            if self._claims:  # it stands for the latest slot, which one replica runs
                latest = previous_fire(schedule, reached)
                self._start(target, latest, f"start-up ({_label(latest, schedule)})")
            else:
                self._start(target, reached, "start-up")
        slot = next_fire(schedule, reached)
        while not self._stopping.is_set():
            self.metrics.next_run.labels(target.name).set(slot.timestamp())
            interval = staleness_interval(schedule, slot)
            self.metrics.interval.labels(target.name).set(interval.total_seconds())
            now = await self._sleep_until(slot, reached)
            if now is None:
                return
            resumed = resumed_slot(schedule, reached, now)
            if resumed is not None:
                reached, slot = now, resumed
                self._went_back(target.name, now, slot, schedule)
                continue
            self._start(target, slot, _label(slot, schedule))
            now = self._clock()
            reached = max(slot, now)
            slot, missed = following_slot(schedule, slot, now)
            if missed:
                log.warning(
                    "%s: %s%d more slot(s) passed meanwhile (suspend or clock jump); ran once",
                    target.name,
                    "at least " if missed >= MISSED_CAP else "",
                    missed,
                )

    @staticmethod
    def _went_back(name: str, now: datetime, slot: datetime, schedule: Schedule) -> None:
        log.warning(
            "%s: the wall clock went back (to %s); scheduling from now on, next slot %s "
            "(a slot may repeat)",
            name,
            _label(now, schedule),
            _label(slot, schedule),
        )

    async def _sleep_until(self, slot: datetime, reached: datetime) -> datetime | None:
        """Sleep until the wall clock reaches ``slot``, or goes back behind ``reached`` (see
        ``clock_went_back``); the wall clock then, or None if a shutdown began meanwhile.

        Sleeps are short (see ``sleep_step``) so that a suspend or a clock jump is noticed.
        """
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not stopping.done():
                now = self._clock()
                if clock_went_back(reached, now) or (delay := sleep_step(now, slot)) <= 0:
                    return now
                await asyncio.wait([stopping], timeout=delay)
        finally:
            stopping.cancel()
        return None

    def _start(self, target: TargetConfig, slot: datetime, label: str) -> None:
        if any(name == target.name for name, _ in self._active.values()):
            log.warning("%s: still running at its %s slot; skipping this slot", target.name, label)
            self.metrics.run_ended(target.name, "skipped")
            return
        coordinated = target.name in self._claims
        log.log(
            logging.DEBUG if coordinated else logging.INFO,
            "%s: %s the %s run",
            target.name,
            "claiming" if coordinated else "starting",
            label,
        )
        task = asyncio.create_task(self._run(target, slot, label), name=f"backup-{target.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._active[task] = (target.name, label)  # until it finds its slot claimed elsewhere
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._active.pop(task, None)

    async def _run(self, target: TargetConfig, slot: datetime, label: str) -> None:
        claims = self._claims.get(target.name)
        try:
            if claims is None:
                async with self._slots:
                    await self._backup(target, None)
            else:
                await self._claimed_run(target, claims, slot, label)
        except ShuttingDown:
            self._not_started(target.name, label)

    def _not_started(self, name: str, label: str) -> None:
        log.info("%s: the %s run does not start: shutting down", name, label)
        self.metrics.run_ended(name, "skipped")

    async def _claimed_run(
        self, target: TargetConfig, claims: Claims, slot: datetime, label: str
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        known: list[bool] = []
        try:
            async with claimed(
                claims,
                target.name,
                Kind.BACKUP,
                slot,
                gate=self._slots,
                on_elsewhere=lambda observed: self._elsewhere(target, observed),
            ) as lease:
                if lease is None:
                    return
                log.info("%s: starting the %s run (claim %s)", target.name, label, lease.key)
                self._active[task] = (target.name, label)  # again, after a takeover
                await self._backup(target, claims, known)
        except ClaimLost as error:
            log.warning("%s: %s", target.name, told(str(error), target))
            if not known:  # a result, once known, is counted already
                self.metrics.run_ended(target.name, "failure")
        except BackupdError as error:
            log.error(
                "%s: the %s run did not happen: %s", target.name, label, told(str(error), target)
            )
            self.metrics.run_ended(target.name, "failure")

    def _tell_later(self, target: TargetConfig, finished: Finished, claims: Claims | None) -> None:
        """Send what there is to tell of a backup whose result is known, in a task of its own
        that holds no dump slot: the target's next slot finds it not running, a cancelled prune
        never silences a stored backup, and a shutdown waits for it after the backups."""
        self._finish_later(self._after(target, finished, claims), f"after-{target.name}")

    def _finish_later(self, telling: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``telling`` (notifications, bounded by their timeouts) in a task of its own,
        which a shutdown waits for after the backups."""
        task = asyncio.create_task(telling, name=name)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _after(self, target: TargetConfig, finished: Finished, claims: Claims | None) -> None:
        await tell(target, finished.reports, finished.announced)
        if claims is not None:
            await self._sweep(target, claims)

    async def _sweep(self, target: TargetConfig, claims: Claims) -> None:
        """Claims are bookkeeping: the replica that ran a slot deletes those a day old."""
        try:
            deleted = await claims.sweep()
        except BackupdError as error:
            log.warning(
                "%s: could not delete old claims: %s", target.name, told(str(error), target)
            )
            return
        if deleted:
            log.info("%s: deleted %d claim(s) older than a day", target.name, len(deleted))

    def _elsewhere(self, target: TargetConfig, observed: Observed) -> None:
        """The run task's slot is another replica's: it only watches from now on."""
        task = asyncio.current_task()
        if task is not None:
            self._forget(task)
        log.debug("%s: %s is held by replica %s", target.name, observed.key, observed.claim.replica)
        self.metrics.claimed_elsewhere.labels(target.name, Kind.BACKUP.value).inc()

    async def _backup(
        self, target: TargetConfig, claims: Claims | None, known: list[bool] | None = None
    ) -> None:
        """The backup and, when it succeeded, its prune, holding the target. Once the backup's
        result is known (``known`` gets True), its notifications go out (``_tell_later``),
        whatever becomes of the prune. Raises ShuttingDown when the target came free only
        because the shutdown stopped its verify."""
        async with self._busy[target.name]:
            if self._slots.closed:
                raise ShuttingDown
            announced = announce(target)  # alongside the dump, never before it
            run = TargetRun(target.name)
            try:
                reports = await self._backup_only(target, run)
            except asyncio.CancelledError as cancelled:
                if not self._slots.closed:  # its claim was lost: the slot runs elsewhere
                    announced.cancel()
                    raise
                self.metrics.run_ended(target.name, "failure")
                reports = cut_short(target, run, cancelled, self._cut_short_why(claims))
                self._tell_later(target, Finished(reports, announced), None)
                raise
            if known is not None:
                known.append(True)
            self._tell_later(target, Finished(reports, announced), claims)
            if prune_wanted(target, reports):
                await self._prune(target)

    def _cut_short_why(self, claims: Claims | None) -> str:
        timeout = self.settings.daemon.shutdown_timeout
        when = (
            "at a second signal"
            if self._forced.is_set()
            else f"not finished within SHUTDOWN_TIMEOUT ({timeout:.0f}s)"
        )
        why = f"cut short by the shutdown, {when}: a dump under way was stopped, its upload aborted"
        return why + ("; the slot's claim is handed back" if claims is not None else "")

    async def _backup_only(self, target: TargetConfig, run: TargetRun) -> list[Report]:
        """The run, recording into ``run``; its metrics are set as soon as its result is
        known."""
        name = target.name
        self.metrics.in_progress.labels(name).set(1)
        started = time.monotonic()
        try:
            reports = await backup_and_log(target, run=run)
        finally:
            self.metrics.in_progress.labels(name).set(0)
            self.metrics.last_duration.labels(name).set(time.monotonic() - started)
        ok = bool(reports) and all(report.ok for report in reports)
        odd = any(report.state is State.ANOMALY for report in reports)
        result: RunResult = "failure" if not ok else ("anomaly" if odd else "success")
        self.metrics.run_ended(name, result)
        self.metrics.last_bytes.labels(name).set(sum(report.size for report in reports))
        return reports

    async def _prune(self, target: TargetConfig) -> None:
        """Prune after a backup; a failure is counted and told (in a task of its own that
        holds no dump slot, as a backup's result is)."""
        pruned = await prune_after_run(target)
        if isinstance(pruned, PruneFailure):
            result, ok = pruned.result, False
        else:
            result, ok = pruned, True
        self.metrics.prune_ended(target.name, ok)
        if result is not None:
            self.metrics.pruned.labels(target.name).inc(len(result.deleted))
            self.metrics.stored_backups.labels(target.name).set(result.stored_backups)
            self.metrics.stored_bytes.labels(target.name).set(result.stored_bytes)
        if isinstance(pruned, PruneFailure):
            self._finish_later(tell_prune_failed(target, pruned), f"pruned-{target.name}")

    # --- verify ----------------------------------------------------------------------------

    async def _schedule_verify(self, target: TargetConfig, cron: str) -> None:
        """``verify`` (and the drill with VERIFY_DRILL) on VERIFY_SCHEDULE."""
        schedule = Schedule(cron, target.layout.timezone)
        reached = self._clock()
        slot = next_fire(schedule, reached)
        while not self._stopping.is_set():
            now = await self._sleep_until(slot, reached)
            if now is None:
                return
            resumed = resumed_slot(schedule, reached, now)
            if resumed is not None:
                reached, slot = now, resumed
                self._went_back(f"{target.name} verify", now, slot, schedule)
                continue
            running = self._verifying.get(target.name)
            if running is not None and not running.done():
                log.warning("%s: the last verify is still running; skipping this one", target.name)
                self.metrics.verify_runs.labels(target.name, "skipped").inc()
            else:
                task = asyncio.create_task(
                    self._verify(target, slot), name=f"verify-run-{target.name}"
                )
                self._verifying[target.name] = task
                self._tasks.add(task)  # a shutdown cancels it at once; a drill still cleans up
                task.add_done_callback(self._tasks.discard)
            now = self._clock()
            reached = max(slot, now)
            slot, _ = following_slot(schedule, slot, now)

    async def _verify(self, target: TargetConfig, slot: datetime) -> None:
        """One verify run of ``target``, within the dump budget and after any backup of it;
        with COORDINATION=storage, only on the replica that claims its slot."""
        claims = self._claims.get(target.name)
        known: list[bool] = []
        try:
            if claims is None:
                async with self._slots:
                    await self._verify_now(target, known)
                return
            async with claimed(claims, target.name, Kind.VERIFY, slot, gate=self._slots) as lease:
                if lease is not None:
                    await self._verify_now(target, known)
        except BackupdError as error:  # ClaimLost, CoordinationError
            log.warning("%s: verify: %s", target.name, told(str(error), target))
            if not known:  # as a backup run that did not happen: a failure of the whole target
                self.metrics.verify_ended(target.name, {"*": False})
        except ShuttingDown:
            log.info("%s: the verify run does not start: shutting down", target.name)

    async def _verify_now(self, target: TargetConfig, known: list[bool]) -> None:
        """The verify, holding the target (and the caller's dump slot); its mail and webhooks
        go out afterwards in a task of their own, as a backup's do: a slow or dead notifier
        never holds a dump slot or the target, and a shutdown waits for them. ``known`` gets
        True once its result is counted."""
        async with self._busy[target.name]:
            results = await verify_and_log(target, Selection(drill=target.verify.drill))
        self._record_verify(target.name, results)
        known.append(True)
        self._finish_later(tell_verified(target, results), f"told-{target.name}")

    def _record_verify(self, name: str, results: list[Checked]) -> None:
        self.metrics.verify_ended(name, verdicts(results))
        for checked in results:
            drill = checked.drill
            if drill is not None and not drill.problems and drill.skipped is None:
                self.metrics.last_drill.labels(name, checked.database).set(drill.restore_s)
