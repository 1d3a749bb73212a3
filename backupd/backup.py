"""Back up one target: probe → dump → stages → parts → upload → manifest, for each database.

This module composes the others; sources, stages, stream and storage never import one another,
and this one knows no engine: every engine offers the same ``open_dump``. A backup
becomes visible only when the dump exited 0, every part is stored and the manifest is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backupd.config import Compression, TargetConfig
from backupd.errors import BackupdError, DumpError, StorageError
from backupd.layout import backup_stem, manifest_bytes, manifest_key, object_key, object_metadata
from backupd.parts import BufferPool, Readable
from backupd.progress import LogProgress, Progress
from backupd.sources import BackupSource, ServerInfo, source_for
from backupd.stages import choose_stages, key_suffix, plan_compression
from backupd.storage import Storage, Upload, open_storage
from backupd.stream import Digest, fixed_parts

log = logging.getLogger(__name__)

GLOBALS = "globals"


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
    """One object to produce: which database, under which name, from which byte source."""

    database: str
    stem: str
    extension: str
    open: Callable[[bool], AbstractAsyncContextManager[Readable]]
    """Given whether the tool compresses, the dump as a byte source (``open_dump``)."""
    tool_compresses: bool


async def dump_to_storage(
    target: TargetConfig,
    dump: Dump,
    storage: Storage,
    probe: asyncio.Future[ServerInfo],
    progress: Progress,
) -> BackupResult:
    """Stream one dump through its stages into one new object, then write its manifest.

    ``probe`` (login, versions) runs alongside the dump; it must have succeeded before the
    object is published, and a failed probe explains a failed dump best.
    """
    try:
        return await _store(target, dump, storage, probe, progress)
    except DumpError:
        await asyncio.wait([probe])
        if not probe.cancelled() and isinstance(probe.exception(), BackupdError):
            await probe  # raises the login or version problem
        raise


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
    key = object_key(target.key_prefix, dump.stem, dump.extension + key_suffix(stages), started)
    metadata = object_metadata(engine, dump.database, started, layout.timezone)
    digest = Digest()
    clock = time.monotonic()
    log.info("backing up %s %s to %s", engine, dump.database, key)
    async with storage.upload(key, metadata) as upload:
        async with contextlib.AsyncExitStack() as stack:
            reader = await stack.enter_async_context(dump.open(native))
            for stage in stages:
                reader = await stack.enter_async_context(stage.apply(reader))
            await _copy(target, reader, upload, digest, key, clock, progress)
        if (stages[0].size if stages else digest.size) == 0:
            raise DumpError(
                f"the backup of {dump.database} is empty; refusing to store an empty backup"
            )
        info = await probe
        await upload.commit()
    progress.done(key)
    facts = {name: value for stage in stages for name, value in stage.facts().items()}
    return await _record(
        target,
        storage,
        dump.database,
        key,
        digest,
        started,
        clock,
        info,
        native,
        stream_kind,
        facts,
    )


async def _copy(
    target: TargetConfig,
    source: Readable,
    upload: Upload,
    digest: Digest,
    key: str,
    clock: float,
    progress: Progress,
) -> None:
    """Every byte of ``source`` into ``upload``, in parts, hashed on the way."""
    pool = BufferPool(keep=target.storage.upload_concurrency + 2)
    async for part in fixed_parts(source, upload.part_size, digest, pool):
        await upload.write(part)
        progress.update(key, digest.size, time.monotonic() - clock)


async def _record(
    target: TargetConfig,
    storage: Storage,
    database: str,
    key: str,
    digest: Digest,
    started: datetime,
    clock: float,
    info: ServerInfo,
    native: bool,
    stream_kind: Compression,
    facts: dict[str, Any],
) -> BackupResult:
    """The result of a published object, and its manifest written beside it (``facts``: what
    the stages record)."""
    result = BackupResult(
        target=target.name,
        database=database,
        engine=target.database.engine,
        key=key,
        size=digest.size,
        sha256=await digest.hexdigest(),
        started=started,
        finished=datetime.now(target.layout.tz),
        duration_s=round(time.monotonic() - clock, 3),
    )
    await _write_manifest(
        storage, result, info, target.layout.compression, native, stream_kind, facts
    )
    return result


async def _write_manifest(
    storage: Storage,
    result: BackupResult,
    info: ServerInfo,
    setting: Compression,
    native: bool,
    stream: Compression,
    facts: dict[str, Any],
) -> None:
    fields: dict[str, Any] = {
        "key": result.key,
        "sha256": result.sha256,
        "size": result.size,
        "started": result.started.isoformat(),
        "finished": result.finished.isoformat(),
        "duration_s": result.duration_s,
        "target": result.target,
        "database": result.database,
        "engine": result.engine,
        "server_version": info.server_version,
        "tool_version": info.tool_version,
        "compression": {"setting": setting.value, "tool": native, "stream": stream.value},
        **facts,
    }
    try:
        await storage.put_bytes(
            manifest_key(result.key), manifest_bytes(fields), "application/json"
        )
    except BackupdError:
        # Without its manifest the object is not a complete backup: do not leave it behind.
        try:
            await storage.delete(result.key)
        except StorageError as error:
            log.warning("could not remove %s after its manifest failed: %s", result.key, error)
        raise


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
    source: BackupSource,
    storage: Storage,
    probe: asyncio.Future[ServerInfo],
    progress: Progress,
    run: TargetRun,
) -> None:
    """Each database in turn; one failing does not stop the others."""
    for dump in await _dumps(target, source, probe):
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
    if not target.database.all_databases:
        return [_database_dump(source, name) for name in target.database.databases]
    dumps = [_database_dump(source, name) for name in await _all_databases(source, probe)]
    server_globals = source.open_globals(await probe)
    if server_globals is not None:
        dumps.append(Dump(GLOBALS, GLOBALS, ".sql", lambda _: server_globals, False))
    return dumps


def _database_dump(source: BackupSource, database: str) -> Dump:
    return Dump(
        database=database,
        stem=backup_stem(database),
        extension=source.extension,
        open=lambda native: source.open_dump(database, native),
        tool_compresses=source.can_compress,
    )


async def _settle(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if still running and wait for it, keeping its outcome to itself."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
