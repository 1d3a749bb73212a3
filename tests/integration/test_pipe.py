"""The dump's pipe: drained from the start, read ahead within bounds, handed over intact."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import sys

import pytest

from backupd import process
from backupd.pipe import READ_AHEAD, PipeReader
from backupd.process import Command, discard_early, spawn, start_early
from tests.servers import wait_until

MIB = 1024 * 1024
# A child that writes N bytes of a known pattern in 8 KiB writes, like a dump tool.
WRITER = (
    "import sys\n"
    "n = int(sys.argv[1]); block = bytes(range(256)) * 32; out = sys.stdout.buffer\n"
    "while n > 0:\n"
    "    out.write(block[: min(n, len(block))]); n -= len(block)\n"
)


def expected(size: int) -> bytes:
    block = bytes(range(256)) * 32
    return (block * (size // len(block) + 1))[:size]


def writer(size: int) -> Command:
    return Command((sys.executable, "-c", WRITER, str(size)), {"PATH": os.environ["PATH"]})


async def read_parts(reader: PipeReader, part: int) -> bytes:
    data = bytearray()
    while True:
        body = io.BytesIO(bytes(part))
        count = await reader.fill(body)
        data += body.getbuffer()[:count]
        if count < part:
            return bytes(data)


async def test_every_byte_arrives_in_order_across_odd_part_sizes() -> None:
    size = 5 * MIB + 12_345
    async with spawn("writer", writer(size)) as child:
        data = await read_parts(child.stdout, 3 * MIB + 7)
        assert await child.wait() == 0
    assert hashlib.sha256(data).digest() == hashlib.sha256(expected(size)).digest()


async def test_the_pipe_is_drained_before_anyone_asks_but_only_up_to_the_read_ahead() -> None:
    size = 3 * READ_AHEAD
    async with spawn("writer", writer(size)) as child:
        reader = child.stdout

        def ahead() -> int:
            return reader._ahead_bytes

        # Nobody called fill: the thread read on its own.
        await asyncio.to_thread(wait_until, lambda: ahead() >= READ_AHEAD, 30, "read-ahead")
        await asyncio.sleep(0.2)  # time to overrun the bound, if it did not hold
        assert ahead() <= READ_AHEAD + MIB, "read-ahead is bounded"
        assert child.process.returncode is None, "the writer waits for us beyond the bound"
        data = await read_parts(reader, MIB)
        assert await child.wait() == 0
    assert data == expected(size)


async def test_an_early_child_is_taken_over_by_the_spawn_of_an_equal_command() -> None:
    command = writer(MIB)
    await start_early(command)
    async with spawn("writer", writer(MIB)) as adopted, spawn("writer", command) as fresh:
        # The first spawn took the early child over; the second had none left to take.
        first = await read_parts(adopted.stdout, MIB // 2)
        second = await read_parts(fresh.stdout, MIB // 2)
        assert adopted.process.pid != fresh.process.pid
    assert first == second == expected(MIB)
    await discard_early()


async def test_an_early_child_nobody_takes_is_stopped() -> None:
    command = Command((sys.executable, "-c", "import time; time.sleep(60)"), {})
    await start_early(command)
    (pid,) = [child.process.pid for _, child, _ in process._early]
    async with spawn("other", writer(10)) as other:  # a different command takes nothing
        await read_parts(other.stdout, 100)
    async with asyncio.timeout(20):
        await discard_early()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
