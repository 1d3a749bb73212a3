"""HTTP notifications: a JSON POST per backup, and healthchecks.io-style pings per run."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from backupd.notify.base import Report

TIMEOUT = 10.0
ATTEMPTS = 3
MAX_REDIRECTS = 5
"""Redirects a POST follows (307 and 308 only; see ``request``)."""
BUSY = frozenset({408, 429})
"""Refusals that say "not now" (a request timeout, too many requests), tried again like a 5xx."""
MAX_RETRY_AFTER = 10.0
"""Seconds of a ``Retry-After`` the next attempt waits at most."""


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
    """POST ``data`` (or GET without data) with a short timeout (``TIMEOUT`` seconds) and
    ``ATTEMPTS`` tries; raise RuntimeError at the end, saying what failed but never the URL:
    it may hold a token, and aiohttp writes it normalised (host lower-cased, ``%7e`` as ``~``,
    a space as ``+``), in a spelling masking would not find.

    Delivered means a 2xx answer; a 5xx, 408 or 429 is tried again, after the ``Retry-After``
    the receiver asks for (at most ``MAX_RETRY_AFTER`` seconds): webhooks of chat services
    allow a few posts a second, and a run's posts (one per database) go out together.
    A POST follows only the redirects that keep it a POST with
    its body, 307 and 308 (RFC 9110, section 15.4: what an http:// to https:// redirect of a
    proxy such as Caddy or Traefik answers), up to ``MAX_REDIRECTS``; on a 301, 302 or 303 a
    client repeats it as a GET without the body, so the report would be lost while the
    receiver answered 200: that is a failure that asks for the final URL. A GET (a ping)
    carries nothing and follows every redirect, as curl -L does for the pings healthchecks.io
    documents.
    """
    from aiohttp import ClientConnectorError, ClientError, ClientSession, ClientTimeout

    problem = "no attempt"
    async with ClientSession(timeout=ClientTimeout(total=TIMEOUT)) as session:
        for attempt in range(ATTEMPTS):
            wait = 0.5 * (attempt + 1)
            try:
                status, reason, located, later = await _send(session, url, data)
                if status < 300:
                    return
                problem = refusal(status, reason, located)
                if status < 500 and status not in BUSY:
                    break  # the receiver refuses the request itself: trying again won't help
                wait = max(wait, min(later, MAX_RETRY_AFTER))
            except ClientConnectorError as failure:
                problem = f"cannot connect: {failure.os_error.strerror or failure.os_error}"
            except TimeoutError:
                problem = f"no answer within {TIMEOUT:.0f}s"
            except (ClientError, ValueError) as failure:
                problem = type(failure).__name__
            if attempt + 1 < ATTEMPTS:
                await asyncio.sleep(wait)
    raise RuntimeError(problem)


async def _send(session: Any, url: str, data: bytes | None) -> tuple[int, str | None, bool, float]:
    """One request (see ``request``), following a POST's 307 and 308 redirects; the last
    answer's status, reason, whether it named a ``Location``, and the seconds its
    ``Retry-After`` asks to wait (0 when none, or given as a date)."""
    target = url
    headers = {"Content-Type": "application/json"} if data is not None else {}
    for hop in range(MAX_REDIRECTS + 1):
        method = "POST" if data is not None else "GET"
        async with session.request(
            method, target, data=data, headers=headers, allow_redirects=data is None
        ) as answer:
            location = answer.headers.get("Location")
            keeps_body = answer.status in (307, 308) and data is not None
            if not (keeps_body and location and hop < MAX_REDIRECTS):
                later = answer.headers.get("Retry-After", "").strip()
                wait = float(later) if later.isdecimal() else 0.0
                return answer.status, answer.reason, location is not None, wait
            target = urljoin(str(answer.url), location)
    raise AssertionError("unreachable: the last hop returns")


def refusal(status: int, reason: str | None, located: bool) -> str:
    """Why an answer other than 2xx is no delivery, in one line without the URL (nor the
    ``Location`` a redirect names: it may carry the token too)."""
    said = f"HTTP {status} {reason or ''}".strip()
    if not 300 <= status < 400:
        return said
    if not located:
        return f"{said}: the URL answers with a redirect but names no Location; set the final URL"
    if status in (307, 308):
        return f"{said}: the URL redirects more than {MAX_REDIRECTS} times; set the final URL"
    return (
        f"{said}: the URL redirects elsewhere, and a POST redirected by {status} arrives as a "
        "GET without the report, so backupd does not follow it; set the final URL"
    )


async def post_report(url: str, report: Report) -> None:
    await request(url, json.dumps(payload(report)).encode())


async def ping(url: str, event: str) -> None:
    await request(ping_url(url, event))
