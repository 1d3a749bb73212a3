"""List backups, and stream one back into a database (or a file), checksum-verified.

A backup is restorable when its manifest exists. The download streams in bounded memory through
SHA-256 verification and decompression into the engine's restore tool, and the checksum and size
are checked *before* the tool sees the end of its input: PostgreSQL restores in one transaction,
so a mismatch rolls everything back; a database backupd created for the restore is dropped again
on any failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import sys
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import zstandard

from backupd.catalogue import Backup, Manifest, choose, engine_family, passed_over, scan
from backupd.config import Engine, TargetConfig
from backupd.encryption import (
    DecryptError,
    Decryption,
    WrongIdentity,
    check_identity,
    identity_for,
    is_recipient,
    without_suffix,
)
from backupd.errors import BackupdError
from backupd.process import Child, describe_status, spawn, stall_guard
from backupd.progress import LogProgress, Progress
from backupd.sources import FileSource, Source, source_for
from backupd.sources.base import ScriptFilter, deleted_afterwards
from backupd.storage import Storage, open_storage
from backupd.storage.base import FILE_MODE

log = logging.getLogger(__name__)


class RestoreError(BackupdError):
    step = "restore"


PLAIN_PIECE = 1024 * 1024
"""The most decompressed bytes gzip hands out at a time."""
ZSTD_SLICE = 256
"""Compressed bytes zstd decompresses at a time. Its decompression object has no output limit:
a 1 MiB download chunk of a dump that compresses 1000:1 (rows of repeated text, zero-filled
blobs) came out as 1 GB at once, and a restore's memory grew with the dump's size. A zstd
block holds at most 128 KiB and takes at least 4 bytes (an RLE block), so 256 bytes make at
most 8 MiB; 43 MiB of a dump decompress in 0.06 s so, against 0.04 s at once."""


class Decompressor(Protocol):
    """A compressed stream's bytes in bounded pieces: ``eof`` once the compressed stream has
    ended, and ``unused_data`` (non-empty) when more came after its end."""

    def pieces(self, data: bytes) -> Iterator[bytes]: ...

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...


class _Plain:
    eof = True
    unused_data = b""

    def pieces(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data


class _Gzip:
    def __init__(self) -> None:
        self._inner = zlib.decompressobj(31)

    @property
    def eof(self) -> bool:
        return self._inner.eof

    @property
    def unused_data(self) -> bytes:
        return self._inner.unused_data

    def pieces(self, data: bytes) -> Iterator[bytes]:
        while True:
            plain = self._inner.decompress(data, PLAIN_PIECE)
            data = self._inner.unconsumed_tail
            if plain:
                yield plain
            if self._inner.eof or (not data and len(plain) < PLAIN_PIECE):
                return  # (a full piece may leave output behind though all input was read)


class _Zstd:
    def __init__(self) -> None:
        self._inner = zstandard.ZstdDecompressor().decompressobj()
        self._after = b""  # the start of what came after the frame's end

    @property
    def eof(self) -> bool:
        return bool(self._inner.eof)

    @property
    def unused_data(self) -> bytes:
        return self._inner.unused_data or self._after

    def pieces(self, data: bytes) -> Iterator[bytes]:
        with memoryview(data) as view:
            for start in range(0, len(view), ZSTD_SLICE):
                if self._inner.eof:  # it takes no more input once its frame has ended
                    self._after = self._after or bytes(view[start : start + 16])
                    return
                plain = self._inner.decompress(view[start : start + ZSTD_SLICE])
                if plain:
                    yield plain


def stream_end_problem(key: str, decompressor: Decompressor) -> str | None:
    """Why the compressed stream of ``key`` did not end where the object does (truncated, or
    bytes after its end), or None. The checksum finds this too, but an object restored with
    ``--force`` has none."""
    if not decompressor.eof:
        return f"{key} ends before its compressed stream does: the object is truncated"
    if decompressor.unused_data:
        return f"{key} holds bytes after the end of its compressed stream"
    return None


def decompressor_for(key: str) -> Decompressor:
    key = without_suffix(key)  # decryption comes first
    if key.endswith(".zst"):
        return _Zstd()
    if key.endswith(".gz"):
        return _Gzip()
    return _Plain()


class Verifier:
    """Counts and hashes the stored bytes; ``check`` compares them with the manifest."""

    def __init__(self, key: str, manifest: Manifest | None) -> None:
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
        expected, size = self.manifest.sha256, self.manifest.size
        if digest != expected or self.size != size:
            raise RestoreError(
                f"checksum mismatch for {self.key}: sha256 {digest} ({self.size} bytes), but the "
                f"manifest records sha256 {expected} ({size} bytes); the object is damaged or was "
                "altered: nothing was restored"
            )


async def list_backups(target: TargetConfig, database: str | None = None) -> list[Backup]:
    """The target's backups, newest first; only ``database``'s when given."""
    async with open_storage(target.storage) as storage:
        backups = await scan(storage, target.key_prefix)
    return [b for b in backups if database is None or b.database == database]


@dataclass(frozen=True)
class Request:
    database: str | None = None
    """Whose backups to choose among (implied by the key when one is given)."""
    key: str | None = None
    at: datetime | None = None
    into: str | None = None
    to_file: Path | None = None
    """A path, or ``-`` for standard output."""
    clean: bool = False
    force: bool = False
    identity: Path | None = None
    """The age identity file, for an encrypted backup."""
    identity_named: str = "--identity"
    """Where ``identity`` was given (``--identity`` or ``ENCRYPTION_IDENTITY_FILE``)."""
    progress: Progress = field(default_factory=LogProgress, compare=False)


async def restore(target: TargetConfig, request: Request) -> Backup:
    """Restore the chosen backup into ``request.into`` or write it to ``request.to_file``."""
    async with open_storage(target.storage) as storage:
        backups = await scan(storage, target.key_prefix)
        chosen = choose(
            backups,
            database=request.database,
            key=request.key,
            at=request.at,
            force=request.force,
            engine=target.database.engine,
        )
        if request.key is None:
            for newer in passed_over(backups, chosen, request.at):
                log.warning(
                    "%s is a newer backup of %s that is not complete (%s): restoring the "
                    "older %s instead",
                    newer.key,
                    chosen.database,
                    newer.problem or "it has no manifest",
                    chosen.key,
                )
        check_stored_size(chosen)
        # None: not encrypted
        identity = identity_for(chosen.key, request.identity, request.identity_named)
        if identity is not None:  # before anything is created
            await check_decryptable(storage, chosen, identity, request.progress)
        request = replace(request, identity=identity)
        log.info("restoring %s (%s)", chosen.key, chosen.taken.astimezone(target.layout.tz))
        if request.to_file is not None and str(request.to_file) == "-":
            await _to_stdout(storage, chosen, request.progress, identity)
        elif request.to_file is not None:
            await _to_file(storage, chosen, request.to_file, request.progress, identity)
        else:
            assert request.into is not None
            await _into_database(storage, target, chosen, request)
    return chosen


async def check_decryptable(
    storage: Storage, backup: Backup, identity: Path, progress: Progress
) -> None:
    """``check_identity`` for ``backup``, whose header a damaged object can make refuse every
    identity: when ``identity`` is one of the recipients its manifest records, the object is
    read back against its manifest first, and a mismatch is reported as such (RestoreError),
    not as a wrong identity. Any other failure of age is damage when the object does not match
    its manifest either, and otherwise age's own: both stop the restore here."""
    try:
        await check_identity(storage.download(backup.key), identity, backup.key)
    except WrongIdentity:
        recorded = backup.manifest.encryption if backup.manifest is not None else None
        recipients = (recorded or {}).get("recipients")
        if isinstance(recipients, list) and await is_recipient(identity, recipients):
            await _Download(storage, backup, progress).drain()
        raise
    except DecryptError:
        await _Download(storage, backup, progress).drain()
        raise


class _Download:
    """The object's bytes, hashed as they arrive, decrypted (with ``identity``) and
    decompressed.

    Whatever goes wrong on the way (a decryption or decompression error, a restore tool giving
    up), the rest of the object can be ``drain``ed through the hash, so that damage is reported
    as such.
    """

    def __init__(
        self, storage: Storage, backup: Backup, progress: Progress, identity: Path | None = None
    ) -> None:
        self._raw = storage.download(backup.key)
        self._key = backup.key
        self.verifier = self._verifier = Verifier(backup.key, backup.manifest)
        self._decompressor = decompressor_for(backup.key)
        self._progress = progress
        self._clock = time.monotonic()
        self._identity = identity
        self._decryption: Decryption | None = None

    async def _stored(self) -> AsyncIterator[bytes]:
        async for chunk in self._raw:
            self._verifier.update(chunk)
            self._progress.update(self._key, self._verifier.size, time.monotonic() - self._clock)
            yield chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        async with contextlib.AsyncExitStack() as stack:
            stored = self._stored()
            if self._identity is not None:
                self._decryption = Decryption(stored, self._identity, self._key)
                stored = (await stack.enter_async_context(self._decryption)).plaintext()
            try:
                async for chunk in stored:
                    for plain in self._decompressor.pieces(chunk):
                        yield plain
            except (zstandard.ZstdError, zlib.error) as error:
                await self.drain()
                raise RestoreError(f"cannot decompress {self._key}: {error}") from error
            except DecryptError:
                await self.drain()  # damage is reported as a checksum mismatch
                raise
        if (problem := stream_end_problem(self._key, self._decompressor)) is not None:
            await self.drain()  # damage is reported as a checksum mismatch, where there is one
            raise RestoreError(problem)
        self._progress.done(self._key)

    async def drain(self) -> None:
        """Hash the rest of the object and raise if it does not match its manifest."""
        if self._decryption is not None:
            await self._decryption.finish_input()  # the feeder reads (and hashes) the rest
        async for chunk in self._raw:
            self._verifier.update(chunk)
        self._verifier.check()


async def _to_file(
    storage: Storage,
    backup: Backup,
    path: Path,
    progress: Progress,
    identity: Path | None,
    setting: str = "--to-file",
    mode: int = FILE_MODE,
) -> None:
    """Download, verify, decrypt and decompress into ``path``, in the folder ``setting``
    names; it appears only once verified. It is created with ``mode`` (less the umask): by
    default never readable by every user of the host, as a local backup."""
    if await asyncio.to_thread(path.exists):
        raise RestoreError(f"{path} already exists; choose another --to-file path")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        with os.fdopen(os.open(temporary, flags, mode), "wb") as handle:
            download = _Download(storage, backup, progress, identity)
            async for chunk in download.chunks():
                await asyncio.to_thread(handle.write, chunk)
            download.verifier.check()
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)  # never over a file that appeared meanwhile
    except FileExistsError:
        raise RestoreError(f"{path} already exists; choose another --to-file path") from None
    except OSError as error:
        raise RestoreError(f"cannot write {path} ({setting}): {error.strerror or error}") from error
    finally:
        with contextlib.suppress(OSError):  # never created (a read-only folder, not a folder)
            temporary.unlink()


async def _to_stdout(
    storage: Storage, backup: Backup, progress: Progress, identity: Path | None
) -> None:
    """Download, verify, decrypt and decompress to stdout (``--to-file -``), for a pipe.

    The last chunk is held back until the checksum matches: on a mismatch the reader sees the
    stream cut short, never a complete-looking dump, and backupd exits 1.
    """
    out = sys.stdout.buffer
    held = b""
    try:
        download = _Download(storage, backup, progress, identity)
        async for chunk in download.chunks():
            if held:
                await asyncio.to_thread(out.write, held)
            held = chunk
        download.verifier.check()
        await asyncio.to_thread(out.write, held)
        await asyncio.to_thread(out.flush)
    except (BrokenPipeError, ValueError) as error:
        raise RestoreError(f"stdout closed before the whole dump was written: {error}") from None


async def _into_database(
    storage: Storage, target: TargetConfig, backup: Backup, request: Request
) -> None:
    into = request.into
    assert into is not None
    if backup.is_globals:
        raise RestoreError(f"{backup.key} holds server globals (roles): use --to-file and psql -f")
    _check_engine(target, backup.manifest)
    if (problem := name_problem(target.database.engine, into)) is not None:
        raise RestoreError(problem)
    source = source_for(target)
    state = await source.database_state(into)
    if into == backup.database and state == "in use" and not request.clean:
        raise RestoreError(
            f"--into {into} is the backed-up database itself; add --clean to overwrite it"
        )
    if state == "in use" and not request.clean:
        raise RestoreError(f"database {into!r} exists and is not empty; add --clean to replace it")
    if isinstance(source, FileSource):
        await _through_shared_file(storage, source, backup, request)
        return
    properties = backup.manifest.properties if backup.manifest is not None else {}
    if not properties:
        log.warning(
            "%s records no database settings (made by an older backupd, or without a "
            "manifest): %s gets this server's defaults",
            backup.key,
            into,
        )
    if state != "missing" and (request.clean or not source.restores_atomically):
        # Nothing of an existing database is dropped or written before the object is known
        # to be intact: read it back once against its manifest (a second download, no disk).
        limit = await source.statement_limit()
        if limit is None:
            await _verify_stored(storage, backup, request.progress)
        else:
            await _check_statements_fit(storage, backup, request, limit)
    await _restore_database(storage, source, target, backup, request, state, properties)


async def _drop_after_failure(source: Source, into: str) -> None:
    """Drop the database a failed restore created (or meant to create). A drop that fails
    too is a warning: the error that failed the restore is the one to report. (A user without
    the CREATE privilege was told that the clean-up's DROP DATABASE was denied.)"""
    try:
        await asyncio.shield(source.drop_database(into))
    except BackupdError as error:
        log.warning("could not drop %s after the failed restore: %s", into, error)


async def _empty_after_failure(source: Source, into: str, properties: dict[str, Any]) -> None:
    """Make the existing empty database ``into`` that a failed restore wrote into empty again,
    with its own ``properties``; a failure to is a warning naming what is left."""
    try:
        await asyncio.shield(source.drop_database(into))
        _warn(await asyncio.shield(source.create_database(into, properties)))
    except BackupdError as error:
        log.warning(
            "could not empty %s again after the failed restore, it holds what was restored "
            "before the failure: %s",
            into,
            error,
        )


async def _restore_database(
    storage: Storage,
    source: Source,
    target: TargetConfig,
    backup: Backup,
    request: Request,
    state: str,
    properties: dict[str, Any],
) -> None:
    """Drop (``--clean``) and create ``request.into`` as ``state`` ("missing", "empty", "in
    use") asks, restore into it and apply ``properties``; a database created here is dropped
    again on failure."""
    into = request.into
    assert into is not None
    replaced = state != "missing" and request.clean
    # An empty database that existed is left empty again when a restore that commits
    # statement by statement fails: nothing of it is lost by re-creating it, with its defaults.
    emptied = state == "empty" and not request.clean and not source.restores_atomically
    own = await source.database_properties(into) if emptied else {}
    if replaced:
        log.info("--clean: dropping the existing database %s, then restoring into it", into)
        await source.drop_database(into)
    created = state == "missing" or request.clean
    try:
        if created:
            _warn(await source.create_database(into, properties))
        elif not source.restores_atomically:
            # MySQL/MariaDB: a routine, trigger or event takes the database's default
            # collation as it is created, so an existing database gets the recorded one first.
            _warn(await source.apply_properties(into, properties))
        # A database made here is dropped again on failure: it needs no single transaction,
        # whose lock per table a database of thousands of tables would exhaust.
        await _feed_restore_tool(storage, source, target, backup, into, request, not created)
        _warn(await source.apply_properties(into, properties))
    except BaseException:
        if created:
            await _drop_after_failure(source, into)
        if emptied:
            await _empty_after_failure(source, into, own)
        if replaced:
            log.error(
                "the database %s that --clean replaced was dropped before the restore and is "
                "gone: restore it again (from this backup or another) to bring it back",
                into,
            )
        raise


async def _verify_stored(storage: Storage, backup: Backup, progress: Progress) -> None:
    """Stream the stored object through SHA-256 and compare it with its manifest; raise
    RestoreError on a mismatch. Touches no database."""
    if backup.manifest is None:
        return  # --force: nothing to compare with, as the restore itself will say
    log.info("checking %s against its manifest before changing an existing database", backup.key)
    await _Download(storage, backup, progress).drain()


async def _check_statements_fit(
    storage: Storage, backup: Backup, request: Request, limit: int
) -> None:
    """``_verify_stored`` for a dump of SQL text whose statements of rows are one line each
    (MySQL/MariaDB), reading it (decrypted, decompressed) for its longest line: one longer than
    ``limit`` bytes, the most the server takes as one statement (``Source.statement_limit``:
    max_allowed_packet; a binary value of more than half of it, which ``--hex-blob`` doubles),
    would fail the restore, and with ``--clean`` after the database was dropped. Raise
    RestoreError before anything changes. Without a manifest (``--force``) the statements
    are measured all the same; only the checksum has nothing to be compared with."""
    log.info("reading %s before changing an existing database", backup.key)
    download = _Download(storage, backup, request.progress, request.identity)
    longest = current = 0
    async for chunk in download.chunks():
        lines = chunk.split(b"\n")  # a dump's statements of rows are one line each
        if len(lines) == 1:
            current += len(chunk)
            continue
        inner = max(map(len, lines[1:-1]), default=0)
        longest = max(longest, current + len(lines[0]), inner)
        current = len(lines[-1])
    if backup.manifest is not None:  # without one, the restore itself warns of it
        download.verifier.check()
    longest = max(longest, current)
    if longest > limit:
        raise RestoreError(
            f"{backup.key} holds a statement of {longest:,} bytes (a wide row; binary values "
            f"are written in hex, at twice their size), more than this server's "
            f"max_allowed_packet of {limit:,}: raise max_allowed_packet on the server to at "
            f"least {longest + 1024:,} (SET GLOBAL max_allowed_packet = {longest + 1024}), "
            f"then restore again; nothing was changed"
        )


async def restore_into(
    storage: Storage, target: TargetConfig, backup: Backup, request: Request
) -> None:
    """Restore an already chosen ``backup`` into ``request.into`` (restore drills)."""
    check_stored_size(backup)
    await _into_database(storage, target, backup, request)


def _warn(problems: list[str]) -> None:
    for problem in problems:
        log.warning("%s", problem)


async def _through_shared_file(
    storage: Storage, source: FileSource, backup: Backup, request: Request
) -> None:
    """SQL Server restores from a file it reads itself: download and verify the .bak onto the
    shared volume, have the server restore it, and delete it whatever happens."""
    assert request.into is not None
    server_path, local_path = source.paths(f"restore_{secrets.token_hex(6)}.bak")
    async with deleted_afterwards(local_path):
        await _to_file(  # the server reads it as its own user: the umask decides, as for a .bak
            storage,
            backup,
            local_path,
            request.progress,
            request.identity,
            "MSSQL_LOCAL_DIR",
            0o666,
        )
        await source.restore_from_file(server_path, request.into, request.clean)


def _check_engine(target: TargetConfig, manifest: Manifest | None) -> None:
    stored = manifest.engine if manifest is not None else None
    if stored is not None and engine_family(stored) != engine_family(target.database.engine):
        raise RestoreError(
            f"this is a {stored} backup; the target's DB_TYPE is {target.database.engine}"
        )


def name_problem(engine: Engine, name: str) -> str | None:
    """Why ``name`` cannot be a database name on ``engine``, or None. PostgreSQL silently
    truncates names to 63 bytes (NAMEDATALEN - 1); MySQL and MariaDB refuse more than 64
    characters."""
    if engine is Engine.POSTGRES and len(name.encode()) > 63:
        return f"--into {name!r} is longer than PostgreSQL's 63 bytes for a database name"
    if engine in (Engine.MYSQL, Engine.MARIADB) and len(name) > 64:
        return f"--into {name!r} is longer than the 64 characters MySQL allows a database name"
    if not name:
        return "--into is empty: give it the name of the database to restore into"
    if any(ord(c) < 32 for c in name):
        return "--into needs a database name without control characters"
    return None


async def _feed_restore_tool(
    storage: Storage,
    source: Source,
    target: TargetConfig,
    backup: Backup,
    into: str,
    request: Request,
    in_one_transaction: bool,
) -> None:
    tool = await source.restore_tool(backup, into, in_one_transaction=in_one_transaction)
    command, rewrite = tool.command, tool.rewrite
    download = _Download(storage, backup, request.progress, request.identity)
    async with spawn(command.program, command, stdin=asyncio.subprocess.PIPE) as child:
        output = asyncio.ensure_future(child.stdout.read_all())  # keep the tool's stdout drained
        try:
            async with stall_guard(
                lambda: download.verifier.size, target.limits.stall_timeout, child.name
            ):
                await _feed(child, download, rewrite)
            code = await child.wait()
        finally:
            output.cancel()
            await asyncio.gather(output, return_exceptions=True)
        if code != 0:
            said = child.stderr_text()
            hint = source.explain_failure(said)
            raise RestoreError(
                f"{f'{hint}: ' if hint else ''}{child.name} exited with status "
                f"{describe_status(code)}: {said or 'no output'}"
            )


async def _feed(child: Child, download: _Download, rewrite: ScriptFilter | None) -> None:
    """The verified stream into the tool's stdin. The last piece is held back until the
    checksum matches: a tool that knows where its input ends (pg_restore's archive ends with
    a terminator) would otherwise finish, and commit, before damage in that piece is found.
    Bytes past the archive's end are refused earlier, by ``check_stored_size``."""
    held = b""
    try:
        async for chunk in download.chunks():
            data = rewrite.feed(chunk) if rewrite is not None else chunk
            if data:
                if held:
                    child.stdin.write(held)
                    await child.stdin.drain()
                held = data
    except (BrokenPipeError, ConnectionResetError):
        await download.drain()  # the tool gave up early: was the object damaged?
        return
    download.verifier.check()
    child.stdin.write(held + (rewrite.flush() if rewrite is not None else b""))
    child.stdin.close()


def check_stored_size(backup: Backup) -> None:
    """Raise RestoreError when the stored object's size (as listed) differs from its
    manifest's: damage found before anything is created or changed. A restore tool that
    knows where its input ends would otherwise commit what comes before bytes appended to
    the object, before the checksum is known."""
    manifest = backup.manifest
    if manifest is not None and backup.size != manifest.size:
        raise RestoreError(
            f"checksum mismatch for {backup.key}: the stored object holds {backup.size} bytes, "
            f"but the manifest records {manifest.size}; the object is damaged or was altered: "
            "nothing was restored"
        )
