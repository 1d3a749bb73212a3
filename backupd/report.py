"""How a run went, told to everyone: one masked report per database, logged and notified."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import replace
from datetime import datetime
from typing import Any

from backupd import notify
from backupd.anomaly import anomalies
from backupd.backup import TargetRun, left_behind, run_backup
from backupd.config import TargetConfig, secrets_of
from backupd.errors import BackupdError
from backupd.notify import Report, State
from backupd.process import mask
from backupd.progress import Progress
from backupd.prune import PruneFailure
from backupd.storage import Storage, open_storage
from backupd.units import human_rate, human_size
from backupd.variables import told

log = logging.getLogger(__name__)


def reports_of(
    target: TargetConfig, run: TargetRun | None, error: BaseException | None = None
) -> list[Report]:
    """One report per database (or one for the whole target when nothing could run), masked."""
    hidden = secrets_of(target)
    now = datetime.now(target.layout.tz)
    engine = target.database.engine.value
    if run is None:
        step = error.step if isinstance(error, BackupdError) else "internal"
        text = str(error) if isinstance(error, BackupdError) else f"unexpected error: {error!r}"
        return [
            Report(
                target.name,
                mask(target.database.database, hidden),
                engine,
                State.FAILED,
                now,
                step=step,
                error=told(text, target),
                left_behind=_left_behind(error, target),
            )
        ]
    reports = [
        Report(
            target.name,
            mask(result.database, hidden),
            engine,
            State.SUCCEEDED,
            result.finished,
            key=mask(result.key, hidden),
            size=result.size,
            duration_s=result.duration_s,
            sha256=result.sha256,
        )
        for result in run.results
    ]
    reports += [
        Report(
            target.name,
            mask(database, hidden),
            engine,
            State.FAILED,
            now,
            step=failure.step,
            error=told(str(failure), target, [database]),
            left_behind=_left_behind(failure, target),
        )
        for database, failure in run.failures
    ]
    return reports


def cut_short(
    target: TargetConfig, run: TargetRun, cancelled: BaseException, why: str
) -> list[Report]:
    """The reports of a run the shutdown cancelled (``why`` says how): those of the databases
    it had finished, and a failure at step ``shutdown`` for each of the rest (``*`` before the
    server listed its databases; what the one under way left in the storage goes with the
    first), logged. A backup stopped by SIGTERM is told, as any other failure is."""
    hidden = secrets_of(target)
    reports = reports_of(target, run) if run.results or run.failures else []
    if run.planned is not None:  # made in turn: those done are the first (a name can repeat)
        rest = run.planned[len(run.results) + len(run.failures) :]
    elif target.database.all_databases:
        rest = [target.database.database]
    else:
        done = {result.database for result in run.results} | {name for name, _ in run.failures}
        rest = [name for name in target.database.databases if name not in done]
    reports += [
        Report(
            target.name,
            mask(name, hidden),
            target.database.engine.value,
            State.FAILED,
            datetime.now(target.layout.tz),
            step="shutdown",
            error=told(why, target),
            left_behind=_left_behind(cancelled, target) if index == 0 else None,
        )
        for index, name in enumerate(rest)  # the first was under way
    ]
    log_reports(reports)
    return reports


def _left_behind(error: BaseException | None, target: TargetConfig) -> str | None:
    """What the failed run left in the storage (``backup.left_behind``), as ``told``."""
    left = None if error is None else left_behind(error)
    return None if left is None else told(left, target)


async def judged(
    target: TargetConfig, run: TargetRun, hidden: list[str], storage: Storage | None = None
) -> list[Report]:
    """The run's reports, each successful backup compared with its predecessors: an anomalous
    one is reported as ``anomaly`` with what looks wrong (see ``anomaly.py``); it stays a
    successful backup."""
    reports = reports_of(target, run)
    if not run.results:
        return reports
    try:
        findings = await anomalies(target, [r.key for r in run.results], storage)
    except Exception as error:  # an anomaly check never fails a backup
        log.warning("%s: no anomaly check: %s", target.name, told(repr(error), target))
        return reports
    notes = {mask(key, hidden): told("; ".join(found), target) for key, found in findings.items()}
    return [
        replace(report, state=State.ANOMALY, note=notes[report.key])
        if report.key in notes
        else report
        for report in reports
    ]


def prune_wanted(target: TargetConfig, reports: list[Report]) -> bool:
    """Whether a run's prune goes ahead: the target has a policy, the run succeeded, and no
    backup of it looks anomalous. A database that shrank sharply (emptied by mistake) must not
    push its good backups out: with ``RETENTION_KEEP_LAST=3`` three runs of the emptied
    database would otherwise delete every good backup, while the median still flagged them.
    A prune held back is a warning naming the databases."""
    if not target.retention.policy.enabled or not reports:
        return False
    if not all(report.ok for report in reports):
        return False
    odd = [report.database for report in reports if report.state is State.ANOMALY]
    if odd:
        log.warning(
            "%s: not pruning: the backup of %s looks anomalous; nothing is deleted until a "
            "run looks normal again (or run backupd prune by hand)",
            target.name,
            ", ".join(odd),
        )
        return False
    return True


def log_reports(reports: list[Report]) -> bool:
    """One log line per report, with its fields as structured properties; True if all succeeded."""
    for report in reports:
        extra = {"report": report.properties()}
        if report.ok:
            log.info(
                "backup of %s %s succeeded: %s, %s in %.1fs (%s), sha256 %s",
                report.target,
                report.database,
                report.key,
                human_size(report.size),
                report.duration_s,
                human_rate(report.size, report.duration_s),
                report.sha256,
                extra=extra,
            )
        else:
            log.error(
                "backup of %s %s FAILED at %s: %s",
                report.target,
                report.database,
                report.step,
                report.error,
                extra=extra,
            )
    return all(report.ok for report in reports)


def announce(target: TargetConfig) -> asyncio.Task[None]:
    """Start telling everyone that a run of ``target`` begins (the ``/start`` ping), alongside
    the run: a slow or dead ping service never delays the dump. The task never raises (a
    notifier that fails is logged); ``tell`` waits for it."""
    return asyncio.create_task(notify.run_started(target), name=f"announce-{target.name}")


async def tell(target: TargetConfig, reports: list[Report], announced: asyncio.Task[None]) -> None:
    """Tell everyone how a run went (mail, webhooks, pings), once its start has been told: a
    ping service reads a ``/start`` that arrives after the result as a run that never ended.
    Bounded by each notifier's own timeouts (see ``notify``); never raises."""
    await announced
    await notify.run_finished(target, reports)


def prune_report(target: TargetConfig, failure: PruneFailure) -> Report:
    """The report of a failed prune, for the whole target (``database`` is DB_DATABASE as
    configured), masked. A successful prune is not told: its lines are in the log."""
    hidden = secrets_of(target)
    return Report(
        target.name,
        mask(target.database.database, hidden),
        target.database.engine.value,
        State.FAILED,
        datetime.now(target.layout.tz),
        step="prune",
        error=told(failure.reason, target),
        kind="prune",
    )


async def tell_prune_failed(target: TargetConfig, failure: PruneFailure) -> None:
    """Mail and webhooks about a failed prune (not the dead-man's switch: the backup before it
    succeeded); bounded by each notifier's timeouts, never raises."""
    report = prune_report(target, failure)
    await notify.run_finished(target, [report], ping=False)


async def backup_and_log(
    target: TargetConfig, progress: Progress | None = None, run: TargetRun | None = None
) -> list[Report]:
    """Run one target and log how it went, one line per database; nothing is notified.
    ``run`` records each database's outcome as it comes (see ``run_backup``)."""
    hidden = secrets_of(target)
    try:
        # One storage connection for the run and the checks after it: a second client would
        # cost its set-up again (botocore's models, a TLS context) in every run.
        async with open_storage(target.storage) as storage:
            run = await run_backup(target, progress, storage, run)
            reports = await judged(target, run, hidden, storage)
    except Exception as error:  # isolation: report it, whatever it was
        log.debug("details", exc_info=True)
        reports = reports_of(target, None, error)
    log_reports(reports)
    return reports


STOPPED_BY_SIGNAL = (
    "stopped by a signal (SIGTERM, SIGINT or SIGHUP): a dump under way was stopped, its upload"
    " aborted"
)
"""Why ``backup_and_report`` tells the databases of a run a signal cancelled as failed."""


async def backup_and_report(target: TargetConfig, progress: Progress | None = None) -> list[Report]:
    """Run one target and tell everyone how it went: logs, mail, webhooks, pings. The start
    ping goes out alongside the run; the rest once the run is over.

    Cancelled (``backupd once`` got a signal), the run is told as ``cut_short``: the databases
    it stored as stored, the rest failed at step ``shutdown``; then the CancelledError goes on.
    Cancelled while telling a run that is over, the telling goes on, and then
    ``ToldThenStopped`` (``_told_through``). The telling is bounded by each notifier's own
    timeouts; a second cancellation stops it."""
    announced = announce(target)
    run = TargetRun(target.name)
    try:
        reports = await backup_and_log(target, progress, run)
    except asyncio.CancelledError as cancelled:
        reports = cut_short(target, run, cancelled, STOPPED_BY_SIGNAL)
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the notifiers' own timeouts work as in any run
        await tell(target, reports, announced)
        raise
    await _told_through(tell(target, reports, announced))
    return reports


class ToldThenStopped(asyncio.CancelledError):
    """``backup_and_report`` was cancelled once its run was over: every database was told as
    it went, and nothing was cut short (``backupd once`` says so in its last line)."""


async def _told_through(telling: Coroutine[Any, Any, None]) -> None:
    """Await ``telling``, the notifications of a run that is over: a signal that comes
    meanwhile lets them finish, bounded by each notifier's own timeouts, and then goes on as
    ``ToldThenStopped`` (a stored backup, or a failure, is not left untold with its ``/start``
    ping unanswered); a second signal stops them."""
    task = asyncio.ensure_future(telling)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task  # cancelled in turn by a second cancellation
        raise ToldThenStopped from None
