"""Bounded reading of a child's stderr, reading a dump's pipe, and the stall guard."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import threading
import time
from pathlib import Path

import pytest

from backupd.process import (
    F_SETPIPE_SZ,
    FIRST_PROBE,
    LONG_WAIT,
    MOST_BETWEEN_PROBES,
    PAUSES,
    PIPE_SIZE,
    SHORT_WAIT,
    Command,
    PausePlan,
    PipeReader,
    StallError,
    StderrTail,
    gather_threshold,
    spawn,
    stall_guard,
)
from backupd.sources.base import command_output


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


def _large_pipe() -> tuple[PipeReader, int]:
    """A reader of a 1 MiB pipe, and the pipe's write end; skips where that is not granted."""
    read_fd, write_fd = os.pipe()
    reader = PipeReader(read_fd)
    if gather_threshold(read_fd) == 0:
        reader.close()
        os.close(write_fd)
        pytest.skip("this system does not grant a 1 MiB pipe")
    return reader, write_fd


async def test_a_cancelled_read_keeps_the_pipe_until_its_thread_ends() -> None:
    read_fd, write_fd = os.pipe()
    reader = PipeReader(read_fd)
    waiting = asyncio.ensure_future(reader.fill(bytearray(16)))
    await asyncio.sleep(0.05)  # the thread now blocks in its read
    waiting.cancel()
    try:
        with pytest.raises(RuntimeError, match="still being read"):
            async with asyncio.timeout(5):  # a second thread would wait for the bytes below
                await reader.fill(bytearray(16))
    finally:
        os.write(write_fd, b"x" * 16)  # the first thread's read returns
        os.close(write_fd)
    await asyncio.gather(waiting, return_exceptions=True)
    count = None
    for _ in range(500):  # until the first thread has returned
        with contextlib.suppress(RuntimeError):
            count = await reader.fill(bytearray(16))
            break
        await asyncio.sleep(0.01)
    reader.close()

    assert count == 0  # the 16 bytes went to the cancelled caller's buffer, and the pipe ended


async def test_a_pipe_written_in_small_pieces_is_read_in_few_large_reads() -> None:
    reader, write_fd = _large_pipe()
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


SHORT, LONG = PAUSES


def _epochs(plan: PausePlan, rates: dict[float, float], count: int) -> list[float]:
    """Feed ``count`` epochs, each at the rate its wait gives; return the wait of each."""
    waits = []
    for _ in range(count):
        waits.append(plan.pause())
        plan.judge(rates[plan.pause()])
    return waits


def test_a_dump_bound_by_its_server_keeps_the_long_wait_and_tries_the_short_less_often() -> None:
    plan = PausePlan(LONG_WAIT)
    waits = _epochs(plan, {SHORT: 100e6, LONG: 105e6}, 80)

    assert waits[0] == LONG
    trials = [index for index, wait in enumerate(waits) if wait == SHORT]
    gaps = [later - earlier - 1 for earlier, later in itertools.pairwise(trials)]
    # The first epoch is not judged; epochs between trials double after each losing one.
    assert trials[0] == 1 + FIRST_PROBE
    assert gaps[:3] == [FIRST_PROBE * 2, FIRST_PROBE * 4, FIRST_PROBE * 8]
    assert max(gaps) == MOST_BETWEEN_PROBES
    assert plan.current == LONG_WAIT


def test_a_writer_held_back_by_the_long_wait_moves_to_the_short_one_and_stays() -> None:
    plan = PausePlan(LONG_WAIT)
    waits = _epochs(plan, {SHORT: 1.5e9, LONG: 0.4e9}, 40)

    # Warm-up, FIRST_PROBE epochs, the trial, the epoch after it: then the short wait.
    switched = 1 + FIRST_PROBE + 2
    assert waits[:switched] == [LONG] * (1 + FIRST_PROBE) + [SHORT, LONG]
    # Now the long wait is the trial, after as many epochs as at the start, and it loses.
    assert waits[switched : switched + FIRST_PROBE + 2] == [SHORT] * FIRST_PROBE + [LONG, SHORT]
    assert plan.current == SHORT_WAIT
    assert waits[switched:].count(LONG) == 4  # trials after 2, 4, 8 and 16 epochs: 31 of 35


def test_a_child_that_is_not_a_dump_starts_on_the_short_wait_and_can_learn_the_long_one() -> None:
    plan = PausePlan(SHORT_WAIT)
    waits = _epochs(plan, {SHORT: 100e6, LONG: 130e6}, 10)

    assert waits[: FIRST_PROBE + 3] == [SHORT] * (FIRST_PROBE + 1) + [LONG, SHORT]
    assert waits[FIRST_PROBE + 3 : 2 * FIRST_PROBE + 3] == [LONG] * FIRST_PROBE
    assert plan.current == LONG_WAIT


def test_a_trial_must_win_clearly_to_replace_the_current_wait() -> None:
    plan = PausePlan(LONG_WAIT)
    _epochs(plan, {SHORT: 104e6, LONG: 100e6}, FIRST_PROBE + 3)  # 4% faster: noise

    assert plan.current == LONG_WAIT


def test_the_first_epoch_is_not_judged() -> None:
    plan = PausePlan(LONG_WAIT)
    for rate in (30e6, 100e6, 100e6, 120e6, 100e6):  # a slow start, then the trial wins 20%
        plan.judge(rate)
    assert plan.current == SHORT_WAIT
    # Counted, the slow start would have made the trial's 20% a 60% win; here it is the same.
    slow = PausePlan(LONG_WAIT)
    for rate in (30e6, 100e6, 100e6, 105e6, 100e6):
        slow.judge(rate)
    assert slow.current == LONG_WAIT


def test_a_trial_is_measured_against_the_current_wait_on_both_sides_of_it() -> None:
    plan = PausePlan(LONG_WAIT)
    plan.judge(50e6)  # the warm-up
    plan.judge(120e6)
    plan.judge(80e6)  # mean 100e6: against this last epoch alone, 115e6 would be a clear win
    assert plan.trial
    plan.judge(115e6)
    assert plan.current == LONG_WAIT and plan.trial_rate == 115e6
    plan.judge(120e6)  # the dump sped up: the current wait moved 110e6 around the trial

    assert plan.current == LONG_WAIT
    assert plan.trial_rate is None and not plan.trial


def test_a_trial_after_a_long_window_is_compared_with_the_epochs_next_to_it() -> None:
    plan = PausePlan(LONG_WAIT, warming=False, between=16, until_trial=16)
    for epoch in range(16):  # a dump speeding up 4% an epoch, on the long wait throughout
        plan.judge(100e6 * 1.04**epoch)
    assert plan.trial
    plan.judge(100e6 * 1.04**16)  # the trial: no faster than the trend
    plan.judge(100e6 * 1.04**17)

    # Against the mean of all 16 epochs before it (and the one after), it would have won 3%.
    assert plan.current == LONG_WAIT


def test_the_plan_judges_epochs_by_bytes_over_time() -> None:
    plan = PausePlan(epoch_bytes=1000)
    for at in range(10):
        plan.record(100, 10.0 + at * 0.1)  # the warm-up epoch: not judged
    assert plan.mean_rate == 0 and not plan.warming
    for at in range(10):
        plan.record(100, 11.0 + at * 0.1)  # 1,000 bytes over 1.0 s, from the warm-up's end
    assert plan.mean_rate == pytest.approx(1000 / 1.0)
    plan.record(500, 12.4)
    assert plan.mean_rate == pytest.approx(1000 / 1.0)  # the epoch is not full yet
    plan.record(500, 12.9)  # the next epoch: 1,000 bytes over 1.0 s
    assert plan.mean_rate == pytest.approx(1000 / 1.0)
    assert plan.trial  # two epochs after the warm-up: the next one is the trial
    plan.record(1000, 13.4)  # 1,000 bytes over 0.5 s
    assert plan.trial_rate == pytest.approx(1000 / 0.5)


class _JudgedPlan(PausePlan):
    """Records each judged epoch's rate, and each wait with the epoch it fell in."""

    def __init__(self, epoch_bytes: int) -> None:
        super().__init__(LONG_WAIT, epoch_bytes=epoch_bytes)
        self.rates: list[float] = []
        self.waits: list[tuple[int, float]] = []

    def judge(self, rate: float) -> None:
        self.rates.append(rate)
        super().judge(rate)

    def pause(self) -> float:
        wait = super().pause()
        self.waits.append((len(self.rates), wait))
        return wait


async def test_the_reader_judges_every_epoch_and_waits_as_its_plan_says() -> None:
    reader, write_fd = _large_pipe()
    plan = reader.plan = _JudgedPlan(epoch_bytes=2 << 20)
    pieces = [bytes([n % 251]) * 8192 for n in range(4096)]  # 32 MiB, 8 KiB at a time
    writer = threading.Thread(target=_write_slowly, args=(write_fd, pieces))
    writer.start()
    target = bytearray(8 << 20)
    total = 0
    try:
        while count := await reader.fill(target):
            total += count
    finally:
        writer.join()
        reader.close()

    assert total == 32 << 20
    # An epoch closes at the read that takes it to 2 MiB; a read takes at most the pipe (1 MiB).
    assert 32 // 3 <= len(plan.rates) <= 32 // 2
    # A writer slower than the reader leaves short reads, each followed by the plan's wait:
    # the long one in the warm-up and the two epochs after, the short one in the fourth (the
    # first trial).
    first = [wait for epoch, wait in plan.waits if epoch <= FIRST_PROBE]
    trial = [wait for epoch, wait in plan.waits if epoch == FIRST_PROBE + 1]
    assert first and set(first) == {LONG}
    assert trial and set(trial) == {SHORT}


async def test_a_dump_tool_starts_on_the_long_wait_any_other_child_on_the_short_one() -> None:
    async with command_output(Command(("printf", "x")), lambda _: None) as dump:
        assert isinstance(dump, PipeReader)
        assert dump.plan.pause() == LONG
        assert await dump.read_all() == b"x"
    async with spawn("printf", Command(("printf", "y"))) as child:
        assert child.stdout.plan.pause() == SHORT
        assert await child.stdout.read_all() == b"y"
        assert await child.wait() == 0
