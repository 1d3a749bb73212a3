"""The contract every storage backend fulfils."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from backupd.parts import Part

log = logging.getLogger(__name__)

Estimate = Callable[[], Awaitable[int | None]]
T = TypeVar("T")

SETTLE_S = 10.0
"""How long a write that is cancelled while its request is in flight waits for that request's
answer (see ``finish_in_flight``)."""


class Upload(Protocol):
    """One object being written. Nothing is visible until ``commit`` succeeds.

    Leaving the context without a successful ``commit`` (an error, a cancellation) aborts: no
    open multipart upload remains. An object remains only when the commit's own request reached
    the store and no answer came back that says so: the storage cannot tell that object from
    another writer's, so the caller, which knows the key is its own (backups carry their run's
    id), removes it. A commit cancelled with its request in flight first waits for the answer
    (``finish_in_flight``), so that the removal comes after the write.
    """

    def part_size(self, number: int) -> int:
        """Size of part ``number`` (1-based); every part but the last has exactly this size."""
        ...

    async def write(self, part: Part) -> None:
        """Accept the next part; waits while uploads lag (backpressure)."""
        ...

    async def commit(self) -> None:
        """Publish the object. Fails if the key already exists; where an answer can be lost
        (an object store, whose client retries), a key found holding exactly the bytes this
        upload sent is this upload's own earlier attempt, and counts as published."""
        ...


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload (or, in a folder, a temporary file) that was started, never finished."""

    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True)
class Lock:
    """An object's Object Lock retention as the store reports it (all None: not locked)."""

    mode: str | None = None
    until: datetime | None = None
    version_id: str | None = None

    def holds(self, now: datetime) -> bool:
        """Whether the object cannot be deleted at ``now`` (aware)."""
        return self.until is not None and self.until > now


@dataclass(frozen=True)
class Removal:
    """One object to delete: its key, and on a versioned bucket the version to remove."""

    key: str
    version_id: str | None = None


FILE_MODE = 0o640
"""Mode of the files backupd writes on a local disk (backups, manifests, restored dumps): a
backup holds the whole database, so its owner and group may read it (less with a stricter
umask), never every user of the host, whatever the umask (022 in containers)."""

MAX_DELETE_BATCH = 1_000
"""S3's DeleteObjects takes at most this many keys a request."""


class Storage(Protocol):
    """A bucket or folder that holds backups."""

    description: str

    async def warm_up(self) -> None:
        """Open connections ahead of need (optional work, safe to run concurrently)."""
        ...

    def upload(
        self,
        key: str,
        metadata: dict[str, str],
        *,
        locked: bool = False,
        estimate: Estimate | None = None,
    ) -> AbstractAsyncContextManager[Upload]:
        """Start writing ``key``; see ``Upload``. ``locked``: under the configured Object Lock
        (backups and their manifests; never probes, claims or other bookkeeping). A store whose
        parts cannot grow (R2) may call ``estimate`` (the database's rough size in bytes, or
        None) to choose large enough parts."""
        ...

    async def put_bytes(
        self, key: str, data: bytes, content_type: str, *, locked: bool = False
    ) -> None:
        """Write a small object in one request; never overwrite. As with ``Upload.commit``, a
        key found holding exactly ``data`` after a lost answer counts as written, and a write
        cancelled in flight waits for its answer. ``locked`` as in ``upload``."""
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

    async def delete_many(self, objects: Sequence[Removal]) -> dict[str, str]:
        """Delete ``objects``, in requests of at most ``MAX_DELETE_BATCH`` keys.

        Returns the keys that could not be deleted with the store's reason; a key that is
        already gone counts as deleted. Raises StorageError when a whole request fails.
        """
        ...

    def list_uploads(self, prefix: str) -> AsyncIterator[PendingUpload]:
        """Uploads started under ``prefix`` and neither completed nor aborted."""
        ...

    async def abort_upload(self, upload: PendingUpload) -> None:
        """Abort ``upload`` and free its parts; no error when it is already gone."""
        ...

    async def last_activity(self, upload: PendingUpload) -> datetime:
        """When ``upload`` last made progress: its newest part's upload time (S3 ListParts'
        ``LastModified``), or when it started if it has none or is gone; in a folder, when
        its temporary file was last written (which ``initiated`` already is)."""
        ...

    async def object_lock_enabled(self) -> bool:
        """Whether the bucket has Object Lock enabled (a folder never has)."""
        ...

    async def lock_of(self, key: str) -> Lock:
        """``key``'s Object Lock retention and version (``Lock()`` when it has none)."""
        ...


class ClaimStore(Protocol):
    """What coordinating replicas need of a store: atomic conditional writes (S3, R2, MinIO).

    ETags are passed as the store returns them (quoted). A write whose condition fails returns
    None; every other failure raises StorageError.
    """

    description: str

    async def create(self, key: str, data: bytes) -> str | None:
        """Write ``key`` only if it does not exist (``If-None-Match: *``); its ETag, or None."""
        ...

    async def replace(self, key: str, data: bytes, etag: str) -> str | None:
        """Overwrite ``key`` only if its ETag is still ``etag`` (``If-Match``); the new ETag,
        or None when the object changed or is gone."""
        ...

    async def read(self, key: str) -> tuple[bytes, str] | None:
        """A small object and its ETag; None when there is no such key."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; no error when it is already gone."""
        ...

    def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Every object whose key starts with ``prefix``."""
        ...

    async def abort_uploads(self, key: str) -> int:
        """Abort every open multipart upload of exactly ``key``; how many there were."""
        ...


class Fence(Protocol):
    """The run's hold on its slot, checked by a storage before it makes anything visible."""

    async def writing(self, key: str) -> None:
        """Note that an upload of ``key`` starts (a replica taking over aborts it)."""
        ...

    async def check(self, key: str) -> None:
        """Raise ClaimLost unless this run still holds its slot; extends the hold."""
        ...


publish_fence: ContextVar[Fence | None] = ContextVar("publish_fence", default=None)
"""The current run's fence, or None (no coordination). Set by ``claims.Lease`` for the run."""


async def check_fence(key: str) -> None:
    """Call before publishing ``key`` (complete, single put, manifest)."""
    fence = publish_fence.get()
    if fence is not None:
        await fence.check(key)


async def note_writing(key: str) -> None:
    """Call before starting a multipart upload of ``key``."""
    fence = publish_fence.get()
    if fence is not None:
        await fence.writing(key)


async def finish_in_flight(request: Awaitable[T], what: str, bound: float = SETTLE_S) -> T:
    """Await ``request``, a write that can make ``what`` visible.

    Cancelled meanwhile, it lets the request finish first (at most ``bound`` seconds; a second
    cancellation cuts that short), then passes the cancellation on. Whether the write landed
    is then decided before the caller cleans up, so that a removal of ``what`` is never
    overtaken by the very write it undoes. Past ``bound`` the request is cancelled; should it
    land even so, ``what`` is left without a manifest (incomplete, removed by retention).
    """
    task = asyncio.ensure_future(request)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_outcome_is_moot)
        if not task.done():
            log.info(
                "interrupted while writing %s: waiting up to %.0fs for the request in flight",
                what,
                bound,
            )
            try:
                await asyncio.wait([task], timeout=bound)
            finally:
                task.cancel()
        raise


def _outcome_is_moot(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a request its caller no longer waits for (cancelled)."""
    if not task.cancelled():
        task.exception()
