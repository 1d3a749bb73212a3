"""Telling people: mail, webhooks and pings, per target. A notifier that fails is logged as a
warning and never changes a backup's result; Seq and console logs are set up in ``logs.py``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from backupd.config import TargetConfig
from backupd.notify import webhook
from backupd.notify.base import Report, State
from backupd.variables import told

__all__ = ["Report", "State", "run_finished", "run_started"]

log = logging.getLogger(__name__)


async def _quietly(what: str, action: Awaitable[None], target: TargetConfig) -> None:
    try:
        await action
    except Exception as error:  # a notifier never breaks a backup
        log.warning("%s failed: %s", what, told(str(error) or type(error).__name__, target))


async def run_started(target: TargetConfig) -> None:
    if target.hooks.ping_url is not None:
        await _quietly(
            "healthcheck ping",
            webhook.ping(target.hooks.ping_url.get_secret_value(), "start"),
            target,
        )


async def run_finished(target: TargetConfig, reports: list[Report], ping: bool = True) -> None:
    """Send every notification of a finished run, concurrently; each is bounded in time.
    ``ping`` False: not the dead-man's switch (it watches backups, not verifies)."""
    sends = []
    if target.email.enabled:
        # Imported only now: with aiosmtplib and the email package it costs about 8 ms,
        # which every run without mail would pay before its dump starts.
        from backupd.notify import email

        mailed = [report for report in reports if email.wanted(target.email, report)]
        if mailed:
            about = ", ".join(report.database for report in mailed)
            mail = email.send_all(target.email, mailed)
            sends.append(_quietly(f"mail about {about}", mail, target))
    for report in reports:
        if target.hooks.webhook_url is not None:
            url = target.hooks.webhook_url.get_secret_value()
            sends.append(
                _quietly(
                    f"webhook about {report.database}", webhook.post_report(url, report), target
                )
            )
    if ping and target.hooks.ping_url is not None:
        event = "success" if reports and all(r.ok for r in reports) else "fail"
        sends.append(
            _quietly(
                "healthcheck ping",
                webhook.ping(target.hooks.ping_url.get_secret_value(), event),
                target,
            )
        )
    await asyncio.gather(*sends)
