"""Bounded reading of a child's stderr, reading a dump's pipe, and the stall guard."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from backupd.process import (
    F_SETPIPE_SZ,
    PIPE_SIZE,
    PipeReader,
    StallError,
    StderrTail,
    gather_threshold,
    stall_guard,
)


def test_a_line_longer_than_any_buffer_keeps_only_its_head() -> None:
    tail = StderrTail(lines=3, chars=50)
    message = b"ERROR 1153 (08S01) at line 25: Got a packet bigger than 'max_allowed_packet'"
    statement = b" INSERT INTO wide VALUES (1,0x" + b"AB" * 2_000_000
    for offset in range(0, len(message + statement), 65536):
        tail.feed((message + statement)[offset : offset + 65536])
    tail.feed(b"\nlast words\n")
    tail.close()

    first, second = list(tail.lines)
    assert first.startswith("ERROR 1153 (08S01) at line 25")
    assert len(first) < 100
    assert first.endswith(f"({len(message + statement):,} bytes)")
    assert second == "last words"


def test_only_the_last_lines_are_kept() -> None:
    tail = StderrTail(lines=2, chars=100)
    tail.feed(b"one\ntwo\nthree\nfo")
    tail.feed(b"ur")
    tail.close()
    assert list(tail.lines) == ["three", "four"]


async def test_the_stall_guard_stops_a_block_that_moves_no_data() -> None:
    moved = [0]
    with pytest.raises(StallError, match=r"dump moved no data for 0s"):
        async with stall_guard(lambda: moved[0], 0.2, "dump"):
            await asyncio.sleep(30)


async def test_the_stall_guard_lets_a_slow_but_moving_block_finish() -> None:
    moved = [0]
    async with stall_guard(lambda: moved[0], 0.3, "dump"):
        for _ in range(10):
            moved[0] += 1
            await asyncio.sleep(0.1)
    assert moved[0] == 10


async def test_the_stall_guard_passes_an_outside_cancellation_through() -> None:
    async def guarded() -> None:
        async with stall_guard(lambda: 0, 5, "dump"):
            await asyncio.sleep(30)

    task = asyncio.ensure_future(guarded())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _write_slowly(fd: int, pieces: list[bytes]) -> None:
    """pg_dump's way: 8 KiB writes with a little work between them."""
    try:
        for piece in pieces:
            os.write(fd, piece)
            time.sleep(0.0001)
    finally:
        os.close(fd)


async def test_a_pipe_written_in_small_pieces_is_read_in_few_large_reads() -> None:
    read_fd, write_fd = os.pipe()
    reader = PipeReader(read_fd)
    if gather_threshold(read_fd) == 0:
        reader.close()
        os.close(write_fd)
        pytest.skip("this system does not grant a 1 MiB pipe")
    pieces = [bytes([n % 251]) * 8192 for n in range(600)]
    writer = threading.Thread(target=_write_slowly, args=(write_fd, pieces))
    writer.start()
    target = bytearray(8 * 1024 * 1024)
    try:
        count = await reader.fill(target)
    finally:
        writer.join()
        reader.close()

    assert target[:count] == b"".join(pieces)
    assert reader.transferred == count
    # Woken for every write, the reader would make about one read per piece.
    assert reader.reads < len(pieces) / 4


def test_only_a_large_pipe_is_read_with_waits(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    try:
        assert gather_threshold(read_fd) == 0  # the default 64 KiB pipe: never wait
        fcntl.fcntl(read_fd, F_SETPIPE_SZ, PIPE_SIZE)
        assert gather_threshold(read_fd) == PIPE_SIZE // 4
    finally:
        os.close(read_fd)
        os.close(write_fd)
    with (tmp_path / "file").open("wb") as file:
        assert gather_threshold(file.fileno()) == 0
