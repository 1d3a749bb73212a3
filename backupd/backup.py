"""Back up one target: probe → dump → stages → parts → upload → manifest, for each database.

This module composes the others; sources, stages, stream and storage never import one another,
and this one knows no engine: every engine offers the same ``open_dump``. A backup becomes
visible only when the dump exited 0, every part is stored and the manifest is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backupd.catalogue import (
    GLOBALS,
    Manifest,
    manifest_key,
    new_run_id,
    object_key,
    object_metadata,
)
from backupd.config import Compression, RowCounts, TargetConfig
from backupd.errors import BackupdError, ClaimLost, DumpError
from backupd.parts import BufferPool, Readable
from backupd.process import stall_guard
from backupd.progress import LogProgress, Progress
from backupd.sources import BackupSource, ServerInfo, source_for
from backupd.sources.session import DumpSession, no_session
from backupd.stages import Stage, choose_stages, key_suffix, plan_compression
from backupd.storage import Storage, Upload, reuse_or_open
from backupd.storage.base import Estimate
from backupd.stream import Digest, fixed_parts

log = logging.getLogger(__name__)

MANIFEST_ATTEMPTS = 3
MANIFEST_RETRY_DELAY_S = 1.0
REMOVAL_TIMEOUT_S = 10.0
"""How long a run that failed or was cancelled while publishing waits for the removal of each
key it wrote."""
# A dump shorter than this never asks the server for a size estimate (one query saved).
ESTIMATE_AFTER = 2.0


@dataclass(frozen=True)
class BackupResult:
    target: str
    database: str
    engine: str
    key: str
    size: int
    sha256: str
    started: datetime
    finished: datetime
    duration_s: float

    @property
    def throughput(self) -> float:
        """Stored bytes per second."""
        return self.size / self.duration_s if self.duration_s > 0 else 0.0


@dataclass
class TargetRun:
    """What one run of one target did: a result or an error per database."""

    target: str
    results: list[BackupResult] = field(default_factory=list)
    failures: list[tuple[str, BackupdError]] = field(default_factory=list)
    planned: list[str] | None = None
    """The objects the run makes, by database name (``*``'s as listed by the server, and its
    server globals), once known; None before."""

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def size(self) -> int:
        return sum(result.size for result in self.results)


@dataclass(frozen=True)
class Dump:
    """One object to produce: which database, from which byte source, with which facts."""

    database: str
    extension: str
    open: Callable[[bool, str | None], AbstractAsyncContextManager[Readable]]
    """Given whether the tool compresses and the snapshot to share, the dump as a byte source
    (``open_dump``)."""
    tool_compresses: bool
    properties: Callable[[], Awaitable[dict[str, Any]]]
    """Database-level settings to record in the manifest (read alongside the dump)."""
    session: Callable[[], AbstractAsyncContextManager[DumpSession]] = no_session
    """Open for the whole dump: a shared snapshot and the tables' row counts, if any."""
    estimate: Estimate | None = None
    """About how many bytes the database holds: for progress, and for storage whose parts
    cannot grow (R2's), to size them."""
    server_globals: bool = False
    """PostgreSQL's server globals (``pg_dumpall --globals-only``), not a database."""


async def _nothing_recorded() -> dict[str, Any]:
    return {}


async def dump_to_storage(
    target: TargetConfig,
    dump: Dump,
    storage: Storage,
    probe: asyncio.Future[ServerInfo],
    progress: Progress,
) -> BackupResult:
    """Stream one dump through its stages into one new object, then write its manifest.

    ``probe`` (login, versions) and the database's properties are read alongside the dump;
    both must have succeeded before the object is published, and a failed probe explains a
    failed dump best.
    """
    store = asyncio.ensure_future(_store(target, dump, storage, probe, progress))
    try:
        either: list[asyncio.Future[Any]] = [store, probe]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not store.done() and _failed(probe):
            # The login failed while the dump still waits (a server that accepts connections
            # and never speaks would hold it until RESTORE_STALL_TIMEOUT): stop it now.
            await _stopped(store)
            await probe  # raises the login or version problem
        return await store
    except DumpError:
        await asyncio.wait([probe])
        if _failed(probe):
            await probe  # raises the login or version problem
        raise
    finally:
        if not store.done():
            await _stopped(store)  # its own clean-up: the upload aborted, the dump killed


def _failed(probe: asyncio.Future[ServerInfo]) -> bool:
    return probe.done() and not probe.cancelled() and isinstance(probe.exception(), BackupdError)


async def _stopped(task: asyncio.Future[BackupResult]) -> None:
    """Cancel ``task`` and wait for its clean-up to finish; what it raised is dropped."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()


async def _store(
    target: TargetConfig,
    dump: Dump,
    storage: Storage,
    probe: asyncio.Future[ServerInfo],
    progress: Progress,
) -> BackupResult:
    layout, engine = target.layout, target.database.engine
    started = datetime.now(layout.tz)
    native, stream_kind = plan_compression(layout.compression, engine, dump.tool_compresses)
    stages = choose_stages(stream_kind, target.encryption.recipients)
    run_id = new_run_id()
    extension = dump.extension + key_suffix(stages)
    key = object_key(
        target.key_prefix,
        dump.database,
        extension,
        started,
        run_id,
        server_globals=dump.server_globals,
    )
    metadata = object_metadata(engine, dump.database, started, layout.timezone)
    digest = Digest()
    clock = time.monotonic()
    log.info("backing up %s %s to %s", engine, dump.database, key)
    async with _removed_unless_recorded(storage) as written, dump.session() as session:
        properties = asyncio.ensure_future(dump.properties())
        tables = asyncio.ensure_future(session.count())
        try:
            async with storage.upload(key, metadata, locked=True, estimate=dump.estimate) as upload:
                async with contextlib.AsyncExitStack() as stack:
                    source = await stack.enter_async_context(dump.open(native, session.snapshot))
                    reader = source
                    for stage in stages:
                        reader = await stack.enter_async_context(stage.apply(reader))
                    moved = _moved(source, stages, digest)
                    what = f"the backup of {dump.database}"
                    async with stall_guard(moved, target.limits.stall_timeout, what):
                        # An estimate compares with the bytes read only when the tool does not
                        # compress; the bytes read are those entering backupd's first stage.
                        estimate = dump.estimate if not native else None
                        raw = _raw(stages, digest)
                        await _copy(
                            target, reader, upload, digest, key, clock, progress, raw, estimate
                        )
                if (stages[0].size if stages else digest.size) == 0:
                    raise DumpError(
                        f"the backup of {dump.database} is empty; refusing to store an empty backup"
                    )
                info = await probe
                recorded = await properties
                counted = await _counted(dump.database, tables)
                written.append(key)  # from the commit's request on, the object may exist
                await upload.commit()
        finally:
            await _settle(properties)
            await _settle(tables)
        progress.done(key)
        facts = {name: value for stage in stages for name, value in stage.facts().items()}
        if counted is not None:
            facts.update(tables=counted, row_counts=session.method)
        made = Made(dump.database, key, run_id, native, stream_kind, recorded, facts)
        written.append(manifest_key(key))
        result = await _record(target, storage, made, digest, started, clock, info)
        written.clear()  # recorded: complete, whatever closing the session may still raise
        return result


def _moved(source: Readable, stages: Sequence[Stage], digest: Digest) -> Callable[[], int]:
    """A byte count that grows while anything moves: the source's reads (a dump's pipe),
    each stage's input and the stored bytes."""

    def count() -> int:
        return getattr(source, "transferred", 0) + sum(stage.size for stage in stages) + digest.size

    return count


@dataclass(frozen=True)
class Made:
    """What the pipeline produced for one database, as the manifest records it."""

    database: str
    key: str
    run_id: str
    native: bool
    stream_kind: Compression
    properties: dict[str, Any]
    facts: dict[str, Any] = field(default_factory=dict)
    """What the stages record (``encryption``) and the row counts (``tables``,
    ``row_counts``), as manifest fields."""


async def _counted(
    database: str, counting: asyncio.Future[list[dict[str, Any]] | None]
) -> list[dict[str, Any]] | None:
    """The row counts taken beside the dump; a failed count is a warning, never a failure."""
    try:
        return await counting
    except BackupdError as error:
        log.warning("%s: row counts are not recorded: %s", database, error)
        return None


def _expect(
    progress: Progress,
    key: str,
    estimate: Estimate | None,
) -> asyncio.Future[int | None] | None:
    """Ask for the size estimate alongside the dump; tell ``progress`` when it arrives."""
    if estimate is None:
        return None
    task = asyncio.ensure_future(estimate())

    def tell(done: asyncio.Future[int | None]) -> None:
        if not done.cancelled() and done.exception() is None:
            progress.expect(key, done.result())

    task.add_done_callback(tell)
    return task


def _raw(stages: Sequence[Stage], digest: Digest) -> Callable[[], int]:
    """The bytes read from the dump so far: what entered backupd's first stage, or what was
    stored when there is none."""
    return lambda: stages[0].size if stages else digest.size


async def _copy(
    target: TargetConfig,
    source: Readable,
    upload: Upload,
    digest: Digest,
    key: str,
    clock: float,
    progress: Progress,
    raw: Callable[[], int] | None = None,
    estimate: Estimate | None = None,
) -> None:
    """Every byte of ``source`` into ``upload``, in parts, hashed on the way. Progress counts
    ``raw()`` (the bytes read from the dump, before backupd's stages) against ``estimate``,
    asked alongside once the copy has run ``ESTIMATE_AFTER`` seconds."""
    pool = BufferPool(keep=target.storage.upload_concurrency + 2)
    count = raw if raw is not None else (lambda: digest.size)
    expected: asyncio.Future[int | None] | None = None
    try:
        async for part in fixed_parts(source, upload.part_size, digest, pool):
            await upload.write(part)
            elapsed = time.monotonic() - clock
            if expected is None and elapsed >= ESTIMATE_AFTER:
                expected = _expect(progress, key, estimate)
            progress.update(key, count(), elapsed)
    finally:
        await digest.settle()
        if expected is not None:
            await _settle(expected)


async def _record(
    target: TargetConfig,
    storage: Storage,
    made: Made,
    digest: Digest,
    started: datetime,
    clock: float,
    info: ServerInfo,
) -> BackupResult:
    """The result of a published object, and its manifest written beside it."""
    result = BackupResult(
        target=target.name,
        database=made.database,
        engine=target.database.engine,
        key=made.key,
        size=digest.size,
        sha256=await digest.hexdigest(),
        started=started,
        finished=datetime.now(target.layout.tz),
        duration_s=round(time.monotonic() - clock, 3),
    )
    manifest = Manifest(
        key=result.key,
        sha256=result.sha256,
        size=result.size,
        started=result.started,
        finished=result.finished,
        duration_s=result.duration_s,
        target=result.target,
        database=result.database,
        engine=result.engine,
        server_version=info.server_version,
        tool_version=info.tool_version,
        compression={
            "setting": target.layout.compression.value,
            "tool": made.native,
            "stream": made.stream_kind.value,
        },
        run_id=made.run_id,
        properties=made.properties,
        **made.facts,
    )
    await publish_manifest(storage, manifest)
    return result


async def publish_manifest(storage: Storage, manifest: Manifest) -> None:
    """Write ``manifest`` beside its object, which this run wrote under its own unique key.

    Tried ``MANIFEST_ATTEMPTS`` times. An attempt that landed with its answer lost is the
    storage's to recognise: the key then holds exactly these bytes, and counts as written. When
    the manifest cannot be written, the caller removes the object (``_removed_unless_recorded``).

    Raises the last StorageError when the manifest could not be written.
    """
    key, data = manifest_key(manifest.key), manifest.to_bytes()
    failure: BackupdError | None = None
    for attempt in range(1, MANIFEST_ATTEMPTS + 1):
        try:
            await storage.put_bytes(key, data, "application/json", locked=True)
            return
        except BackupdError as error:
            failure = error
            if isinstance(error, ClaimLost):  # another replica has the slot: never publish
                break
            log.warning("writing %s failed (attempt %d): %s", key, attempt, error)
            if attempt < MANIFEST_ATTEMPTS:
                await asyncio.sleep(MANIFEST_RETRY_DELAY_S * attempt)
    assert failure is not None
    raise failure


@contextlib.asynccontextmanager
async def _removed_unless_recorded(storage: Storage) -> AsyncIterator[list[str]]:
    """Publish only on full success: the block lists each key as it starts writing it (the
    object, then its manifest), and should the block fail or be cancelled before the manifest
    is written, those keys are removed again. That covers a commit whose answer never came, a
    fence check that finds the slot lost, and a manifest whose write was in flight when the
    cancellation came (the storage waits for its answer first). A cancelled run thus publishes
    nothing, as a failed one does.

    Each key carries this run's own random run id, so no other run can have written it, and
    removing it can never touch another run's backup. The manifest goes first: an interrupted
    removal leaves at worst an object without a manifest, which lists as incomplete and which
    retention removes, never a manifest without its object. What a removal could not remove is
    noted on the exception the block raised (see ``left_behind``).
    """
    written: list[str] = []
    try:
        yield written
    except (Exception, asyncio.CancelledError) as error:
        if written and (left := await _remove_own(storage, written)) is not None:
            error.add_note(LEFT_BEHIND + left)
        raise


LEFT_BEHIND = "left behind: "


def left_behind(error: BaseException) -> str | None:
    """What the failed run that raised ``error`` wrote and could not remove, in a sentence for
    people (which key, why, what becomes of it); None when it left nothing in the storage.

    ``_removed_unless_recorded`` notes it on the exception (PEP 678 notes), so that it travels
    with the failure to the report."""
    notes = [n for n in getattr(error, "__notes__", []) if n.startswith(LEFT_BEHIND)]
    return notes[-1].removeprefix(LEFT_BEHIND) if notes else None


async def _remove_own(storage: Storage, written: list[str]) -> str | None:
    """Delete ``written``, newest first; each removal runs to its end even under the
    cancellation that caused it (a second one cuts it short), within ``REMOVAL_TIMEOUT_S``.

    Return None when nothing is left, else what is left (logged as an error too). A key the
    storage says is not there (no such key, no such bucket) counts as removed: the storage's
    ``delete`` raises nothing for it."""
    for key in reversed(written):
        removal = asyncio.ensure_future(storage.delete(key))
        try:
            done, _ = await asyncio.wait([removal], timeout=REMOVAL_TIMEOUT_S)
        finally:
            removal.cancel()  # nothing once it is done
        if done and removal.exception() is None:
            log.info("removed %s: this run did not finish", key)
            continue
        problem = removal.exception() if done else f"no answer in {REMOVAL_TIMEOUT_S:.0f}s"
        if key == written[0] and len(written) == 1:  # its commit failed, or was cut short
            left = (
                f"this run's object {key} may have been written (the upload's last request "
                f"failed or went unanswered) and could not be removed after the run failed "
                f"({problem}); if it was, it has no manifest, so it lists as incomplete and "
                "retention removes it later"
            )
        elif key == written[0]:
            left = (
                f"this run's object {key} could not be removed after the run failed ({problem}); "
                "it has no manifest, so it lists as incomplete and retention removes it later"
            )
        else:  # the object stays too: never a manifest without its object
            left = (
                f"this run's manifest {key} could not be removed after the run failed "
                f"({problem}), nor its object; should the manifest's write have landed, the "
                "backup lists as complete"
            )
        log.error("%s", left)
        return left
    return None


async def run_backup(
    target: TargetConfig,
    progress: Progress | None = None,
    storage: Storage | None = None,
    run: TargetRun | None = None,
) -> TargetRun:
    """Back up every database of ``target``, each as its own object; a failure of one database
    is recorded and the others still run. Raise only when nothing can run at all (login).

    ``storage``: the target's storage, already open (the caller reuses its connections after
    the run); opened for the run when None. ``run``: where each database's outcome is recorded
    as it comes (the caller still has those of a run that is cancelled); a new one when None."""
    source = source_for(target)
    reporter = progress if progress is not None else LogProgress()
    # Start everything at once: the login probe waits on child processes, the storage client
    # costs CPU, and the dump itself needs neither to begin.
    probe = asyncio.ensure_future(source.probe())
    run = TargetRun(target.name) if run is None else run
    try:
        async with reuse_or_open(target.storage, storage) as opened:
            warm_up = asyncio.ensure_future(opened.warm_up())
            try:
                await _run_all(target, source, opened, probe, reporter, run)
            finally:
                await _settle(warm_up)
    finally:
        await _settle(probe)
    return run


async def _run_all(
    target: TargetConfig,
    source: BackupSource,
    storage: Storage,
    probe: asyncio.Future[ServerInfo],
    progress: Progress,
    run: TargetRun,
) -> None:
    """Each database in turn; one failing does not stop the others."""
    dumps = await _dumps(target, source, probe)
    run.planned = [dump.database for dump in dumps]
    for dump in dumps:
        try:
            run.results.append(await dump_to_storage(target, dump, storage, probe, progress))
        except BackupdError as error:
            run.failures.append((dump.database, error))


async def _all_databases(source: BackupSource, probe: asyncio.Future[ServerInfo]) -> list[str]:
    await probe  # a failed login says more than an empty list
    names = await source.list_databases()
    if not names:
        raise DumpError("DB_DATABASE=* but the server has no database to back up")
    return names


async def _dumps(
    target: TargetConfig, source: BackupSource, probe: asyncio.Future[ServerInfo]
) -> list[Dump]:
    """The objects this run produces: one per database, plus server globals for ``*``."""
    counts = target.verify.row_counts is RowCounts.EXACT
    wait = target.limits.stall_timeout or None
    if not target.database.all_databases:
        return [_database_dump(source, n, counts, wait) for n in target.database.databases]
    names = await _all_databases(source, probe)
    dumps = [_database_dump(source, name, counts, wait) for name in names]
    server_globals = source.open_globals(await probe)
    if server_globals is not None:
        dumps.append(
            Dump(
                GLOBALS,
                ".sql",
                lambda _, __: server_globals,
                False,
                _nothing_recorded,
                server_globals=True,
            )
        )
    return dumps


def _database_dump(
    source: BackupSource, database: str, counts: bool, lock_wait: float | None = None
) -> Dump:
    """One database's dump; with ``counts``, beside a session that counts its tables' rows,
    waiting at most ``lock_wait`` seconds for a table's lock."""
    return Dump(
        database=database,
        extension=source.extension,
        open=lambda native, snapshot: source.open_dump(database, native, snapshot),
        tool_compresses=source.can_compress,
        properties=lambda: source.database_properties(database),
        session=(lambda: source.dump_session(database, lock_wait)) if counts else no_session,
        estimate=asked_once(lambda: source.estimated_size(database)),
    )


def asked_once(estimate: Estimate) -> Estimate:
    """``estimate``, asked of the server at most once: on R2 the storage sizes its parts from it
    before the dump starts, and progress wants it again later."""
    answer: list[int | None] = []

    async def once() -> int | None:
        if not answer:
            answer.append(await estimate())
        return answer[0]

    return once


async def _settle(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if still running and wait for it, keeping its outcome to itself."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
