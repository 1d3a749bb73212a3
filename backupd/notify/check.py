"""What ``backupd check`` finds out about notifications: mail goes through EHLO, TLS and login
as configured without sending; webhook, ping and Seq hosts answer. With ``--send-test``, one of
each is sent, so a person can see them arrive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar
from urllib.parse import urlsplit

from backupd.config import LogConfig, TargetConfig
from backupd.notify import email, webhook
from backupd.notify.base import NotifyError

T = TypeVar("T")
CONNECT_TIMEOUT = 5.0


async def reachable(variable: str, url: str) -> str:
    """Open (and close) a TCP connection to the URL's host and port; say which, or raise
    NotifyError naming ``variable``. The URL itself may hold a token: only host:port is said."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    where = f"{parts.hostname}:{port}"
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, writer = await asyncio.open_connection(parts.hostname, port)
        writer.close()
        await writer.wait_closed()
    except (OSError, TimeoutError) as error:
        raise NotifyError(
            f"{variable}: cannot connect to {where}: {error or 'timed out'}"
        ) from None
    return f"{variable} host {where} answers"


def check_payload(target: str) -> bytes:
    """The webhook body ``--send-test`` posts: a report's fields, with result ``test``."""
    return json.dumps(
        {
            "target": target,
            "database": None,
            "result": "test",
            "message": "test from backupd check --send-test",
            "finished": datetime.now().astimezone().isoformat(),
        }
    ).encode()


async def _mail(target: TargetConfig, send_test: bool) -> str:
    config = target.email
    if send_test:
        steps = await email.send_test(config, target.name)
        return f"EMAIL_SMTP {config.smtp}:{config.effective_port}: {', '.join(steps)}"
    steps = await email.verify(config)
    return (
        f"EMAIL_SMTP {config.smtp}:{config.effective_port}: {', '.join(steps) or 'connected'}; "
        "nothing sent (--send-test sends one)"
    )


async def _webhook(url: str, target: str, send_test: bool) -> str:
    if not send_test:
        return await reachable("NOTIFY_WEBHOOK_URL", url) + "; nothing sent (--send-test posts one)"
    try:
        await webhook.request(url, check_payload(target))
    except RuntimeError as error:
        raise NotifyError(f"NOTIFY_WEBHOOK_URL: the test POST failed: {error}") from None
    return "NOTIFY_WEBHOOK_URL: posted one test report"


async def _ping(url: str, send_test: bool) -> str:
    if not send_test:
        return await reachable("HEALTHCHECK_PING_URL", url) + "; nothing sent (--send-test pings)"
    try:
        await webhook.ping(url, "success")
    except RuntimeError as error:
        raise NotifyError(f"HEALTHCHECK_PING_URL: the test ping failed: {error}") from None
    return "HEALTHCHECK_PING_URL: pinged once (success)"


async def notification_findings(
    target: TargetConfig, finding: Callable[[bool, str, str], T], send_test: bool
) -> list[T]:
    """One finding per configured notifier of ``target``."""
    checks: list[tuple[str, asyncio.Future[str]]] = []
    if target.email.enabled:
        checks.append(("mail", asyncio.ensure_future(_mail(target, send_test))))
    if target.hooks.webhook_url is not None:
        url = target.hooks.webhook_url.get_secret_value()
        checks.append(("webhook", asyncio.ensure_future(_webhook(url, target.name, send_test))))
    if target.hooks.ping_url is not None:
        url = target.hooks.ping_url.get_secret_value()
        checks.append(("ping", asyncio.ensure_future(_ping(url, send_test))))
    if send_test and not checks:  # said, lest --send-test look like it sent something
        unset = "EMAIL_SMTP, NOTIFY_WEBHOOK_URL and HEALTHCHECK_PING_URL are unset"
        return [finding(True, "notifications", f"nothing to send a test to: {unset}")]
    findings = []
    for what, check in checks:
        try:
            findings.append(finding(True, what, await check))
        except NotifyError as error:
            findings.append(finding(False, what, str(error)))
        except Exception as error:  # one FAIL line, never a traceback (``finding`` masks)
            findings.append(finding(False, what, f"{type(error).__name__}: {error}"))
    return findings


async def seq_event(config: LogConfig) -> None:
    """POST one test event to Seq's raw ingestion API; raise NotifyError naming SEQ_URL."""
    from aiohttp import ClientError, ClientSession, ClientTimeout

    assert config.seq_url is not None
    event = {
        "Timestamp": datetime.now().astimezone().isoformat(),
        "Level": "Information",
        "MessageTemplate": "test event from backupd check --send-test",
        "Properties": {"Application": "backupd", "Environment": config.environment},
    }
    headers = {"Content-Type": "application/json"}
    if config.seq_api_key is not None:
        headers["X-Seq-ApiKey"] = config.seq_api_key.get_secret_value()
    url = config.seq_url.rstrip("/") + "/api/events/raw"
    try:
        async with (
            ClientSession(timeout=ClientTimeout(total=CONNECT_TIMEOUT * 2)) as session,
            session.post(url, data=json.dumps({"Events": [event]}), headers=headers) as response,
        ):
            response.raise_for_status()
    except (ClientError, TimeoutError) as error:
        raise NotifyError(f"SEQ_URL: the test event was refused: {error}") from None


async def seq_finding(config: LogConfig, send_test: bool) -> tuple[bool, str] | None:
    """(ok, detail) about SEQ_URL, or None without Seq; ``send_test`` posts one event."""
    if config.seq_url is None:
        return None
    try:
        detail = await reachable("SEQ_URL", config.seq_url)
        if send_test:
            await seq_event(config)
            return True, detail + "; sent one test event"
    except NotifyError as error:
        return False, str(error)
    return True, detail + "; nothing sent (--send-test sends one event)"
