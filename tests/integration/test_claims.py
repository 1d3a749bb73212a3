"""Claims against the suite's S3 server: create, watch, take over, fence, finish, clean up."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backupd import claims as claims_module
from backupd.claims import Claims, Lease, Observed, claimed, delete_stale_claims, self_test
from backupd.config import S3Config
from backupd.coordination import Kind, State, claim_key, parse_claim
from backupd.errors import ClaimLost, CoordinationError, CoordinationUnsupported
from backupd.parts import Part
from backupd.storage.s3 import S3Storage
from tests.conftest import S3_KEY_ID, S3_SECRET
from tests.servers import FaultProxy, silent_server

SLOT = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
LEASE = 1.5
DEADLINE = 20.0
"""Seconds a test waits for what the lease makes happen (a generous bound, never a sleep)."""


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def config(endpoint: str, bucket: str) -> S3Config:
    return S3Config.model_validate(
        {
            "STORAGE_ENDPOINT_URL": endpoint,
            "STORAGE_ACCESS_KEY_ID": S3_KEY_ID,
            "STORAGE_SECRET_ACCESS_KEY": S3_SECRET,
            "STORAGE_BUCKET_NAME": bucket,
            "STORAGE_PART_SIZE": "5MiB",
        }
    )


@pytest.fixture
async def store(atomic_moto_url: str, bucket: str) -> AsyncIterator[S3Storage]:
    async with S3Storage.connect(config(atomic_moto_url, bucket)) as storage:
        yield storage


def replica(store: S3Storage, name: str, clock: Callable[[], datetime]) -> Claims:
    return Claims(store, "backups", name, LEASE, clock)


async def test_one_replica_holds_a_slot_and_the_other_sees_who(store: S3Storage) -> None:
    clock = Clock()
    first = await replica(store, "a", clock).try_claim("orders", Kind.BACKUP, SLOT)
    second = await replica(store, "b", clock).try_claim("orders", Kind.BACKUP, SLOT)
    other_kind = await replica(store, "b", clock).try_claim("orders", Kind.PRUNE, SLOT)

    assert isinstance(first, Lease)
    assert first.token == 1
    assert isinstance(second, Observed)
    assert second.claim.replica == "a"
    assert second.key == "backups/.backupd/claims/orders/backup/20261129T020000Z.json"
    assert isinstance(other_kind, Lease)


async def test_of_many_replicas_claiming_at_once_exactly_one_wins(store: S3Storage) -> None:
    clock = Clock()
    outcomes = await asyncio.gather(
        *(replica(store, f"r{i}", clock).try_claim("orders", Kind.BACKUP, SLOT) for i in range(12))
    )

    winners = [o for o in outcomes if isinstance(o, Lease)]
    assert len(winners) == 1
    holder = winners[0].claim.replica
    assert {o.claim.replica for o in outcomes if isinstance(o, Observed)} == {holder}


async def test_an_expired_claim_is_taken_over_and_its_upload_aborted(
    store: S3Storage, s3: Any, bucket: str
) -> None:
    clock = Clock()
    dead = await replica(store, "a", clock).try_claim("orders", Kind.BACKUP, SLOT)
    assert isinstance(dead, Lease)
    key = "backups/orders/20261129/backup_orders_20261129_020000.dump"
    await dead.writing(key)
    s3.create_multipart_upload(Bucket=bucket, Key=key)
    later = Clock()
    later.advance(LEASE + 0.1)

    taker = await replica(store, "b", later).try_claim("orders", Kind.BACKUP, SLOT)

    assert isinstance(taker, Lease)
    assert taker.token == 2
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ClaimLost, match="replica b took it over"):
        await dead.renew()


async def test_a_live_claim_is_not_taken_over(store: S3Storage) -> None:
    clock = Clock()
    holder = await replica(store, "a", clock).try_claim("orders", Kind.BACKUP, SLOT)
    assert isinstance(holder, Lease)
    clock.advance(LEASE - 0.5)
    await holder.renew()
    clock.advance(1.0)  # past the first expiry, not the renewed one

    other = await replica(store, "b", clock).try_claim("orders", Kind.BACKUP, SLOT)
    assert isinstance(other, Observed)


async def test_a_lost_lease_fences_publishing(store: S3Storage) -> None:
    clock = Clock()
    holder = await replica(store, "a", clock).try_claim("orders", Kind.BACKUP, SLOT)
    assert isinstance(holder, Lease)
    clock.advance(LEASE + 0.1)
    taker = await replica(store, "b", clock).try_claim("orders", Kind.BACKUP, SLOT)
    assert isinstance(taker, Lease)

    with pytest.raises(ClaimLost, match="replica b took it over"):
        async with holder:
            await store.put_bytes("backups/x.manifest.json", b"{}", "application/json")

    assert [o.key async for o in store.list_objects("backups/x")] == []


async def test_a_lost_lease_cancels_the_run_it_guards(store: S3Storage) -> None:
    clock = Clock()
    holder = await replica(store, "a", clock).try_claim("orders", Kind.BACKUP, SLOT)
    assert isinstance(holder, Lease)
    clock.advance(LEASE + 0.1)
    taker = await replica(store, "b", clock).try_claim("orders", Kind.BACKUP, SLOT)
    assert isinstance(taker, Lease)

    with pytest.raises(ClaimLost, match="cancelled before it publishes"):
        async with holder, asyncio.timeout(DEADLINE):
            await asyncio.Event().wait()  # until the keeper's renewal finds the claim taken


async def test_the_block_runs_once_and_the_claim_ends_done(store: S3Storage) -> None:
    clock = Clock()
    seen: list[Observed] = []
    runs = 0
    async with claimed(replica(store, "a", clock), "orders", Kind.BACKUP, SLOT) as lease:
        assert lease is not None
        runs += 1
    async with claimed(
        replica(store, "b", clock), "orders", Kind.BACKUP, SLOT, on_elsewhere=seen.append
    ) as lease:
        assert lease is None

    found = await store.read(claim_key("backups", "orders", Kind.BACKUP, SLOT))
    assert found is not None
    assert parse_claim(found[0], "k").state is State.DONE
    assert runs == 1
    assert [observed.claim.replica for observed in seen] == ["a"]


async def test_a_run_cancelled_after_it_finished_still_ends_its_claim_done(
    store: S3Storage,
) -> None:
    """A shutdown cancels the task of a run that has just finished, while its lease ends: the
    slot is still marked done, not left "running" for another replica to run again."""
    clock = Clock()

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        async with claimed(replica(store, "a", clock), "orders", Kind.VERIFY, SLOT) as lease:
            assert lease is not None
            asyncio.get_running_loop().call_soon(task.cancel)  # lands as the block is left

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(run())

    found = await store.read(claim_key("backups", "orders", Kind.VERIFY, SLOT))
    assert found is not None
    assert parse_claim(found[0], "k").state is State.DONE


async def test_a_cancelled_run_hands_its_slot_to_a_waiting_replica(store: S3Storage) -> None:
    started = asyncio.Event()
    taken: list[tuple[str, int]] = []

    def clock() -> datetime:
        return datetime.now(UTC)

    async def run_until_cancelled() -> None:
        async with claimed(replica(store, "a", clock), "orders", Kind.BACKUP, SLOT):
            started.set()
            await asyncio.Event().wait()

    async def wait_and_take_over() -> None:
        async with claimed(replica(store, "b", clock), "orders", Kind.BACKUP, SLOT) as lease:
            assert lease is not None
            taken.append((lease.claim.replica, lease.token))

    holder = asyncio.create_task(run_until_cancelled())
    await started.wait()
    waiter = asyncio.create_task(wait_and_take_over())
    await asyncio.sleep(0.2)
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)

    async with asyncio.timeout(DEADLINE):
        await waiter
    assert taken == [("b", 2)]


@pytest.mark.parametrize("lease_seconds", [LEASE, 3600.0])
async def test_a_cancelled_run_hands_its_claim_back_in_bounded_time_when_the_store_stops_answering(
    store: S3Storage, bucket: str, monkeypatch: pytest.MonkeyPatch, lease_seconds: float
) -> None:
    """Handing the slot back is bounded by what is left of the lease: a store that accepts
    connections and never answers held the run's end (and so a shutdown, even after a second
    SIGTERM) for minutes of retried requests, although the slot is any replica's once the
    lease ran out. With an hour's lease, by HAND_BACK_WAIT (1 s here), not the hour."""
    monkeypatch.setattr(claims_module, "HAND_BACK_WAIT", 1.0)
    claims = Claims(store, "backups", "a", lease_seconds, lambda: datetime.now(UTC))
    lease = await claims.try_claim("orders", Kind.BACKUP, SLOT)
    assert isinstance(lease, Lease)
    inside = asyncio.Event()

    async def run_until_cancelled() -> None:
        async with lease:
            inside.set()
            await asyncio.Event().wait()

    with silent_server() as port:
        hung = config(f"http://127.0.0.1:{port}", bucket)
        async with S3Storage.connect(hung) as silent:
            holder = asyncio.create_task(run_until_cancelled())
            await inside.wait()
            claims.store = silent  # the store stops answering mid-run
            holder.cancel()
            done, _ = await asyncio.wait([holder], timeout=DEADLINE)
    assert done == {holder}
    assert holder.cancelled()


async def test_malformed_claims_are_errors_naming_the_key(store: S3Storage) -> None:
    key = claim_key("backups", "orders", Kind.BACKUP, SLOT)
    await store.put_bytes(key, b'{"target": "orders"', "application/json")

    with pytest.raises(CoordinationError, match=f"claim {key} is malformed"):
        await replica(store, "a", Clock()).try_claim("orders", Kind.BACKUP, SLOT)


async def test_claims_older_than_a_day_are_deleted_save_the_newest_slots(
    store: S3Storage,
) -> None:
    clock = Clock()
    for slot in (SLOT, SLOT + timedelta(hours=1)):
        await replica(store, "a", clock).try_claim("orders", Kind.BACKUP, slot)
    await store.put_bytes("backups/orders/keep.dump", b"x", "application/octet-stream")
    now = datetime.now(UTC)

    assert await delete_stale_claims(store, "backups", now) == []
    deleted = await delete_stale_claims(store, "backups", now + timedelta(days=1, minutes=1))

    newest = claim_key("backups", "orders", Kind.BACKUP, SLOT + timedelta(hours=1))
    assert deleted == [claim_key("backups", "orders", Kind.BACKUP, SLOT)]
    assert [o.key async for o in store.list_objects("backups/")] == [
        newest,
        "backups/orders/keep.dump",
    ]


async def test_self_test_passes_on_a_store_with_conditional_writes(store: S3Storage) -> None:
    await self_test(store, "backups", "a")
    assert [o.key async for o in store.list_objects("")] == []


async def test_self_test_refuses_a_store_that_ignores_if_none_match(
    proxy: FaultProxy, bucket: str
) -> None:
    proxy.strip_headers = {"if-none-match"}
    async with S3Storage.connect(config(proxy.url, bucket)) as stripped:
        with pytest.raises(CoordinationUnsupported, match=f"bucket {bucket} .*If-None-Match"):
            await self_test(stripped, "backups", "a")


async def test_a_multipart_upload_notes_its_key_in_the_claim(store: S3Storage) -> None:
    lease = await replica(store, "a", Clock()).try_claim("orders", Kind.BACKUP, SLOT)
    assert isinstance(lease, Lease)
    key = "backups/orders/big.dump"
    async with lease, store.upload(key, {}) as upload:
        for _ in range(2):
            await upload.write(Part(io.BytesIO(b"x" * upload.part_size(1)), upload.part_size(1)))
        assert lease.claim.writing == key
        await upload.commit()
    assert lease.claim.state is State.DONE


async def test_a_taken_over_upload_is_never_completed(
    store: S3Storage, s3: Any, bucket: str
) -> None:
    clock = Clock()
    lease = await replica(store, "a", clock).try_claim("orders", Kind.BACKUP, SLOT)
    assert isinstance(lease, Lease)
    key = "backups/orders/big.dump"
    with pytest.raises(ClaimLost):
        async with lease, store.upload(key, {}) as upload:
            for _ in range(2):
                size = upload.part_size(1)
                await upload.write(Part(io.BytesIO(b"x" * size), size))
            clock.advance(LEASE + 0.1)
            taker = await replica(store, "b", clock).try_claim("orders", Kind.BACKUP, SLOT)
            assert isinstance(taker, Lease)
            await upload.commit()

    assert s3.list_objects_v2(Bucket=bucket, Prefix="backups/orders/").get("Contents", []) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_a_dead_holder_whose_clock_runs_ahead_is_taken_over_after_one_lease(
    store: S3Storage,
) -> None:
    """Its claim records an expiry an hour away on the watcher's clock, but has not changed
    for a whole lease as the watcher measures time: the watcher takes the slot over then,
    not an hour later."""
    ahead = Clock()
    ahead.advance(3600)
    dead = await replica(store, "a", ahead).try_claim("orders", Kind.BACKUP, SLOT)
    assert isinstance(dead, Lease)  # never entered: it never renews, as a killed replica
    taken: list[tuple[str, int]] = []
    watching = time.monotonic()

    async with asyncio.timeout(DEADLINE):
        async with claimed(replica(store, "b", Clock()), "orders", Kind.BACKUP, SLOT) as lease:
            assert lease is not None
            taken.append((lease.claim.replica, lease.token))

    assert taken == [("b", 2)]
    assert time.monotonic() - watching >= LEASE


async def test_a_renewing_holder_whose_clock_runs_ahead_keeps_its_slot(store: S3Storage) -> None:
    """Every renewal changes the claim, so a watcher never finds it silent: it waits for the
    holder to finish, however long that takes."""
    finish = asyncio.Event()

    def ahead() -> datetime:
        return datetime.now(UTC) + HOUR

    async def hold() -> None:
        async with claimed(replica(store, "a", ahead), "orders", Kind.BACKUP, SLOT) as lease:
            assert lease is not None
            await finish.wait()

    async def watch() -> Lease | None:
        async with claimed(replica(store, "b", Clock()), "orders", Kind.BACKUP, SLOT) as lease:
            return lease

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.2)
    watcher = asyncio.create_task(watch())
    await asyncio.sleep(3 * LEASE)
    assert not watcher.done()
    finish.set()

    async with asyncio.timeout(DEADLINE):
        await holder
        assert await watcher is None  # the slot ran on "a"


async def test_a_watcher_with_a_shorter_lease_leaves_a_renewing_holder_its_slot(
    store: S3Storage,
) -> None:
    """The holder renews every third of its own lease (2 s), longer than the watcher's whole
    lease (1.5 s): the watcher judges silence by the longer lease, recorded in the claim."""
    outcome: list[str] = []

    async def hold() -> None:
        holder = Claims(store, "backups", "a", 4 * LEASE, lambda: datetime.now(UTC))
        async with claimed(holder, "orders", Kind.BACKUP, SLOT) as lease:
            assert lease is not None
            await asyncio.sleep(4.0)
            outcome.append("a finished")

    async def watch() -> None:
        async with claimed(replica(store, "b", Clock()), "orders", Kind.BACKUP, SLOT) as lease:
            outcome.append("b ran the slot" if lease is not None else "b saw it done")

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.2)
    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(holder, watch())

    assert outcome == ["a finished", "b saw it done"]


async def test_a_deleted_claim_is_claimed_afresh_by_a_watching_replica(store: S3Storage) -> None:
    clock = Clock()  # stands still: the lease cannot expire, only the deletion frees the slot
    holder = await replica(store, "a", clock).try_claim("orders", Kind.BACKUP, SLOT)
    assert isinstance(holder, Lease)
    taken: list[tuple[str, int]] = []

    async def watch_and_run() -> None:
        async with claimed(replica(store, "b", clock), "orders", Kind.BACKUP, SLOT) as lease:
            assert lease is not None
            taken.append((lease.claim.replica, lease.token))

    waiter = asyncio.create_task(watch_and_run())
    await asyncio.sleep(0.1)
    await store.delete(holder.key)  # by hand, to free a stuck slot

    async with asyncio.timeout(DEADLINE):
        await waiter
    assert taken == [("b", 1)]


async def test_a_replica_sweeps_day_old_claims_at_most_once_an_hour(store: S3Storage) -> None:
    clock = Clock()
    for hours in range(3):
        await replica(store, "a", clock).try_claim("orders", Kind.BACKUP, SLOT + hours * HOUR)
    later = Clock()
    later.advance(DAY.total_seconds() + 60)
    sweeper = replica(store, "b", later)

    assert await sweeper.sweep() == [
        claim_key("backups", "orders", Kind.BACKUP, SLOT + hours * HOUR) for hours in range(2)
    ]
    await replica(store, "a", clock).try_claim("orders", Kind.BACKUP, SLOT + 3 * HOUR)
    assert await sweeper.sweep() == []  # an hour has not passed since the last sweep


async def test_a_restart_does_not_repeat_a_yearly_slot_whose_claim_a_sweep_saw(
    store: S3Storage,
) -> None:
    """A target that runs often sweeps the folder's day-old claims; a yearly target's latest
    slot keeps its claim, so the start-up run after a restart two days later (which stands for
    that slot) finds it done and does not run it again."""
    clock = Clock()
    yearly = datetime(2026, 1, 1, tzinfo=UTC)  # "0 0 1 1 *": the latest slot for months
    for target, slot in [("yearly", yearly), ("often", SLOT), ("often", SLOT + HOUR)]:
        async with claimed(replica(store, "a", clock), target, Kind.BACKUP, slot) as lease:
            assert lease is not None
    two_days_later = Clock()
    two_days_later.advance(2 * DAY.total_seconds())  # the claims, as the store dated them, look old

    swept = await replica(store, "a", two_days_later).sweep()
    async with claimed(replica(store, "a", two_days_later), "yearly", Kind.BACKUP, yearly) as lease:
        assert lease is None, "the yearly slot ran again after a restart"
    assert swept == [claim_key("backups", "often", Kind.BACKUP, SLOT)]
