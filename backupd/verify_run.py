"""A verify run told to everyone: log lines, then mail and webhooks (subject "verified" or
"VERIFY FAILED"), one report per database, masked like backup reports."""

from __future__ import annotations

import logging
from datetime import datetime

from backupd import notify
from backupd.config import TargetConfig, secrets_of
from backupd.errors import BackupdError
from backupd.notify import Report, State
from backupd.process import mask
from backupd.progress import Progress
from backupd.variables import told
from backupd.verify import Checked, Selection, verify_target

log = logging.getLogger(__name__)


def describe(checked: Checked) -> str:
    """One line saying what was proven about one backup, or what failed."""
    failure = checked.failure()
    if failure is not None:
        return f"VERIFY FAILED: {failure}"
    text = f"verified {checked.key}: {checked.size:,} bytes match the manifest's sha256"
    drill = checked.drill
    if drill is not None and drill.skipped is not None:
        text += f"; drill skipped: {drill.skipped}"
    elif drill is not None:
        text += (
            f"; drill restored it in {drill.restore_s:.1f}s and found "
            f"{drill.tables} recorded table(s) with their rows"
        )
    return text


def reports_of(target: TargetConfig, results: list[Checked]) -> list[Report]:
    hidden = secrets_of(target)
    now = datetime.now(target.layout.tz)
    return [
        Report(
            target.name,
            mask(checked.database, hidden),
            target.database.engine.value,
            State.SUCCEEDED if checked.ok else State.FAILED,
            now,
            key=checked.key,
            size=checked.size,
            duration_s=checked.drill.restore_s if checked.drill is not None else 0.0,
            step=None if checked.ok else "verify",
            error=None if checked.ok else told(checked.failure() or "", target, [checked.database]),
            kind="verify",
            note=told(describe(checked), target, [checked.database]),
        )
        for checked in results
    ]


async def verify_and_log(
    target: TargetConfig, selection: Selection, progress: Progress | None = None
) -> list[Checked]:
    """Verify one target and log how it went, one line per backup; nothing is notified. A
    storage that cannot be listed is one failure for the whole target."""
    try:
        results = await verify_target(target, selection, progress)
    except BackupdError as error:
        results = [Checked(target.name, "*", None, problem=f"cannot list backups: {error}")]
    for checked, report in zip(results, reports_of(target, results), strict=True):
        line = told(describe(checked), target, [checked.database])
        extra = {"report": report.properties()}  # Seq and JSON logs, as a backup's line
        if checked.ok:
            log.info("%s: %s", target.name, line, extra=extra)
        else:
            log.error("%s: %s", target.name, line, extra=extra)
    return results


async def tell_verified(target: TargetConfig, results: list[Checked]) -> None:
    """Mail and webhooks about a verify run (not the dead-man's switch, which watches
    backups); bounded by each notifier's timeouts, never raises."""
    await notify.run_finished(target, reports_of(target, results), ping=False)


async def verify_and_report(
    target: TargetConfig, selection: Selection, progress: Progress | None = None
) -> list[Checked]:
    """Verify one target and tell everyone how it went (``verify_and_log``, then
    ``tell_verified``)."""
    results = await verify_and_log(target, selection, progress)
    await tell_verified(target, results)
    return results
