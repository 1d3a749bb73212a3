"""Back up one target: probe → dump → stream → upload → manifest, for each of its databases.

This module composes the others; sources, stream and storage never import one another. A backup
becomes visible only when the dump exited 0, every part is stored and the manifest is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
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
    stem_for,
)
from backupd.config import Compression, TargetConfig
from backupd.errors import BackupdError, ClaimLost, DumpError
from backupd.parts import BufferPool
from backupd.process import Child, Command, describe_status, spawn, stall_guard
from backupd.progress import LogProgress, Progress
from backupd.sources import FileSource, ServerInfo, Source, source_for
from backupd.storage import Storage, Upload, open_storage
from backupd.storage.base import Estimate
from backupd.stream import (
    SUFFIXES,
    Digest,
    FileReader,
    Readable,
    fixed_parts,
    make_compressor,
    plan_compression,
)

log = logging.getLogger(__name__)

MANIFEST_ATTEMPTS = 3
MANIFEST_RETRY_DELAY_S = 1.0


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

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def size(self) -> int:
        return sum(result.size for result in self.results)


@dataclass(frozen=True)
class Dump:
    """One object to produce: which database, by which command, with which facts beside it."""

    database: str
    extension: str
    command: Callable[[bool], Awaitable[Command]]
    """The dump tool's command, given whether the tool compresses; built only once the tool's
    flavour is known."""
    tool_compresses: bool
    explain: Callable[[str], str | None]
    """A hint for a known failure in the tool's stderr."""
    properties: Callable[[], Awaitable[dict[str, Any]]]
    """Database-level settings to record in the manifest (read alongside the dump)."""
    estimate: Estimate | None = None
    """The database's rough size in bytes, asked only by storage that needs it (R2's parts)."""


async def _nothing_recorded() -> dict[str, Any]:
    return {}


async def dump_to_storage(
    target: TargetConfig,
    dump: Dump,
    storage: Storage,
    probe: asyncio.Future[ServerInfo],
    progress: Progress,
) -> BackupResult:
    """Stream one dump into one new object, then write its manifest.

    ``probe`` (login, versions) and the database's properties are read alongside the dump;
    both must have succeeded before the object is published.
    """
    layout, engine = target.layout, target.database.engine
    started = datetime.now(layout.tz)
    native, stream_kind = plan_compression(layout.compression, engine, dump.tool_compresses)
    run_id = new_run_id()
    extension = dump.extension + SUFFIXES[stream_kind]
    key = object_key(target.key_prefix, dump.database, extension, started, run_id)
    metadata = object_metadata(engine, dump.database, started, layout.timezone)
    command = await dump.command(native)
    properties = asyncio.ensure_future(dump.properties())
    digest = Digest()
    clock = time.monotonic()
    log.info("backing up %s %s to %s", engine, dump.database, key)
    try:
        async with (
            storage.upload(key, metadata, locked=True, estimate=dump.estimate) as upload,
            spawn(command.argv[0], command) as child,
        ):
            async with stall_guard(
                lambda: child.stdout.transferred, target.limits.stall_timeout, child.name
            ):
                await _copy(target, child.stdout, upload, digest, stream_kind, key, clock, progress)
            await _check_exit(child, dump, probe)
            if digest.size == 0:
                raise DumpError(
                    f"{child.name} exited 0 but wrote nothing; refusing to store an empty backup"
                )
            info = await probe
            recorded = await properties
            await upload.commit()
    finally:
        await _settle(properties)
    progress.done(key)
    made = Made(dump.database, key, run_id, native, stream_kind, recorded)
    return await _record(target, storage, made, digest, started, clock, info)


@dataclass(frozen=True)
class Made:
    """What the pipeline produced for one database, as the manifest records it."""

    database: str
    key: str
    run_id: str
    native: bool
    stream_kind: Compression
    properties: dict[str, Any]


async def _copy(
    target: TargetConfig,
    source: Readable,
    upload: Upload,
    digest: Digest,
    stream_kind: Compression,
    key: str,
    clock: float,
    progress: Progress,
) -> None:
    """Every byte of ``source`` into ``upload``, in parts, compressed and hashed on the way."""
    pool = BufferPool(keep=target.storage.upload_concurrency + 2)
    compressor = make_compressor(stream_kind)
    async for part in fixed_parts(source, upload.part_size, digest, compressor, pool):
        await upload.write(part)
        progress.update(key, digest.size, time.monotonic() - clock)


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
    )
    await publish_manifest(storage, manifest)
    return result


async def file_to_storage(
    target: TargetConfig,
    source: FileSource,
    database: str,
    storage: Storage,
    probe: asyncio.Future[ServerInfo],
    progress: Progress,
) -> BackupResult:
    """Have the server write a backup file to the shared volume, stream it into one new object,
    and delete the file, whatever happens."""
    layout, engine = target.layout, target.database.engine
    started = datetime.now(layout.tz)
    native, stream_kind = plan_compression(layout.compression, engine, source.can_compress)
    run_id = new_run_id()
    extension = source.extension + SUFFIXES[stream_kind]
    key = object_key(target.key_prefix, database, extension, started, run_id)
    server_path, local_path = source.paths(
        f"{stem_for(database)}_{started:%Y%m%d_%H%M%S}_{run_id}{source.extension}"
    )
    digest = Digest()
    clock = time.monotonic()
    log.info("backing up %s %s via %s to %s", engine, database, server_path, key)
    try:
        await source.backup_to_file(database, server_path, native)
        info = await probe
        metadata = object_metadata(engine, database, started, layout.timezone)
        async with (
            storage.upload(key, metadata, locked=True) as upload,
            FileReader.open(local_path) as reader,
        ):
            await _copy(target, reader, upload, digest, stream_kind, key, clock, progress)
            if digest.size == 0:
                raise DumpError(f"{local_path} is empty; refusing to store an empty backup")
            await upload.commit()
    finally:
        await asyncio.shield(asyncio.to_thread(local_path.unlink, missing_ok=True))
    progress.done(key)
    made = Made(database, key, run_id, native, stream_kind, {})
    return await _record(target, storage, made, digest, started, clock, info)


async def _check_exit(child: Child, dump: Dump, probe: asyncio.Future[ServerInfo]) -> None:
    """Raise unless the dump exited 0; a failed login probe explains a failure best."""
    code = await child.wait()
    if code == 0:
        return
    await asyncio.wait([probe])
    if not probe.cancelled() and isinstance(probe.exception(), BackupdError):
        await probe  # raises the login or version problem
    stderr = child.stderr_text()
    hint = dump.explain(stderr)
    raise DumpError(
        f"{f'{hint}: ' if hint else ''}{child.name} exited with status {describe_status(code)}: "
        f"{stderr or 'no output'}"
    )


async def publish_manifest(storage: Storage, manifest: Manifest) -> None:
    """Write ``manifest`` beside its object, which this run wrote under its own unique key.

    Tried ``MANIFEST_ATTEMPTS`` times. "Already exists" on a later attempt means an earlier
    attempt landed after all: the stored manifest is read back and compared. If it cannot be
    written, this run's own object is removed (no other run can have written that key), so no
    object is left looking complete-but-unlisted; if even that fails, the exact key is logged,
    and retention's cleanup of objects without a manifest removes it later.

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
            if attempt > 1 and await _already_written(storage, key, data):
                return
            log.warning("writing %s failed (attempt %d): %s", key, attempt, error)
            if attempt < MANIFEST_ATTEMPTS:
                await asyncio.sleep(MANIFEST_RETRY_DELAY_S * attempt)
    assert failure is not None
    try:
        await asyncio.shield(storage.delete(manifest.key))
    except BackupdError as error:
        log.error(
            "could not remove this run's object %s after its manifest failed (%s); it is "
            "incomplete and retention removes it later",
            manifest.key,
            error,
        )
    raise failure


async def _already_written(storage: Storage, key: str, data: bytes) -> bool:
    try:
        return await storage.get_bytes(key) == data
    except BackupdError:
        return False


async def run_backup(target: TargetConfig, progress: Progress | None = None) -> TargetRun:
    """Back up every database of ``target``, each as its own object; a failure of one database
    is recorded and the others still run. Raise only when nothing can run at all (login)."""
    source = source_for(target)
    reporter = progress if progress is not None else LogProgress()
    # Start everything at once: the login probe waits on child processes, the storage client
    # costs CPU, and the dump itself needs neither to begin.
    probe = asyncio.ensure_future(source.probe())
    run = TargetRun(target.name)
    try:
        async with open_storage(target.storage) as storage:
            warm_up = asyncio.ensure_future(storage.warm_up())
            try:
                await _run_all(target, source, storage, probe, reporter, run)
            finally:
                await _settle(warm_up)
    finally:
        await _settle(probe)
    return run


async def _run_all(
    target: TargetConfig,
    source: Source | FileSource,
    storage: Storage,
    probe: asyncio.Future[ServerInfo],
    progress: Progress,
    run: TargetRun,
) -> None:
    """Each database in turn; one failing does not stop the others."""
    if isinstance(source, FileSource):
        for database in target.database.databases or await _all_databases(source, probe):
            try:
                run.results.append(
                    await file_to_storage(target, source, database, storage, probe, progress)
                )
            except BackupdError as error:
                run.failures.append((database, error))
        return
    for dump in await _dumps(target, source, probe):
        try:
            run.results.append(await dump_to_storage(target, dump, storage, probe, progress))
        except BackupdError as error:
            run.failures.append((dump.database, error))


async def _all_databases(
    source: Source | FileSource, probe: asyncio.Future[ServerInfo]
) -> list[str]:
    await probe  # a failed login says more than an empty list
    names = await source.list_databases()
    if not names:
        raise DumpError("DB_DATABASE=* but the server has no database to back up")
    return names


async def _dumps(
    target: TargetConfig, source: Source, probe: asyncio.Future[ServerInfo]
) -> list[Dump]:
    """The objects this run produces: one per database, plus server globals for ``*``."""
    if not target.database.all_databases:
        return [_database_dump(source, name) for name in target.database.databases]
    dumps = [_database_dump(source, name) for name in await _all_databases(source, probe)]
    info = await probe
    globals_command = source.globals_command(info)
    if globals_command is not None:

        async def command(_: bool) -> Command:
            assert globals_command is not None
            return globals_command

        dumps.append(
            Dump(GLOBALS, ".sql", command, False, source.explain_failure, _nothing_recorded)
        )
    return dumps


def _database_dump(source: Source, database: str) -> Dump:
    return Dump(
        database=database,
        extension=source.extension,
        command=lambda native: source.dump_command(database, native),
        tool_compresses=source.can_compress,
        explain=source.explain_failure,
        properties=lambda: source.database_properties(database),
        estimate=lambda: source.estimated_size(database),
    )


async def _settle(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if still running and wait for it, keeping its outcome to itself."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
