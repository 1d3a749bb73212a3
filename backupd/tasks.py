"""Awaiting work that must not be cut short by a cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def until_done(action: Awaitable[T]) -> T:
    """Await ``action`` to its end even when cancelled meanwhile, however often; then re-raise
    the cancellation. For clean-ups and final writes that must not be cut short: dropping a
    drill's scratch database, a claim's last state."""
    task = asyncio.ensure_future(action)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
