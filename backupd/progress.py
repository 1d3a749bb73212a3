"""Progress of long transfers: a log line every 15 s, or a live line on a terminal.

When the size can be estimated beforehand (``Source.estimated_size``), lines carry an about-
percentage and an ETA; estimates are rough (a database's size on disk is not its dump's), so
the percentage stops at 99 until the transfer is done and every figure says "about".
"""

from __future__ import annotations

import logging
from typing import Protocol

from backupd.units import human_duration, human_rate, human_size

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 15.0


class Progress(Protocol):
    def expect(self, key: str, total: int | None) -> None:
        """About how many bytes ``update`` will count for ``key`` in all, if known."""
        ...

    def update(self, key: str, size: int, elapsed: float) -> None: ...

    def done(self, key: str) -> None: ...


def progress_text(size: int, elapsed: float, total: int | None) -> str:
    """``'1.2 GiB of about 2.0 GiB (about 60%), 50.0 MiB/s, 25s elapsed, about 17s left'``.

    Without a total (or a useless one): size, rate and elapsed time only. Past the estimate:
    ``'(more than the estimated 2.0 GiB)'`` and no ETA.
    """
    rate = human_rate(size, elapsed)
    spent = human_duration(elapsed)
    if not total or total <= 0:
        return f"{human_size(size)}, {rate}, {spent} elapsed"
    if size >= total:
        return (
            f"{human_size(size)} (more than the estimated {human_size(total)}), {rate}, "
            f"{spent} elapsed"
        )
    percent = min(99, int(size * 100 / total))
    text = f"{human_size(size)} of about {human_size(total)} (about {percent}%), {rate}, {spent}"
    text += " elapsed"
    if size > 0 and elapsed > 0:
        text += f", about {human_duration((total - size) * elapsed / size)} left"
    return text


class LogProgress:
    """Logs a long backup's progress every 15 seconds."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._totals: dict[str, int | None] = {}

    def expect(self, key: str, total: int | None) -> None:
        self._totals[key] = total

    def update(self, key: str, size: int, elapsed: float) -> None:
        if elapsed - self._last.get(key, 0.0) >= PROGRESS_INTERVAL:
            self._last[key] = elapsed
            log.info("%s: %s", key, progress_text(size, elapsed, self._totals.get(key)))

    def done(self, key: str) -> None:
        self._last.pop(key, None)
        self._totals.pop(key, None)


class TerminalProgress:
    """A live progress line for ``backupd once`` and ``restore`` on a terminal."""

    def __init__(self) -> None:
        self._shown = 0.0
        self._totals: dict[str, int | None] = {}

    def expect(self, key: str, total: int | None) -> None:
        self._totals[key] = total

    def update(self, key: str, size: int, elapsed: float) -> None:
        if elapsed - self._shown >= 0.2:
            self._shown = elapsed
            line = f"{key}: {progress_text(size, elapsed, self._totals.get(key))}"
            print(f"\r{line[-120:]:<120}", end="", flush=True)

    def done(self, key: str) -> None:
        if self._shown:
            print(flush=True)
        self._shown = 0.0
        self._totals.pop(key, None)
