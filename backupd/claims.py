"""Claims on slots in the object store: make one, keep it, take one over, finish it.

``claimed(...)`` is the reusable async context manager: a backup, a prune or a verify run enters
it for its (target, kind, slot) and runs only when it yields a ``Lease``. Inside, the lease is
renewed every lease/3 and the storage checks it (``storage.base.publish_fence``) before it makes
anything visible, so a replica that lost its slot to another is cancelled before it publishes.
Names, contents and times are decided in ``coordination.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextvars import Token
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType

from backupd.coordination import (
    STALE_AFTER,
    Claim,
    Kind,
    State,
    claim_key,
    claims_prefix,
    finished,
    may_take_over,
    new_claim,
    parse_claim,
    released,
    renew_every,
    renewed,
    still_held,
    sweepable,
    taken_over,
    watch_delay,
    went_silent,
)
from backupd.errors import (
    BackupdError,
    ClaimLost,
    CoordinationError,
    CoordinationUnsupported,
    StorageError,
)
from backupd.storage.base import ClaimStore, Fence, publish_fence
from backupd.tasks import until_done

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
ATTEMPTS = 5
"""Create-or-take-over attempts before a claim that keeps changing is reported as an error."""
RETRY_RENEWAL = 1.0
"""Seconds between renewal attempts after one failed (the lease itself bounds how long)."""
SETTLE_ATTEMPTS = 3
"""Attempts at writing a claim's final state (done, or handed back)."""
HAND_BACK_WAIT = 10.0
"""Seconds a cancelled run (a shutdown) waits at most to hand its claim back."""
SWEEP_EVERY = 3600.0
"""Seconds between two sweeps of stale claims by one replica (``Claims.sweep``)."""


def wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Observed:
    """A claim held by another replica, as last read, and since when (monotonic seconds) it
    has been unchanged (the same ETag)."""

    key: str
    claim: Claim
    etag: str
    since: float = field(default_factory=time.monotonic)


class Claims:
    """One replica's claims in one store, under one destination folder."""

    def __init__(
        self,
        store: ClaimStore,
        folder: str,
        replica: str,
        lease: float,
        clock: Clock = wall_clock,
        job: str | None = None,
    ) -> None:
        self.store = store
        self.folder = folder
        self.replica = replica
        self.lease = lease
        self.clock = clock
        self.job = job
        """What the target backs up (``coordination.job_of``), part of its claims' keys."""
        self._swept_at: float | None = None

    async def sweep(self) -> list[str]:
        """Delete this folder's claims not written for a day, save each target's newest slot
        (``delete_stale_claims``), at most once per ``SWEEP_EVERY`` seconds (monotonic); the
        keys deleted. Raises StorageError."""
        now = time.monotonic()
        if self._swept_at is not None and now - self._swept_at < SWEEP_EVERY:
            return []
        self._swept_at = now
        return await delete_stale_claims(self.store, self.folder, self.clock())

    async def read(self, key: str) -> tuple[Claim, str] | None:
        """The claim at ``key`` and its ETag; None when there is none. Malformed: an error."""
        found = await self.store.read(key)
        if found is None:
            return None
        data, etag = found
        return parse_claim(data, key), etag

    async def try_claim(
        self, target: str, kind: Kind, slot: datetime, silent: Observed | None = None
    ) -> Lease | Observed:
        """Create the slot's claim, or take it over when its lease ran out (or it is still
        ``silent``, the claim ``wait_out`` found unchanged for a whole lease); otherwise say
        who holds it. Raises CoordinationError (naming the key) for a malformed claim."""
        key = claim_key(self.folder, target, kind, slot, self.job)
        nonce = secrets.token_hex(8)
        for _ in range(ATTEMPTS):
            mine = new_claim(target, kind, slot, self.replica, nonce, self.clock(), self.lease)
            etag = await self.store.create(key, mine.to_bytes())
            if etag is not None:
                return Lease(self, key, mine, etag)
            seen = await self.read(key)
            if seen is None:
                continue  # deleted meanwhile: create again
            claim, etag = seen
            if claim.nonce == nonce:  # our own write, answered 412 on a retried request
                return Lease(self, key, claim, etag)
            unchanged = silent is not None and silent.etag == etag
            if not may_take_over(claim, self.clock()) and not (
                unchanged and claim.state is State.RUNNING
            ):
                return Observed(key, claim, etag)
            lease = await self._take_over(key, claim, etag, nonce)
            if lease is not None:
                return lease
        raise CoordinationError(f"claim {key} kept changing during {ATTEMPTS} attempts; not run")

    async def _take_over(self, key: str, claim: Claim, etag: str, nonce: str) -> Lease | None:
        mine = taken_over(claim, self.replica, nonce, self.clock(), self.lease)
        new_etag = await self.store.replace(key, mine.to_bytes(), etag)
        if new_etag is None:
            return None  # another replica was faster, or the holder renewed: read again
        log.warning(
            "took over %s from replica %s, which stopped renewing it (its lease ends at %s on "
            "its clock; fencing token %d)",
            key,
            claim.replica,
            f"{claim.expires:%H:%M:%S}",
            mine.token,
        )
        if claim.writing:
            try:
                aborted = await self.store.abort_uploads(claim.writing)
            except BackupdError as error:
                log.warning("could not abort the upload of %s: %s", claim.writing, error)
            else:
                if aborted:
                    log.info("aborted %d upload(s) of %s left behind", aborted, claim.writing)
        return Lease(self, key, mine, new_etag)

    async def wait_out(self, observed: Observed) -> Observed | None:
        """Watch another replica's claim. None once it is finished; the claim as last read
        when it should be claimed again (pass it to ``try_claim``): its lease ran out on this
        replica's clock, or it has not changed for a whole lease as this replica measures
        time (``went_silent``: a holder that died with its clock ahead of this one), or the
        claim object is gone (deleted by hand to free a stuck slot; logged as a warning
        naming the key)."""
        while observed.claim.state is not State.DONE:
            await asyncio.sleep(watch_delay(observed.claim, self.clock(), self.lease))
            try:
                seen = await self.read(observed.key)
            except StorageError as error:  # keep watching: the holder may need replacing
                log.warning("could not read the claim %s (retrying): %s", observed.key, error)
                await asyncio.sleep(RETRY_RENEWAL)
                continue
            if seen is None:
                log.warning("the claim %s held by %s is gone", observed.key, observed.claim.replica)
                return observed
            claim, etag = seen
            if etag != observed.etag:
                observed = Observed(observed.key, claim, etag)
            unchanged_for = time.monotonic() - observed.since
            if may_take_over(claim, self.clock()) or went_silent(claim, unchanged_for, self.lease):
                return observed
        return None


class Lease:
    """This replica's hold on a slot. As an async context manager it renews the claim every
    lease/3, fences the storage's publishing, and on leaving marks the slot done (or, when
    cancelled, hands it back so another replica takes over). If the claim is lost, the run is
    cancelled and ``ClaimLost`` is raised out of the block."""

    def __init__(self, claims: Claims, key: str, claim: Claim, etag: str) -> None:
        self.claims = claims
        self.key = key
        self.claim = claim
        self.etag = etag
        self.lost: ClaimLost | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[object] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._inside = False
        self._cancelled = False
        self._fence: Token[Fence | None] | None = None

    @property
    def token(self) -> int:
        """The fencing token: one higher for every takeover of this slot."""
        return self.claim.token

    async def __aenter__(self) -> Lease:
        self._task = asyncio.current_task()
        self._inside = True
        self._fence = publish_fence.set(self)
        self._keeper = asyncio.create_task(self._keep(), name=f"lease-{self.key}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._inside = False  # before any await: the keeper must not cancel from now on
        if self._fence is not None:
            publish_fence.reset(self._fence)
        await until_done(self._leave(cancelled=exc_type is asyncio.CancelledError))
        if self.lost is not None:
            if self._cancelled and self._task is not None:
                self._task.uncancel()
            raise self.lost from None
        return False

    async def _leave(self, cancelled: bool) -> None:
        """Stop renewing, then write the slot's final state: done, or handed back when the
        block was cancelled; nothing once the claim is lost.

        Bounded by what is left of the lease (at least a third of one): once it has run out,
        the slot is any replica's anyway, and a store that stopped answering would otherwise
        hold the run (and a shutdown, whose cancellation this outlasts) for minutes of
        retried requests. Handing back waits at most ``HAND_BACK_WAIT``: a stopping replica
        must not wait out a long lease, which hands the slot over by itself."""
        bound = max(self._left(), renew_every(self.claims.lease))
        if cancelled:
            bound = min(bound, HAND_BACK_WAIT)
        try:
            async with asyncio.timeout(bound):
                if self._keeper is not None:
                    async with self._lock:  # never in the middle of a renewal
                        self._keeper.cancel()
                if self.lost is None:
                    final = (
                        released(self.claim, self.claims.clock())
                        if cancelled
                        else finished(self.claim)
                    )
                    await self._settle(final)
        except TimeoutError:
            log.warning(
                "could not update the claim %s within %.0fs; another replica takes the slot "
                "over once its lease runs out",
                self.key,
                bound,
            )
        finally:
            if self._keeper is not None:
                self._keeper.cancel()  # whatever the lock did: never renewed after this
                await asyncio.gather(self._keeper, return_exceptions=True)

    def _left(self) -> float:
        """Seconds until the claim's lease runs out, on this replica's clock."""
        return (self.claim.expires - self.claims.clock()).total_seconds()

    async def writing(self, key: str) -> None:
        await self.renew(writing=key)

    async def check(self, key: str) -> None:
        await self.renew()

    async def renew(self, writing: str | None = None) -> None:
        """Extend the claim by a full lease with a conditional write on the last ETag seen.
        Raises ClaimLost if another replica has it, StorageError if the store did not answer."""
        if self.lost is not None:
            raise self.lost
        async with self._lock:
            await self._write(renewed(self.claim, self.claims.clock(), self.claims.lease, writing))

    async def _write(self, mine: Claim) -> None:
        """Replace the claim with ``mine`` if it is still this lease's; else raise ClaimLost.

        A write of ours can go through unseen (a request retried after a lost answer, or
        cancelled in flight), leaving a newer ETag than the one we hold: the claim, read back,
        still carries our nonce and token, and the write is repeated on its ETag.
        """
        store = self.claims.store
        etag = await store.replace(self.key, mine.to_bytes(), self.etag)
        if etag is None:
            seen = await self.claims.read(self.key)
            if seen is None or (seen[0].nonce, seen[0].token) != (mine.nonce, mine.token):
                self._lose(seen[0] if seen else None)
                assert self.lost is not None
                raise self.lost
            etag = await store.replace(self.key, mine.to_bytes(), seen[1])
            if etag is None:
                self._lose(None)
                assert self.lost is not None
                raise self.lost
        self.claim, self.etag = mine, etag

    def _lose(self, holder: Claim | None) -> None:
        who = (
            f"replica {holder.replica} took it over (fencing token {holder.token})"
            if holder is not None
            else "the claim object is gone"
        )
        self.lost = self.lost or ClaimLost(
            f"lost the claim {self.key}: {who}; this run is cancelled before it publishes"
        )
        body = self._task
        if self._inside and not self._cancelled and body not in (None, asyncio.current_task()):
            assert body is not None
            self._cancelled = True
            body.cancel()

    async def _keep(self) -> None:
        claims = self.claims
        delay = renew_every(claims.lease)
        while True:
            await asyncio.sleep(delay)
            try:
                await self.renew()
                delay = renew_every(claims.lease)
            except ClaimLost:
                self._lose(None)
                return
            except BackupdError as error:
                if not still_held(self.claim, claims.clock(), claims.lease):
                    self.lost = ClaimLost(f"could not renew the claim {self.key} in time: {error}")
                    self._lose(None)
                    return
                log.warning("could not renew the claim %s (retrying): %s", self.key, error)
                delay = RETRY_RENEWAL

    async def _settle(self, final: Claim) -> None:
        """Write the claim's final state, trying a few times: until it is written, another
        replica would take the slot over once the lease runs out (and run it again)."""
        for attempt in range(1, SETTLE_ATTEMPTS + 1):
            try:
                async with self._lock:
                    await self._write(final)
                return
            except ClaimLost as error:
                log.warning("%s", error)
                return
            except BackupdError as error:
                if attempt == SETTLE_ATTEMPTS:
                    log.warning("could not update the claim %s: %s", self.key, error)
                    return
                await asyncio.sleep(RETRY_RENEWAL)


@contextlib.asynccontextmanager
async def claimed(
    claims: Claims,
    target: str,
    kind: Kind,
    slot: datetime,
    gate: asyncio.Semaphore | None = None,
    on_elsewhere: Callable[[Observed], None] | None = None,
) -> AsyncIterator[Lease | None]:
    """Run a block under the claim on (``target``, ``kind``, ``slot``).

    Yields a ``Lease`` when this replica holds the slot, None when another replica ran it (or
    holds it and finishes it). While another replica holds it, waits, and takes the slot over
    if that replica stops renewing (or claims it afresh if its claim object is deleted).
    ``gate`` (the daemon's concurrency limit) is held while claiming and running, never while
    waiting; ``on_elsewhere`` is called once when the slot is found claimed by another replica.
    Raises CoordinationError (naming the claim's key) for a claim that cannot be read, and
    ClaimLost out of the block when the slot is taken over meanwhile.
    """
    counted = False
    silent: Observed | None = None
    while True:
        async with gate if gate is not None else contextlib.nullcontext():
            outcome = await claims.try_claim(target, kind, slot, silent)
            if isinstance(outcome, Lease):
                async with outcome:
                    yield outcome
                return
        if not counted and on_elsewhere is not None:
            on_elsewhere(outcome)
        counted = True
        log.debug(
            "%s %s slot %s: claimed by replica %s",
            target,
            kind.value,
            slot,
            outcome.claim.replica,
        )
        silent = await claims.wait_out(outcome)
        if silent is None:
            yield None
            return


async def self_test(store: ClaimStore, folder: str, replica: str) -> None:
    """Write a probe claim twice and expect 412 the second time, then expect an ``If-Match`` on
    a wrong ETag to fail too. Raises CoordinationUnsupported naming the store when it ignores
    either condition (some S3-compatible stores do), StorageError when it does not answer."""
    key = f"{claims_prefix(folder)}.probe-{secrets.token_hex(6)}.json"
    body = f'{{"probe": true, "replica": "{replica}"}}\n'.encode()
    try:
        if await store.create(key, body) is None:
            raise CoordinationError(f"probe claim {key} exists already; try again")
        if await store.create(key, body) is not None:
            raise CoordinationUnsupported(
                f"COORDINATION=storage: {store.description} ignores If-None-Match (a second "
                f"create of {key} succeeded); use AWS S3, R2 or MinIO, or COORDINATION=none"
            )
        if await store.replace(key, body, '"00000000000000000000000000000000"') is not None:
            raise CoordinationUnsupported(
                f"COORDINATION=storage: {store.description} ignores If-Match (a write with a "
                f"wrong ETag to {key} succeeded); use AWS S3, R2 or MinIO, or COORDINATION=none"
            )
    finally:
        with contextlib.suppress(BackupdError):
            await store.delete(key)


async def delete_stale_claims(
    store: ClaimStore,
    folder: str,
    now: datetime,
    max_age: timedelta = STALE_AFTER,
) -> list[str]:
    """Delete the claims (and left-over probes) under ``folder`` not written for ``max_age``,
    save each target's newest slot (``coordination.sweepable``); the keys deleted. One listing
    of the folder's claims (about a day's worth, plus one per target and kind), then one
    request per key deleted. Raises StorageError."""
    listed = [(item.key, item.modified) async for item in store.list_objects(claims_prefix(folder))]
    stale = sweepable(listed, folder, now, max_age)
    for key in stale:
        await store.delete(key)
    return stale
