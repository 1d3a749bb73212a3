"""Stages between a dump and its parts: compression, then encryption.

Every stage has the same small interface: ``apply(source)`` is an async context manager that
yields a byte source of the transformed bytes, and ``suffix`` is what the stage adds to the
object key. A stage is one class here plus one line in ``choose_stages``. Compression always
comes before encryption: ciphertext does not compress.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import zstandard

from backupd.config import Compression, Engine
from backupd.encryption import Encrypt
from backupd.parts import Readable

CHUNK = 1024 * 1024
ZSTD_LEVEL = 3
ZSTD_JOB_SIZE = 1024 * 1024
"""Bytes each zstd worker thread takes at a time. zstd's default at level 3 (8 MiB) holds about
40 MiB in the workers' buffers; 1 MiB holds about 8 MiB, for a ratio up to 5% worse."""
GZIP_LEVEL = 6
SUFFIXES = {Compression.NONE: "", Compression.GZIP: ".gz", Compression.ZSTD: ".zst"}


class Stage(Protocol):
    """One transformation of the byte stream."""

    suffix: str
    """What the stage adds to the object key, e.g. ``.zst`` or ``.age``."""

    size: int
    """Bytes the stage has read from its source so far."""

    def apply(self, source: Readable) -> AbstractAsyncContextManager[Readable]:
        """The transformed bytes of ``source``.

        Leaving the block after reading to end of stream checks that the stage finished cleanly
        (raises a ``BackupdError`` otherwise); leaving it early, by an error or a cancellation,
        releases everything the stage holds (threads, child processes).
        """
        ...

    def facts(self) -> dict[str, Any]:
        """What the manifest records about this stage once the stream ended (may be empty)."""
        ...


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


def choose_stages(compression: Compression, recipients: Sequence[str] = ()) -> list[Stage]:
    """The stages in pipeline order: compression (if any), then encryption (if recipients)."""
    stages: list[Stage] = []
    if compression is not Compression.NONE:
        stages.append(Compress(compression))
    if recipients:
        stages.append(Encrypt(recipients))
    return stages


def key_suffix(stages: Sequence[Stage]) -> str:
    """``.zst.age`` for zstd then age: each stage's suffix, in pipeline order."""
    return "".join(stage.suffix for stage in stages)


class Compressor(Protocol):
    def compress(self, data: memoryview) -> bytes: ...

    def flush(self) -> bytes: ...


def _compressor(kind: Compression) -> Compressor:
    if kind is Compression.GZIP:
        return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    if kind is Compression.ZSTD:
        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL, threads=-1, job_size=ZSTD_JOB_SIZE
        )
        return zstandard.ZstdCompressor(compression_params=params).compressobj()
    raise ValueError(f"no stream compressor for {kind}")


class Compress:
    """gzip or zstd (multi-threaded) in the stream, in worker threads, 1 MiB at a time."""

    def __init__(self, kind: Compression) -> None:
        self.kind = kind
        self.suffix = SUFFIXES[kind]
        self.size = 0

    @contextlib.asynccontextmanager
    async def apply(self, source: Readable) -> AsyncIterator[Readable]:
        yield _Compressed(source, _compressor(self.kind), self)

    def facts(self) -> dict[str, Any]:
        return {}  # the manifest's "compression" covers it


class _Compressed:
    """Reads the source a chunk at a time and hands out its compressed bytes."""

    def __init__(self, source: Readable, compressor: Compressor, stage: Compress) -> None:
        self._source = source
        self._stage = stage
        self._compressor = compressor
        self._chunk = bytearray(CHUNK)
        self._output = memoryview(b"")
        self._eof = False

    async def fill(self, target: io.BytesIO | bytearray) -> int:
        with target.getbuffer() if isinstance(target, io.BytesIO) else memoryview(target) as view:
            filled = 0
            while filled < len(view):
                if not self._output:
                    if self._eof:
                        break
                    await self._refill()
                    continue
                count = min(len(self._output), len(view) - filled)
                view[filled : filled + count] = self._output[:count]
                self._output = self._output[count:]
                filled += count
            return filled

    async def _refill(self) -> None:
        count = await self._source.fill(self._chunk)
        self._stage.size += count
        if count:
            data = memoryview(self._chunk)[:count]
            self._output = memoryview(await asyncio.to_thread(self._compressor.compress, data))
        else:
            self._output = memoryview(await asyncio.to_thread(self._compressor.flush))
            self._eof = True
