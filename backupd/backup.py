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
from backupd.process import describe_status, spawn
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
    target: TargetConfig, source: Source, storage: Storage, database: str, info: ServerInfo
) -> BackupResult:
    """Stream one database's dump into one new object, then write its manifest."""
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
        progress = _Progress(key)
        async for part in fixed_parts(
            child.stdout, upload.part_size, digest, make_compressor(stream_kind)
        ):
            await upload.write(part)
            progress.tick(digest.size)
        code = await child.wait()
        if code != 0:
            hint = source.explain_failure(child.stderr_text())
            detail = child.stderr_text() or "no output"
            prefix = f"{hint}: " if hint else ""
            raise DumpError(
                f"{prefix}{command.argv[0]} exited with status {describe_status(code)}: {detail}"
            )
        if digest.size == 0:
            raise DumpError(
                f"{command.argv[0]} exited 0 but wrote nothing; refusing to store an empty backup"
            )
        await upload.commit()
    finished = datetime.now(layout.tz)
    duration = time.monotonic() - clock
    result = BackupResult(
        target=target.name,
        database=database,
        engine=target.database.engine,
        key=key,
        size=digest.size,
        sha256=await digest.hexdigest(),
        started=started,
        finished=finished,
        duration_s=round(duration, 3),
    )
    await _write_manifest(storage, result, info, layout.compression, native, stream_kind)
    return result


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
    # The login probe waits on child processes; opening storage is CPU work: overlap them.
    probe = asyncio.create_task(source.probe(), name=f"probe-{target.name}")
    try:
        async with open_storage(target.storage) as storage:
            info = await probe
            log.info(
                "%s: %s server %s, %s",
                target.name,
                target.database.engine,
                info.server_version,
                info.tool_version,
            )
            return [await dump_to_storage(target, source, storage, target.database.database, info)]
    finally:
        if not probe.done():
            probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)
