"""The read end of a dump tool's stdout, kept drained by a thread of its own.

A dump tool that finds its pipe full stops and waits: every such moment adds to the backup's
wall time. So a thread starts reading the moment the child exists, before backupd has finished
starting (importing the storage client takes a few hundred milliseconds), and keeps reading
while the event loop is busy between two parts.

It reads straight into the buffer the consumer gives to ``fill`` (one copy, kernel to part
buffer). While no ``fill`` is waiting it reads ahead into spare chunks, at most ``read_ahead``
bytes; those are copied into the next buffer. Memory stays bounded: past ``read_ahead`` the
thread waits for the consumer, and the dump waits for the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import os
import threading
import time
from collections import deque
from collections.abc import Callable

from backupd.parts import fill

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1024 * 1024
"""Asked of the kernel; an unprivileged process gets at most /proc/sys/fs/pipe-max-size."""
READ_CHUNK = 1024 * 1024
READ_AHEAD = READ_CHUNK
SMALL_READ = 64 * 1024
PAUSE = 0.001
"""After a read that found less than SMALL_READ bytes, the thread lets the pipe fill for PAUSE
seconds: a dump tool writes 8 KiB at a time, and reading each write as it comes costs both
sides a system call and a wake-up. A 1 MiB pipe takes about 5 ms to fill at 200 MB/s."""

_Deliver = Callable[[int | BaseException], None]


class PipeReader:
    """Reads ``fd`` in a thread from construction on; ``fill`` hands it the next buffer.

    The thread owns the fd: ``close`` asks it to stop, and it closes the fd once it is no longer
    reading it (a reused fd number must never be read). A cancelled ``fill`` leaves the thread
    to finish filling that buffer, which killing the child brings about (EOF).
    """

    def __init__(self, fd: int, read_ahead: int = READ_AHEAD) -> None:
        with contextlib.suppress(OSError):  # a larger pipe absorbs our brief pauses
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
        self.fd = fd
        self.transferred = 0
        """Bytes read from the pipe so far (by the reading thread: a progress signal)."""
        self._limit = read_ahead
        self._changed = threading.Condition()
        self._ahead: deque[tuple[bytearray, int, int]] = deque()  # chunk, start, end
        self._ahead_bytes = 0
        self._spare: list[bytearray] = []
        self._request: tuple[io.BytesIO | bytearray, _Deliver] | None = None
        self._eof = False
        self._error: OSError | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"pipe-{fd}", daemon=True)
        self._thread.start()

    async def fill(self, target: io.BytesIO | bytearray) -> int:
        """Fill ``target``; return how many bytes were read (fewer only at end of stream)."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[int] = loop.create_future()

        def deliver(outcome: int | BaseException) -> None:
            loop.call_soon_threadsafe(_settle, result, outcome)

        with self._changed:
            if self._closing:
                raise ValueError("fill on a closed PipeReader")
            if self._request is not None:
                raise RuntimeError("PipeReader.fill called while another fill is running")
            self._request = (target, deliver)
            self._changed.notify()
        # Shielded: a cancelled caller must not lose track of a thread still filling its buffer.
        return await asyncio.shield(result)

    async def read_all(self) -> bytes:
        chunks = bytearray()
        buffer = bytearray(65536)
        while count := await self.fill(buffer):
            chunks += buffer[:count]
        return bytes(chunks)

    def close(self) -> None:
        """Stop the thread; it closes the fd as soon as it is not reading it."""
        with self._changed:
            self._closing = True
            self._changed.notify()

    # --- the reading thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._step():
                pass
        finally:
            os.close(self.fd)

    def _step(self) -> bool:
        """Serve the waiting ``fill``, or read ahead; False once the thread should stop."""
        with self._changed:
            while not self._closing and self._request is None and self._ahead_full():
                self._changed.wait()
            if self._closing:
                return False
            request = self._request
        if request is None:
            self._read_ahead()
            return True
        target, deliver = request
        try:
            outcome: int | BaseException = fill(target, self._read_into)
        except OSError as error:
            outcome = error
        with self._changed:
            self._request = None
        deliver(outcome)
        return True

    def _ahead_full(self) -> bool:
        return self._eof or self._error is not None or self._ahead_bytes >= self._limit

    def _read_ahead(self) -> None:
        chunk = self._spare.pop() if self._spare else bytearray(READ_CHUNK)
        try:
            count = _read_batched(self.fd, memoryview(chunk))
        except OSError as error:
            count, self._error = 0, error  # raised by the fill that reaches it
        self.transferred += count
        with self._changed:
            if count:
                self._ahead.append((chunk, 0, count))
                self._ahead_bytes += count
            else:
                self._eof = self._error is None
                self._spare.append(chunk)

    def _read_into(self, view: memoryview) -> int:
        """Bytes read ahead first, then the pipe itself; 0 only at end of stream."""
        with self._changed:
            if self._ahead:
                chunk, start, end = self._ahead[0]
                count = min(end - start, len(view))
                view[:count] = memoryview(chunk)[start : start + count]
                self._ahead_bytes -= count
                if start + count == end:
                    self._ahead.popleft()
                    self._spare.append(chunk)
                else:
                    self._ahead[0] = (chunk, start + count, end)
                return count
            if self._error is not None:
                raise self._error
            if self._eof:
                return 0
        count = _read_batched(self.fd, view)
        self.transferred += count
        if count == 0:
            with self._changed:
                self._eof = True
        return count


def _read_batched(fd: int, view: memoryview) -> int:
    """One read; after a small one (with room left), a pause, so that the next finds more."""
    count = os.readv(fd, [view])
    if 0 < count < min(SMALL_READ, len(view)):
        time.sleep(PAUSE)
    return count


def _settle(future: asyncio.Future[int], outcome: int | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
