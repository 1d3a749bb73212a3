"""The byte pipeline: dump stdout → optional compression → fixed-size parts, hashed on the way.

Every part but the last is exactly the size the storage asks for (R2 requires it), and the
pipeline reads the next part only when the storage accepts one: memory stays bounded by the
part size times the upload concurrency, whatever the size of the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import zstandard

from backupd.config import Compression, Engine
from backupd.errors import DumpError
from backupd.parts import BufferPool, Part, fill

CHUNK = 1024 * 1024
ZSTD_LEVEL = 3
GZIP_LEVEL = 6


class Compressor(Protocol):
    def compress(self, data: memoryview) -> bytes: ...

    def flush(self) -> bytes: ...


class _Gzip:
    def __init__(self) -> None:
        self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)

    def compress(self, data: memoryview) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush()


ZSTD_JOB_SIZE = 1024 * 1024
"""Bytes each zstd worker thread takes at a time. zstd's default at level 3 (8 MiB) holds about
40 MiB in the workers' buffers; 1 MiB holds about 8 MiB, for a ratio up to 5% worse."""


class _Zstd:
    def __init__(self) -> None:
        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL, threads=-1, job_size=ZSTD_JOB_SIZE
        )
        self._z = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def compress(self, data: memoryview) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush()


SUFFIXES = {Compression.NONE: "", Compression.GZIP: ".gz", Compression.ZSTD: ".zst"}


def plan_compression(
    setting: Compression, engine: Engine, tool_can_compress: bool
) -> tuple[bool, Compression]:
    """Decide (does the dump tool compress?, what does the stream add?).

    ``auto`` lets pg_dump's custom format compress itself and zstd-compresses text dumps;
    ``none`` turns compression off everywhere; gzip/zstd compress in the stream only.
    """
    if setting is Compression.AUTO:
        if tool_can_compress:
            return True, Compression.NONE
        return False, Compression.NONE if engine is Engine.MSSQL else Compression.ZSTD
    return False, setting


def make_compressor(kind: Compression) -> Compressor | None:
    if kind is Compression.GZIP:
        return _Gzip()
    if kind is Compression.ZSTD:
        return _Zstd()
    return None


class Readable(Protocol):
    async def fill(self, target: io.BytesIO | bytearray) -> int:
        """Fill ``target``; return the count, which is short only at end of stream."""
        ...


class FileReader:
    """A file read into the caller's buffers in a worker thread (SQL Server's .bak)."""

    def __init__(self, handle: io.BufferedReader) -> None:
        self._handle = handle

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[FileReader]:
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise DumpError(
                f"the server reported a backup, but {path} does not exist: MSSQL_LOCAL_DIR "
                "must be the directory MSSQL_BACKUP_DIR names, as backupd sees it"
            ) from None
        try:
            yield cls(handle)
        finally:
            handle.close()

    async def fill(self, target: io.BytesIO | bytearray) -> int:
        return await asyncio.to_thread(self._fill, target)

    def _fill(self, target: io.BytesIO | bytearray) -> int:
        return fill(target, self._handle.readinto)


class Digest:
    """Running SHA-256 and byte count of what is stored.

    Hashing runs in a worker thread, one part behind the reader, so the event loop keeps
    draining the dump's pipe while the previous part is hashed.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._pending: asyncio.Future[None] | None = None
        self.size = 0

    async def update(self, part: Part) -> None:
        if self._pending is not None:
            await self._pending
        self.size += part.size
        self._pending = asyncio.ensure_future(self._hash(part))

    async def _hash(self, part: Part) -> None:
        try:
            with part.body.getbuffer() as view:
                await asyncio.to_thread(self._sha.update, view)
        finally:
            part.release()

    async def hexdigest(self) -> str:
        if self._pending is not None:
            await self._pending
        return self._sha.hexdigest()


async def fixed_parts(
    source: Readable,
    part_size: Callable[[int], int],
    digest: Digest,
    compressor: Compressor | None = None,
    pool: BufferPool | None = None,
) -> AsyncIterator[Part]:
    """Yield parts of exactly ``part_size(n)`` bytes (the last may be smaller) until EOF."""
    buffers = pool if pool is not None else BufferPool(keep=0)
    if compressor is None:
        raw = _exact_parts(source, part_size, buffers)
    else:
        raw = _compressed_parts(source, part_size, compressor, buffers)
    async for part in raw:
        await digest.update(part)
        yield part


async def _exact_parts(
    source: Readable, part_size: Callable[[int], int], pool: BufferPool
) -> AsyncIterator[Part]:
    """Read the source straight into each part's buffer: no copy beyond the kernel's."""
    number = 1
    while True:
        size = part_size(number)
        body = pool.take(size)
        filled = await source.fill(body)
        if filled < size:
            body.truncate(filled)
        body.seek(0)
        if filled:
            yield pool.part(body, filled)
        if filled < size:
            return
        number += 1


async def _compressed_parts(
    source: Readable, part_size: Callable[[int], int], compressor: Compressor, pool: BufferPool
) -> AsyncIterator[Part]:
    number = 1
    chunk = bytearray(CHUNK)
    body = pool.take(part_size(number))
    eof = False
    while not eof:
        count = await source.fill(chunk)
        if count:
            compressed = await asyncio.to_thread(compressor.compress, memoryview(chunk)[:count])
        else:
            compressed = await asyncio.to_thread(compressor.flush)
            eof = True
        output = memoryview(compressed)
        while output:
            room = part_size(number) - body.tell()
            body.write(output[:room])
            output = output[room:]
            if body.tell() == part_size(number):
                body.seek(0)
                yield pool.part(body, part_size(number))
                number += 1
                body = pool.take(part_size(number))
    if size := body.tell():
        body.truncate(size)
        body.seek(0)
        yield pool.part(body, size)
