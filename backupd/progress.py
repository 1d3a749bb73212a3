"""Progress of long transfers: a log line every 15 s, or a live line on a terminal."""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 15.0


class Progress(Protocol):
    def update(self, key: str, size: int, elapsed: float) -> None: ...

    def done(self, key: str) -> None: ...


class LogProgress:
    """Logs a long backup's progress every 15 seconds."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def update(self, key: str, size: int, elapsed: float) -> None:
        if elapsed - self._last.get(key, 0.0) >= PROGRESS_INTERVAL:
            self._last[key] = elapsed
            rate = size / elapsed / 1e6 if elapsed else 0.0
            log.info("%s: %.1f MB stored, %.1f MB/s, %.0fs elapsed", key, size / 1e6, rate, elapsed)

    def done(self, key: str) -> None:
        self._last.pop(key, None)


class TerminalProgress:
    """A live progress line for ``backupd once`` and ``restore`` on a terminal."""

    def __init__(self) -> None:
        self._shown = 0.0

    def update(self, key: str, size: int, elapsed: float) -> None:
        if elapsed - self._shown >= 0.2:
            self._shown = elapsed
            rate = size / elapsed / 1e6 if elapsed else 0.0
            line = f"{key}: {size / 1e6:,.1f} MB  {rate:,.1f} MB/s  {elapsed:,.0f}s"
            print(f"\r{line[-120:]:<120}", end="", flush=True)

    def done(self, key: str) -> None:
        if self._shown:
            print(flush=True)
        self._shown = 0.0
