"""HTTP notifications: a JSON POST per backup, and healthchecks.io-style pings per run."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from backupd.notify.base import Report

TIMEOUT = 10.0
ATTEMPTS = 3


def payload(report: Report) -> dict[str, Any]:
    return {
        "target": report.target,
        "database": report.database,
        "engine": report.engine,
        "result": report.state.value,
        "key": report.key,
        "size": report.size,
        "duration_s": report.duration_s,
        "sha256": report.sha256,
        "finished": report.finished.isoformat(),
        "step": report.step,
        "error": report.error,
        "kind": report.kind,
        "note": report.note,
    }


def ping_url(base: str, event: str) -> str:
    """``start`` → ``/start``, ``success`` → the bare URL, ``fail`` → ``/fail``."""
    base = base.rstrip("/")
    return base if event == "success" else f"{base}/{event}"


async def request(url: str, data: bytes | None = None) -> None:
    """POST (or GET without data) with a short timeout and a couple of retries; raise at the end."""
    from aiohttp import ClientError, ClientSession, ClientTimeout

    error: Exception | None = None
    async with ClientSession(timeout=ClientTimeout(total=TIMEOUT)) as session:
        for attempt in range(ATTEMPTS):
            try:
                headers = {"Content-Type": "application/json"} if data is not None else {}
                async with session.request(
                    "POST" if data is not None else "GET", url, data=data, headers=headers
                ) as r:
                    if r.status < 500:
                        r.raise_for_status()
                        return
                    error = RuntimeError(f"HTTP {r.status}")
            except (ClientError, TimeoutError) as failure:
                error = failure
            await asyncio.sleep(0.5 * (attempt + 1))
    raise RuntimeError(str(error) or type(error).__name__)


async def post_report(url: str, report: Report) -> None:
    await request(url, json.dumps(payload(report)).encode())


async def ping(url: str, event: str) -> None:
    await request(ping_url(url, event))
