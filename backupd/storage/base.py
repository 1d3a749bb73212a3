"""The contract every storage backend fulfils."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from backupd.parts import Part

Estimate = Callable[[], Awaitable[int | None]]


class Upload(Protocol):
    """One object being written. Nothing is visible until ``commit`` succeeds.

    Leaving the context without ``commit`` (an error, a cancellation) aborts: no object and
    no open multipart upload remain.
    """

    def part_size(self, number: int) -> int:
        """Size of part ``number`` (1-based); every part but the last has exactly this size."""
        ...

    async def write(self, part: Part) -> None:
        """Accept the next part; waits while uploads lag (backpressure)."""
        ...

    async def commit(self) -> None:
        """Publish the object. Fails if the key already exists."""
        ...


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: datetime


class Storage(Protocol):
    """A bucket or folder that holds backups."""

    description: str

    async def warm_up(self) -> None:
        """Open connections ahead of need (optional work, safe to run concurrently)."""
        ...

    def upload(
        self, key: str, metadata: dict[str, str], estimate: Estimate | None = None
    ) -> AbstractAsyncContextManager[Upload]:
        """Start writing ``key``; see ``Upload``. A store whose parts cannot grow (R2) may call
        ``estimate`` (the database's rough size in bytes, or None) to choose large enough parts."""
        ...

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Write a small object in one request; never overwrite."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; no error when it is already gone."""
        ...

    def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Every object whose key starts with ``prefix``, however many there are."""
        ...

    async def get_bytes(self, key: str) -> bytes:
        """A small object, whole (a manifest)."""
        ...

    def download(self, key: str) -> AsyncIterator[bytes]:
        """An object's bytes in chunks of bounded size, in order."""
        ...
