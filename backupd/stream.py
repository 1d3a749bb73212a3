"""The byte pipeline: dump stdout → optional compression → fixed-size parts, hashed on the way.

Every part but the last is exactly the size the storage asks for (R2 requires it), and the
pipeline reads the next part only when the storage accepts one: memory stays bounded by the
part size times the upload concurrency, whatever the size of the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import zstandard

from backupd.config import Compression, Engine

CHUNK = 1024 * 1024
ZSTD_LEVEL = 3
GZIP_LEVEL = 6


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Gzip:
    def __init__(self) -> None:
        self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush()


class _Zstd:
    def __init__(self) -> None:
        self._z = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1).compressobj()

    def compress(self, data: bytes) -> bytes:
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


class Digest:
    """Running SHA-256 and byte count of what is stored; hashing runs off the event loop."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    async def update(self, data: bytes) -> None:
        self.size += len(data)
        await asyncio.to_thread(self._sha.update, data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


async def fixed_parts(
    source: asyncio.StreamReader,
    part_size: Callable[[int], int],
    digest: Digest,
    compressor: Compressor | None = None,
) -> AsyncIterator[bytes]:
    """Yield parts of exactly ``part_size(n)`` bytes (the last may be smaller) until EOF."""
    if compressor is None:
        raw = _exact_parts(source, part_size)
    else:
        raw = _compressed_parts(source, part_size, compressor)
    async for part in raw:
        await digest.update(part)
        yield part


async def _exact_parts(
    source: asyncio.StreamReader, part_size: Callable[[int], int]
) -> AsyncIterator[bytes]:
    number = 1
    while True:
        size = part_size(number)
        try:
            part = await source.readexactly(size)
        except asyncio.IncompleteReadError as short:
            if short.partial:
                yield short.partial
            return
        yield part
        number += 1


async def _compressed_parts(
    source: asyncio.StreamReader, part_size: Callable[[int], int], compressor: Compressor
) -> AsyncIterator[bytes]:
    number = 1
    pending = bytearray()
    eof = False
    while not eof:
        chunk = await source.read(CHUNK)
        if chunk:
            pending += await asyncio.to_thread(compressor.compress, chunk)
        else:
            pending += await asyncio.to_thread(compressor.flush)
            eof = True
        while len(pending) >= (size := part_size(number)):
            yield bytes(pending[:size])
            del pending[:size]
            number += 1
    if pending:
        yield bytes(pending)
