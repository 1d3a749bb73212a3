"""The unit that flows from the byte pipeline to storage: one part of one object."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class Readable(Protocol):
    """A byte source the pipeline reads from: a dump's stdout, a file, a stage's output."""

    async def fill(self, target: io.BytesIO | bytearray) -> int:
        """Fill ``target``; return the count, which is short only at end of stream."""
        ...


def _nothing() -> None:
    return None


def _at_once(callback: Callable[[], None]) -> None:
    callback()


@dataclass(frozen=True)
class Part:
    """One part, ready to send: ``body`` is positioned at 0 and holds ``size`` bytes.

    A ``BytesIO`` because it can be filled in place and sent as a stream: aiohttp sends it in
    chunks instead of copying it whole, and botocore rewinds it to retry. Each reader of the
    part (the hasher, the storage) calls ``release()`` once done with it; after the last
    release its buffer may be reused.
    """

    body: io.BytesIO
    size: int
    release: Callable[[], None] = field(default=_nothing, repr=False, compare=False)
    when_free: Callable[[Callable[[], None]], None] = field(
        default=_at_once, repr=False, compare=False
    )
    """Call a function once every reader has released the part (at once if none is tracked):
    the storage counts a part against its memory budget until then, hashing included."""


class PartBody(io.BytesIO):
    """A part's buffer. Its own type, so that a storage backend can send it its own way."""


def blank_body(size: int) -> io.BytesIO:
    """A buffer of ``size`` bytes to be filled in place through ``getbuffer()``."""
    body = PartBody()
    body.seek(size - 1)
    body.write(b"\0")
    body.seek(0)
    return body


def fill(target: io.BytesIO | bytearray, read_into: Callable[[memoryview], int | None]) -> int:
    """Fill ``target`` with repeated ``read_into`` calls; return the count (short only at EOF).

    The view is taken here, in the reading thread: a caller cancelled mid-read must not release
    a buffer this thread is still writing into.
    """
    with target.getbuffer() if isinstance(target, io.BytesIO) else memoryview(target) as view:
        filled = 0
        while filled < len(view) and (count := read_into(view[filled:])):
            filled += count
        return filled


class BufferPool:
    """Reuses part buffers, so that each part does not fault in and zero fresh pages."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._free: list[io.BytesIO] = []

    def take(self, size: int) -> io.BytesIO:
        while self._free:
            body = self._free.pop()
            if body.seek(0, os.SEEK_END) == size:
                body.seek(0)
                return body
        return blank_body(size)

    def part(self, body: io.BytesIO, size: int, readers: int = 2) -> Part:
        """A part whose buffer returns to the pool once all ``readers`` released it."""
        remaining = [readers]
        waiting: list[Callable[[], None]] = []

        def release() -> None:
            remaining[0] -= 1
            if remaining[0] != 0:
                return
            if len(self._free) < self._keep:
                self._free.append(body)
            for callback in waiting:
                callback()

        def when_free(callback: Callable[[], None]) -> None:
            if remaining[0] <= 0:
                callback()
            else:
                waiting.append(callback)

        return Part(body, size, release, when_free)
