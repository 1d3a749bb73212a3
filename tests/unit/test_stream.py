from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import random

import pytest
import zstandard

from backupd.backup import asked_once
from backupd.config import Compression, Engine
from backupd.parts import BufferPool, Part, Readable
from backupd.stages import choose_stages, key_suffix, plan_compression
from backupd.stream import Digest, fixed_parts


class ChunkedSource:
    """Bytes delivered in irregular chunks, as a dump tool's writes arrive."""

    def __init__(self, data: bytes, seed: int = 7) -> None:
        self.data = data
        self.position = 0
        self.random = random.Random(seed)

    async def fill(self, target: io.BytesIO | bytearray) -> int:
        with target.getbuffer() if isinstance(target, io.BytesIO) else memoryview(target) as view:
            filled = 0
            while filled < len(view) and self.position < len(self.data):
                step = min(
                    self.random.randint(1, 9000), len(view) - filled, len(self.data) - self.position
                )
                view[filled : filled + step] = self.data[self.position : self.position + step]
                filled += step
                self.position += step
            return filled


def payload(size: int) -> bytes:
    return random.Random(size).randbytes(size // 2) + b"compressible " * (size // 26)


async def collect(source: ChunkedSource, part: int, kind: Compression) -> tuple[list[Part], Digest]:
    digest = Digest()
    async with contextlib.AsyncExitStack() as stack:
        reader: Readable = source
        for stage in choose_stages(kind):
            reader = await stack.enter_async_context(stage.apply(reader))
        return [p async for p in fixed_parts(reader, lambda n: part, digest)], digest


def joined(parts: list[Part]) -> bytes:
    return b"".join(p.body.getvalue() for p in parts)


@pytest.mark.parametrize("kind", [Compression.NONE, Compression.GZIP, Compression.ZSTD])
@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 3000, 10_007])
async def test_every_part_but_the_last_has_exactly_the_part_size(
    kind: Compression, size: int
) -> None:
    data = payload(size)

    parts, digest = await collect(ChunkedSource(data), 1000, kind)

    assert all(p.size == 1000 for p in parts[:-1])
    assert all(0 < p.size <= 1000 for p in parts)
    assert all(p.size == len(p.body.getvalue()) for p in parts)
    stored = joined(parts)
    assert digest.size == len(stored)
    assert await digest.hexdigest() == hashlib.sha256(stored).hexdigest()
    if kind is Compression.NONE:
        assert stored == data
    elif kind is Compression.GZIP:
        assert gzip.decompress(stored) == data
    else:
        assert zstandard.ZstdDecompressor().decompressobj().decompress(stored) == data


async def test_an_exact_multiple_ends_on_a_full_part_not_an_empty_one() -> None:
    parts, _ = await collect(ChunkedSource(bytes(3000)), 1000, Compression.NONE)
    assert [p.size for p in parts] == [1000, 1000, 1000]


async def test_part_sizes_may_change_between_parts() -> None:
    digest = Digest()
    sizes = {1: 100, 2: 100, 3: 200}
    parts = [
        p async for p in fixed_parts(ChunkedSource(bytes(650)), lambda n: sizes.get(n, 300), digest)
    ]
    assert [p.size for p in parts] == [100, 100, 200, 250]


@pytest.mark.parametrize(
    ("setting", "engine", "tool_can_compress", "plan"),
    [
        (Compression.AUTO, Engine.POSTGRES, True, (True, Compression.NONE)),
        (Compression.AUTO, Engine.MARIADB, False, (False, Compression.ZSTD)),
        (Compression.AUTO, Engine.MYSQL, False, (False, Compression.ZSTD)),
        (Compression.AUTO, Engine.MSSQL, False, (False, Compression.NONE)),
        (Compression.NONE, Engine.POSTGRES, True, (False, Compression.NONE)),
        (Compression.ZSTD, Engine.POSTGRES, True, (False, Compression.ZSTD)),
        (Compression.GZIP, Engine.MARIADB, False, (False, Compression.GZIP)),
    ],
)
def test_compression_plan(
    setting: Compression, engine: Engine, tool_can_compress: bool, plan: tuple[bool, Compression]
) -> None:
    assert plan_compression(setting, engine, tool_can_compress) == plan


async def test_pooled_buffers_return_only_after_both_readers_released_them() -> None:
    data = payload(10_000)
    pool = BufferPool(keep=4)
    digest = Digest()
    held: list[Part] = []

    async for part in fixed_parts(ChunkedSource(data), lambda n: 1000, digest, pool):
        assert all(part.body is not other.body for other in held), (
            "a buffer still in use was reused"
        )
        held.append(part)  # storage has not released any part yet

    assert joined(held) == data
    assert await digest.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_released_buffers_are_reused_without_corrupting_data() -> None:
    data = payload(10_000)
    pool = BufferPool(keep=4)
    digest = Digest()
    seen: list[bytes] = []
    bodies: list[io.BytesIO] = []  # strong references: no id is ever recycled

    async for part in fixed_parts(ChunkedSource(data), lambda n: 1000, digest, pool):
        seen.append(part.body.getvalue())
        bodies.append(part.body)
        part.release()  # storage is done with it at once

    assert b"".join(seen) == data
    assert await digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert len({id(body) for body in bodies}) < len(bodies), "buffers were never reused"


RECIPIENT = "age1hwzyjyf6pyekp84zmu9hddm3ru8hzc9uyg3v283y6uxdr8599gkq44etqw"


@pytest.mark.parametrize(
    ("kind", "recipients", "suffix"),
    [
        (Compression.NONE, (), ""),
        (Compression.GZIP, (), ".gz"),
        (Compression.ZSTD, (), ".zst"),
        (Compression.NONE, (RECIPIENT,), ".age"),
        (Compression.ZSTD, (RECIPIENT,), ".zst.age"),
        (Compression.GZIP, (RECIPIENT, RECIPIENT), ".gz.age"),
    ],
)
def test_stages_compress_before_they_encrypt_and_name_the_key_suffix(
    kind: Compression, recipients: tuple[str, ...], suffix: str
) -> None:
    stages = choose_stages(kind, recipients)

    assert key_suffix(stages) == suffix
    assert bool(recipients) == (bool(stages) and stages[-1].suffix == ".age")  # encryption last


async def test_a_part_is_free_only_once_hashed_and_sent() -> None:
    pool = BufferPool(keep=2)
    freed: list[str] = []
    part = pool.part(pool.take(1000), 1000)

    part.when_free(lambda: freed.append("first"))
    part.release()  # sent
    assert freed == []
    part.release()  # hashed
    assert freed == ["first"]
    part.when_free(lambda: freed.append("late"))  # already free: at once
    assert freed == ["first", "late"]
    assert pool.take(1000) is part.body, "the free buffer is reused"


async def test_cancelling_a_digest_mid_hash_leaves_its_buffer_usable() -> None:
    """A failed dump cancels the hasher while a worker thread still reads the part: no
    BufferError, and the buffer can be resized once the digest settled."""
    body = io.BytesIO(bytes(64 * 1024 * 1024))
    digest = Digest()
    await digest.update(Part(body, 64 * 1024 * 1024))
    pending = digest._pending
    assert pending is not None
    await asyncio.sleep(0.001)

    pending.cancel()
    await digest.settle()

    body.truncate(10)
    assert body.getvalue() == bytes(10)


async def test_the_size_estimate_is_asked_of_the_server_once() -> None:
    asked: list[int] = []

    async def estimate() -> int | None:
        asked.append(1)
        return 123

    once = asked_once(estimate)
    assert [await once(), await once()] == [123, 123]
    assert len(asked) == 1
