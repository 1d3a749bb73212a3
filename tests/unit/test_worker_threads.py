"""Reads blocked on silent dumps never hold up the other backups' work."""

from __future__ import annotations

import asyncio
import os

from backupd import cli
from backupd.config import MAX_CONCURRENT_LIMIT
from backupd.process import PipeReader


def test_many_silent_dumps_do_not_starve_a_busy_one() -> None:
    # More reads blocked at once than asyncio's default executor has threads on any machine
    # (at most 32), and fewer than backupd's own bound.
    silent_count = 40
    assert silent_count < cli.THREADS_PER_BACKUP * MAX_CONCURRENT_LIMIT

    async def command() -> int:
        silent = [os.pipe() for _ in range(silent_count)]
        readers = [PipeReader(read_fd) for read_fd, _ in silent]
        waiting = [asyncio.ensure_future(reader.fill(bytearray(16))) for reader in readers]
        busy_read, busy_write = os.pipe()
        busy = PipeReader(busy_read)
        try:
            os.write(busy_write, b"a dump that moves")
            return await asyncio.wait_for(busy.fill(bytearray(17)), 10)
        finally:
            for _, write_fd in silent:
                os.close(write_fd)  # end of stream: every blocked read returns
            os.close(busy_write)
            await asyncio.gather(*waiting)
            for reader in [*readers, busy]:
                reader.close()

    assert cli.run_cancellable(command()) == 17
