"""The end of the byte pipeline: a byte source → fixed-size parts, hashed on the way.

Every part but the last is exactly the size the storage asks for (R2 requires it), and the
pipeline reads the next part only when the storage accepts one: memory stays bounded by the
part size times the upload concurrency, whatever the size of the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Callable

from backupd.parts import BufferPool, Part, Readable

__all__ = ["Digest", "Readable", "fixed_parts"]


class Digest:
    """Running SHA-256 and byte count of what is stored.

    Hashing runs in a worker thread, one part behind the reader, so the event loop keeps
    draining the dump's pipe while the previous part is hashed.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._pending: asyncio.Future[None] | None = None
        self.size = 0

    async def update(self, part: Part) -> None:
        if self._pending is not None:
            await self._pending
        self.size += part.size
        self._pending = asyncio.ensure_future(self._hash(part))

    async def _hash(self, part: Part) -> None:
        # A thread cannot be stopped: when this task is cancelled (a failed dump, shutdown),
        # the part is released only once the thread is done reading it.
        work = asyncio.ensure_future(asyncio.to_thread(self._update, part.body))
        try:
            await asyncio.shield(work)
        finally:
            await asyncio.wait([work])
            part.release()

    def _update(self, body: io.BytesIO) -> None:
        with body.getbuffer() as view:
            self._sha.update(view)

    async def settle(self) -> None:
        """Wait for the part being hashed, if any, whatever its outcome (after a failure)."""
        if self._pending is not None:
            await asyncio.gather(self._pending, return_exceptions=True)

    async def hexdigest(self) -> str:
        if self._pending is not None:
            await self._pending
        return self._sha.hexdigest()


async def fixed_parts(
    source: Readable,
    part_size: Callable[[int], int],
    digest: Digest,
    pool: BufferPool | None = None,
) -> AsyncIterator[Part]:
    """Yield parts of exactly ``part_size(n)`` bytes (the last may be smaller) until EOF.

    Each part's buffer is filled straight from ``source``: no copy beyond the source's own.
    """
    buffers = pool if pool is not None else BufferPool(keep=0)
    number = 1
    while True:
        size = part_size(number)
        body = buffers.take(size)
        filled = await source.fill(body)
        if filled < size:
            body.truncate(filled)
        body.seek(0)
        if filled:
            part = buffers.part(body, filled)
            await digest.update(part)
            yield part
        if filled < size:
            return
        number += 1
