"""List backups, and stream one back into a database (or a file), checksum-verified.

A backup is restorable when its manifest exists. The download streams in bounded memory through
SHA-256 verification and decompression into the engine's restore tool, and the checksum and size
are checked *before* the tool sees the end of its input: PostgreSQL restores in one transaction,
so a mismatch rolls everything back; a database backupd created for the restore is dropped again
on any failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import sys
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import zstandard

from backupd.config import Engine, TargetConfig
from backupd.errors import BackupdError
from backupd.layout import MANIFEST_SUFFIX, manifest_key
from backupd.process import spawn
from backupd.progress import LogProgress, Progress
from backupd.sources import FileSource, Source, source_for
from backupd.storage import Storage, open_storage
from backupd.storage.base import StoredObject

log = logging.getLogger(__name__)

_STAMP = re.compile(r"_(\d{8}_\d{6})\.")


class RestoreError(BackupdError):
    step = "restore"


@dataclass(frozen=True)
class Backup:
    key: str
    size: int
    taken: datetime
    complete: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "taken": self.taken.isoformat(),
            "size": self.size,
            "complete": self.complete,
        }


def catalogue(objects: list[StoredObject], target: TargetConfig) -> list[Backup]:
    """Backups among ``objects``, newest first; complete when their manifest is there too."""
    keys = {item.key for item in objects}
    tz = target.layout.tz
    backups = []
    for item in objects:
        if item.key.endswith(MANIFEST_SUFFIX) or item.key.rsplit("/", 1)[-1].startswith("."):
            continue
        stamp = _STAMP.search(item.key.rsplit("/", 1)[-1])
        taken = (
            datetime.strptime(stamp.group(1), "%Y%m%d_%H%M%S").replace(tzinfo=tz)
            if stamp
            else item.modified.astimezone(tz)
        )
        backups.append(Backup(item.key, item.size, taken, manifest_key(item.key) in keys))
    return sorted(backups, key=lambda b: (b.taken, b.key), reverse=True)


def choose(backups: list[Backup], key: str | None, at: datetime | None, force: bool) -> Backup:
    """The backup to restore: the one named, the newest at or before ``at``, or the newest."""
    if key is not None:
        named = [b for b in backups if b.key == key]
        if not named:
            raise RestoreError(f"no backup with key {key!r}; `backupd list` shows the keys")
        if not named[0].complete and not force:
            raise RestoreError(
                f"{key} has no manifest (an incomplete backup); add --force to restore it anyway"
            )
        return named[0]
    complete = [b for b in backups if b.complete and not _is_globals(b.key)]
    if at is not None:
        complete = [b for b in complete if b.taken <= at]
    if not complete:
        when = f" at or before {at.isoformat()}" if at else ""
        raise RestoreError(f"no complete backup{when}; `backupd list` shows what there is")
    return complete[0]


def _is_globals(key: str) -> bool:
    return key.rsplit("/", 1)[-1].startswith("globals_")


class Decompressor(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


class _Plain:
    def decompress(self, data: bytes) -> bytes:
        return data


def decompressor_for(key: str) -> Decompressor:
    if key.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj()
    if key.endswith(".gz"):
        return zlib.decompressobj(31)
    return _Plain()


class StatementFilter:
    """Drops whole lines that start with one of ``prefixes``, from a stream cut anywhere.

    A ``--databases`` dump names its database in ``CREATE DATABASE`` and in ``USE`` lines (at
    the top, and again before the final view definitions); without them it loads into the
    database the client names. mysqldump escapes newlines inside values, so a line start is a
    statement start. The search is ``bytes.find``, not a per-line loop.
    """

    def __init__(self, prefixes: tuple[bytes, ...] = (b"CREATE DATABASE ", b"USE `")) -> None:
        self._needles = tuple(b"\n" + prefix for prefix in prefixes)
        self._carry = b"\n"  # a line start before the first line
        self._skipping = False
        self._first = True

    def feed(self, data: bytes) -> bytes:
        buffer = self._carry + data
        kept: list[bytes] = []
        position = 0
        while True:
            if self._skipping:
                end = buffer.find(b"\n", position)
                if end < 0:
                    position = len(buffer)
                    break
                position, self._skipping = end, False  # the newline starts the next line
            hit = min(
                (i for n in self._needles if (i := buffer.find(n, position)) >= 0), default=-1
            )
            if hit < 0:
                break
            kept.append(buffer[position:hit])
            position, self._skipping = hit + 1, True  # the newline before it goes too
        tail = max(len(n) for n in self._needles) - 1
        safe = position if self._skipping else max(position, len(buffer) - tail)
        kept.append(buffer[position:safe])
        self._carry = buffer[safe:]
        return self._strip_first(b"".join(kept))

    def flush(self) -> bytes:
        rest, self._carry = (b"" if self._skipping else self._carry), b""
        return self._strip_first(rest)

    def _strip_first(self, data: bytes) -> bytes:
        """Remove the made-up newline in front of the first line, once."""
        if self._first and data:
            self._first = False
            return data[1:]
        return data


class Verifier:
    """Counts and hashes the stored bytes; ``check`` compares them with the manifest."""

    def __init__(self, key: str, manifest: dict[str, Any] | None) -> None:
        self.key = key
        self.manifest = manifest
        self.sha = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.sha.update(chunk)

    def check(self) -> None:
        if self.manifest is None:
            log.warning(
                "%s has no manifest: restored without checksum verification (--force)", self.key
            )
            return
        digest = self.sha.hexdigest()
        expected, size = self.manifest.get("sha256"), self.manifest.get("size")
        if digest != expected or self.size != size:
            raise RestoreError(
                f"checksum mismatch for {self.key}: sha256 {digest} ({self.size} bytes), but the "
                f"manifest records sha256 {expected} ({size} bytes); the object is damaged or was "
                "altered: nothing was restored"
            )


async def list_backups(target: TargetConfig) -> list[Backup]:
    async with open_storage(target.storage) as storage:
        return catalogue(await _objects(storage, target), target)


async def _objects(storage: Storage, target: TargetConfig) -> list[StoredObject]:
    prefix = f"{target.key_prefix}/" if target.key_prefix else ""
    return [item async for item in storage.list_objects(prefix)]


@dataclass(frozen=True)
class Request:
    key: str | None = None
    at: datetime | None = None
    into: str | None = None
    to_file: Path | None = None
    clean: bool = False
    force: bool = False
    progress: Progress = field(default_factory=LogProgress, compare=False)


async def restore(target: TargetConfig, request: Request) -> Backup:
    """Restore the chosen backup into ``request.into`` or write it to ``request.to_file``."""
    async with open_storage(target.storage) as storage:
        chosen = choose(
            catalogue(await _objects(storage, target), target),
            request.key,
            request.at,
            request.force,
        )
        manifest = (
            json.loads(await storage.get_bytes(manifest_key(chosen.key)))
            if chosen.complete
            else None
        )
        log.info("restoring %s (%s)", chosen.key, chosen.taken.isoformat())
        if request.to_file is not None and str(request.to_file) == "-":
            await _to_stdout(storage, chosen, manifest, request.progress)
        elif request.to_file is not None:
            await _to_file(storage, chosen, manifest, request.to_file, request.progress)
        else:
            assert request.into is not None
            await _into_database(storage, target, chosen, manifest, request)
    return chosen


class _Download:
    """The object's bytes, hashed as they arrive and decompressed.

    Whatever goes wrong on the way (a decompression error, a restore tool giving up), the rest
    of the object can be ``drain``ed through the hash, so that damage is reported as such.
    """

    def __init__(
        self, storage: Storage, backup: Backup, verifier: Verifier, progress: Progress
    ) -> None:
        self._raw = storage.download(backup.key)
        self._key = backup.key
        self._verifier = verifier
        self._decompressor = decompressor_for(backup.key)
        self._progress = progress
        self._clock = time.monotonic()

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._raw:
            self._verifier.update(chunk)
            self._progress.update(self._key, self._verifier.size, time.monotonic() - self._clock)
            try:
                plain = self._decompressor.decompress(chunk)
            except (zstandard.ZstdError, zlib.error) as error:
                await self.drain()
                raise RestoreError(f"cannot decompress {self._key}: {error}") from error
            if plain:
                yield plain
        self._progress.done(self._key)

    async def drain(self) -> None:
        """Hash the rest of the object and raise if it does not match its manifest."""
        async for chunk in self._raw:
            self._verifier.update(chunk)
        self._verifier.check()


async def _to_file(
    storage: Storage,
    backup: Backup,
    manifest: dict[str, Any] | None,
    path: Path,
    progress: Progress,
) -> None:
    """Download, verify and decompress into ``path``; it appears only once verified."""
    if await asyncio.to_thread(path.exists):
        raise RestoreError(f"{path} already exists; choose another --to-file path")
    verifier = Verifier(backup.key, manifest)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with temporary.open("xb") as handle:
            async for chunk in _Download(storage, backup, verifier, progress).chunks():
                await asyncio.to_thread(handle.write, chunk)
            verifier.check()
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)  # never over a file that appeared meanwhile
    except FileExistsError:
        raise RestoreError(f"{path} already exists; choose another --to-file path") from None
    except OSError as error:
        raise RestoreError(f"cannot write {path}: {error.strerror or error}") from error
    finally:
        temporary.unlink(missing_ok=True)


async def _to_stdout(
    storage: Storage, backup: Backup, manifest: dict[str, Any] | None, progress: Progress
) -> None:
    """Download, verify and decompress to stdout (``--to-file -``), for a pipe.

    The last chunk is held back until the checksum matches: on a mismatch the reader sees the
    stream cut short, never a complete-looking dump, and backupd exits 1.
    """
    verifier = Verifier(backup.key, manifest)
    out = sys.stdout.buffer
    held = b""
    try:
        async for chunk in _Download(storage, backup, verifier, progress).chunks():
            if held:
                await asyncio.to_thread(out.write, held)
            held = chunk
        verifier.check()
        await asyncio.to_thread(out.write, held)
        await asyncio.to_thread(out.flush)
    except (BrokenPipeError, ValueError) as error:
        raise RestoreError(f"stdout closed before the whole dump was written: {error}") from None


async def _into_database(
    storage: Storage,
    target: TargetConfig,
    backup: Backup,
    manifest: dict[str, Any] | None,
    request: Request,
) -> None:
    into = request.into
    assert into is not None
    if _is_globals(backup.key):
        raise RestoreError(f"{backup.key} holds server globals (roles): use --to-file and psql -f")
    _check_engine(target, manifest)
    source = source_for(target)
    original = (manifest or {}).get("database")
    if into == original and not request.clean:
        raise RestoreError(
            f"--into {into} is the backed-up database itself; add --clean to overwrite it"
        )
    state = await source.database_state(into)
    if state == "in use" and not request.clean:
        raise RestoreError(f"database {into!r} exists and is not empty; add --clean to replace it")
    if isinstance(source, FileSource):
        await _through_shared_file(storage, source, backup, manifest, request)
        return
    if state != "missing" and request.clean:
        await source.drop_database(into)
    created = state == "missing" or request.clean
    if created:
        await source.create_database(into)
    try:
        await _feed_restore_tool(storage, source, target, backup, manifest, into, request.progress)
    except BaseException:
        if created:
            await asyncio.shield(source.drop_database(into))
        raise


async def _through_shared_file(
    storage: Storage,
    source: FileSource,
    backup: Backup,
    manifest: dict[str, Any] | None,
    request: Request,
) -> None:
    """SQL Server restores from a file it reads itself: download and verify the .bak onto the
    shared volume, have the server restore it, and delete it whatever happens."""
    assert request.into is not None
    server_path, local_path = source.paths(f"restore_{secrets.token_hex(6)}.bak")
    try:
        await _to_file(storage, backup, manifest, local_path, request.progress)
        await source.restore_from_file(server_path, request.into, request.clean)
    finally:
        await asyncio.shield(asyncio.to_thread(local_path.unlink, missing_ok=True))


def _check_engine(target: TargetConfig, manifest: dict[str, Any] | None) -> None:
    family = {
        Engine.POSTGRES: "postgres",
        Engine.MYSQL: "mysql",
        Engine.MARIADB: "mysql",
        Engine.MSSQL: "mssql",
    }
    stored = (manifest or {}).get("engine")
    if stored is not None and family.get(Engine(stored)) != family.get(target.database.engine):
        raise RestoreError(
            f"this is a {stored} backup; the target's DB_TYPE is {target.database.engine}"
        )


async def _feed_restore_tool(
    storage: Storage,
    source: Source,
    target: TargetConfig,
    backup: Backup,
    manifest: dict[str, Any] | None,
    into: str,
    progress: Progress,
) -> None:
    command = source.restore_command(into)
    rewrite = StatementFilter() if target.database.engine is not Engine.POSTGRES else None
    verifier = Verifier(backup.key, manifest)
    download = _Download(storage, backup, verifier, progress)
    async with spawn(command.argv[0], command, stdin=asyncio.subprocess.PIPE) as child:
        output = asyncio.ensure_future(child.stdout.read_all())  # keep the tool's stdout drained
        try:
            try:
                async for chunk in download.chunks():
                    data = rewrite.feed(chunk) if rewrite is not None else chunk
                    if data:
                        child.stdin.write(data)
                        await child.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                await download.drain()  # the tool gave up early: was the object damaged?
            else:
                verifier.check()  # before the tool sees the end of its input
                child.stdin.write(rewrite.flush() if rewrite is not None else b"")
                child.stdin.close()
            code = await child.wait()
        finally:
            output.cancel()
            await asyncio.gather(output, return_exceptions=True)
        if code != 0:
            raise RestoreError(
                f"{child.name} exited with status {code}: {child.stderr_text() or 'no output'}"
            )
