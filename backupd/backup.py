"""Back up one target: probe → dump → stream → upload → manifest.

This module composes the others; sources, stream and storage never import one another. A backup
becomes visible only when the dump exited 0, every part is stored and the manifest is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from backupd.config import Compression, TargetConfig
from backupd.errors import BackupdError, DumpError, StorageError
from backupd.layout import manifest_bytes, manifest_key, object_key, object_metadata
from backupd.parts import BufferPool
from backupd.process import Child, describe_status, spawn
from backupd.sources import ServerInfo, Source, source_for
from backupd.storage import Storage, open_storage
from backupd.stream import SUFFIXES, Digest, fixed_parts, make_compressor, plan_compression

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 15.0


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


def secrets_of(target: TargetConfig) -> list[str]:
    """Every secret value of a target, for masking text that leaves the process."""
    values = [target.database.password]
    storage = target.storage
    if storage.kind != "local":
        values += [
            getattr(storage, "access_key_id", None),
            getattr(storage, "secret_access_key", None),
        ]
    return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]


class _Progress:
    def __init__(self, key: str) -> None:
        self.key = key
        self.start = time.monotonic()
        self.last = self.start

    def tick(self, size: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            rate = size / (now - self.start) / 1e6
            log.info("%s: %.1f MB stored so far, %.1f MB/s", self.key, size / 1e6, rate)


async def dump_to_storage(
    target: TargetConfig,
    source: Source,
    storage: Storage,
    database: str,
    probe: asyncio.Future[ServerInfo],
) -> BackupResult:
    """Stream one database's dump into one new object, then write its manifest.

    ``probe`` (login, versions) runs alongside the dump; it must have succeeded before the
    object is published.
    """
    layout = target.layout
    started = datetime.now(layout.tz)
    native, stream_kind = plan_compression(
        layout.compression, target.database.engine, source.can_compress
    )
    key = object_key(layout.folder, database, source.extension + SUFFIXES[stream_kind], started)
    metadata = object_metadata(target.database.engine, database, started, layout.timezone)
    command = source.dump_command(database, native)
    digest = Digest()
    clock = time.monotonic()
    log.info("backing up %s %s to %s", target.database.engine, database, key)
    async with storage.upload(key, metadata) as upload, spawn(command.argv[0], command) as child:
        pool = BufferPool(keep=target.storage.upload_concurrency + 2)
        progress = _Progress(key)
        parts = fixed_parts(
            child.stdout, upload.part_size, digest, make_compressor(stream_kind), pool
        )
        async for part in parts:
            await upload.write(part)
            progress.tick(digest.size)
        await _check_exit(child, source, probe)
        if digest.size == 0:
            raise DumpError(
                f"{child.name} exited 0 but wrote nothing; refusing to store an empty backup"
            )
        info = await probe
        await upload.commit()
    result = BackupResult(
        target=target.name,
        database=database,
        engine=target.database.engine,
        key=key,
        size=digest.size,
        sha256=await digest.hexdigest(),
        started=started,
        finished=datetime.now(layout.tz),
        duration_s=round(time.monotonic() - clock, 3),
    )
    await _write_manifest(storage, result, info, layout.compression, native, stream_kind)
    return result


async def _check_exit(child: Child, source: Source, probe: asyncio.Future[ServerInfo]) -> None:
    """Raise unless the dump exited 0; a failed login probe explains a failure best."""
    code = await child.wait()
    if code == 0:
        return
    await asyncio.wait([probe])
    if not probe.cancelled() and isinstance(probe.exception(), BackupdError):
        await probe  # raises the login or version problem
    stderr = child.stderr_text()
    hint = source.explain_failure(stderr)
    raise DumpError(
        f"{f'{hint}: ' if hint else ''}{child.name} exited with status {describe_status(code)}: "
        f"{stderr or 'no output'}"
    )


async def _write_manifest(
    storage: Storage,
    result: BackupResult,
    info: ServerInfo,
    setting: Compression,
    native: bool,
    stream: Compression,
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


async def run_backup(target: TargetConfig) -> list[BackupResult]:
    """Back up every database of ``target``; raise on the first failure."""
    source = source_for(target.database)
    # Start everything at once: the login probe waits on child processes, the storage client
    # costs CPU, and the dump itself needs neither to begin.
    probe = asyncio.ensure_future(source.probe())
    try:
        async with open_storage(target.storage) as storage:
            warm_up = asyncio.ensure_future(storage.warm_up())
            try:
                database = target.database.database
                return [await dump_to_storage(target, source, storage, database, probe)]
            finally:
                await _settle(warm_up)
    finally:
        await _settle(probe)


async def _settle(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if still running and wait for it, keeping its outcome to itself."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
