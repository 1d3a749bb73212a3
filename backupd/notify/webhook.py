"""HTTP notifications: a JSON POST per backup, and healthchecks.io-style pings per run."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
    """``start`` → ``/start``, ``success`` → the bare URL, ``fail`` → ``/fail``.

    The event goes at the end of the path, before a query and a fragment, which are kept:
    healthchecks.io documents ``?create=1`` (create the check on first ping) and ``?rid=``
    (a run id) as query parameters of the same pinging URLs
    (https://healthchecks.io/docs/http_api/); appended after the query, ``/fail`` would be
    part of the query's value and the ping a success.
    """
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + ("" if event == "success" else f"/{event}")
    return urlunsplit(parts._replace(path=path))


async def request(url: str, data: bytes | None = None) -> None:
    """POST (or GET without data) with a short timeout (``TIMEOUT`` seconds) and
    ``ATTEMPTS`` tries; raise RuntimeError at the end, saying what failed but never the URL:
    it may hold a token, and aiohttp writes it normalised (host lower-cased, ``%7e`` as ``~``,
    a space as ``+``), in a spelling masking would not find."""
    from aiohttp import ClientConnectorError, ClientError, ClientSession, ClientTimeout

    problem = "no attempt"
    async with ClientSession(timeout=ClientTimeout(total=TIMEOUT)) as session:
        for attempt in range(ATTEMPTS):
            try:
                headers = {"Content-Type": "application/json"} if data is not None else {}
                async with session.request(
                    "POST" if data is not None else "GET", url, data=data, headers=headers
                ) as r:
                    if r.status < 400:
                        return
                    problem = f"HTTP {r.status} {r.reason or ''}".strip()
                    if r.status < 500:
                        break  # the receiver refuses the request itself: trying again won't help
            except ClientConnectorError as failure:
                problem = f"cannot connect: {failure.os_error.strerror or failure.os_error}"
            except TimeoutError:
                problem = f"no answer within {TIMEOUT:.0f}s"
            except (ClientError, ValueError) as failure:
                problem = type(failure).__name__
            await asyncio.sleep(0.5 * (attempt + 1))
    raise RuntimeError(problem)


async def post_report(url: str, report: Report) -> None:
    await request(url, json.dumps(payload(report)).encode())


async def ping(url: str, event: str) -> None:
    await request(ping_url(url, event))
