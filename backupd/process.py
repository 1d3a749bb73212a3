"""Child processes: exec (never a shell), own process group, secrets off argv, stderr kept.

A ``Command`` is data built by pure functions in ``sources/``. ``spawn`` runs it as an async
context manager: however the block ends (error, cancellation), the child's whole process group
is killed and reaped, so no dump outlives the backup that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import logging
import os
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath

from backupd.errors import BackupdError, DumpError
from backupd.parts import fill

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20
STDERR_LINE_CHARS = 2000
"""Of a longer stderr line (the mysql client echoes a whole failed statement) only the head is
kept: the error message comes first."""
STDERR_READ = 65536
KILL_GRACE_SECONDS = 5.0
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
PIPE_SIZE = 1024 * 1024
SHORT_WAIT, LONG_WAIT = 0, 1
PAUSES = (0.001, 0.006)
"""The two waits (seconds) a reader of a large pipe chooses between after a short read, indexed
by ``SHORT_WAIT`` and ``LONG_WAIT``.

pg_dump writes 8 KiB at a time; a reader that is always waiting is woken for each write: some
70,000 reads and as many thread switches, in both processes, for a 600 MiB dump. Waiting after
a read of under a quarter of the pipe gathers those writes into ~2,800 reads of ~200 KiB.

With the short wait (1 ms) a reader of a 1 MiB pipe kept up with a writer of 8 KiB pieces from
memory at 1.2-1.6 GiB/s (measured). The long one (6 ms) lets the pipe fill, so that a dump tool
blocks on it for a while: pg_dump then finds the server's rows waiting in its socket and takes
them in large batches instead of being woken for each message. On 2 cores that cut pg_dump's
CPU by a quarter; a 1.9 GiB dump took 11.89 s with the long wait and 12.48 s with the short one,
against 11.81 s for ``pg_dump > /dev/null`` (3 interleaved rounds on ``bench/``'s scene). But it
held that writer from memory to about 0.6 GiB/s: ``PausePlan`` measures which wait moves more.
Dump tools start on the long wait, every other child (age, a restore's tools) on the short one."""
EPOCH_BYTES = 64 * 1024 * 1024
"""Bytes read with one wait before its rate is judged (a few tenths of a second of dump)."""
FIRST_PROBE = 2
"""Epochs with the current wait before the other one is tried for an epoch (after the first,
unjudged epoch of a stream, and after a trial that wins); after a trial that loses, twice as
many (up to ``MOST_BETWEEN_PROBES``). Also how many epochs before a trial it is compared with."""
MOST_BETWEEN_PROBES = 16
"""The most epochs read with the current wait between two trials."""
SWITCH_GAIN = 1.10
"""How much faster (rate ratio) a trial must be than the current wait around it to replace it:
dumps vary in speed from table to table, and a tie keeps the wait in use."""
# Variables a dump tool may need from our own environment. Everything else, notably the
# storage and mail secrets backupd holds, stays out of the child's environment.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER")


@dataclass(frozen=True)
class Command:
    """What to exec. ``env`` may hold secrets: never log it.

    ``pipe_file`` is delivered through an inherited pipe: the runner inserts
    ``pipe_file_flag + "/dev/fd/N"`` as the first argument after the program.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    pipe_file: bytes | None = field(default=None, repr=False)
    pipe_file_flag: str = ""

    @property
    def program(self) -> str:
        """The program's name as people know it (``pg_dump``), even when run by its path."""
        return PurePath(self.argv[0]).name

    def final_argv(self, secret_fd: int | None) -> list[str]:
        if secret_fd is None:
            return list(self.argv)
        return [self.argv[0], f"{self.pipe_file_flag}/dev/fd/{secret_fd}", *self.argv[1:]]


def child_environment(
    extra: Mapping[str, str], parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A minimal environment for a child: a few inherited basics plus ``extra``."""
    source = os.environ if parent is None else parent
    env = {name: source[name] for name in INHERITED_ENV if name in source}
    env.update(extra)
    return env


MIN_MASKED_LENGTH = 4


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""What stops backupd cleanly: SIGTERM (a container's stop), SIGINT (Ctrl-C) and SIGHUP (the
terminal or SSH session closed). backupd has no reload: restart it to read a new config."""


def mask(text: str, secrets: list[str]) -> str:
    """Replace every occurrence of each secret in ``text``.

    Secrets shorter than four characters are left alone: masking every ``a`` in a message
    would destroy it, and a secret that short is no protection anyway.
    """
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_MASKED_LENGTH:
            text = text.replace(secret, "******")
    return text


class PipeReader:
    """The read end of a child's stdout, read straight into the caller's buffer.

    Each ``fill`` runs a blocking read loop in a worker thread: one copy, kernel to
    destination, and no event-loop wake-up per pipe write (pg_dump writes 8 KiB at a time).
    A cancelled caller leaves the thread to finish at EOF, which killing the child brings.
    """

    def __init__(self, fd: int, plan: PausePlan | None = None) -> None:
        with contextlib.suppress(OSError):  # fewer, larger reads (see ``PAUSES``)
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
        self.fd = fd
        self.transferred = 0
        """Bytes read so far (updated by the reading thread: a progress signal)."""
        self.reads = 0
        """Read system calls made so far (a statistic, updated by the reading thread)."""
        self._gather_below = gather_threshold(fd)
        self.plan = plan if plan is not None else PausePlan(SHORT_WAIT)
        """Which wait follows a short read; learnt while reading (see ``PAUSES``)."""
        self._closed = False
        self._reading: asyncio.Future[int] | None = None

    async def fill(self, target: io.BytesIO | bytearray) -> int:
        """Fill ``target``; return how many bytes were read (fewer only at end of stream).

        Raises RuntimeError while the read of a cancelled earlier call is still running: two
        threads reading one pipe would split the stream between two buffers.
        """
        if self._reading is not None and not self._reading.done():
            raise RuntimeError("the pipe is still being read for an earlier call")
        loop = asyncio.get_running_loop()
        self._reading = loop.run_in_executor(None, fill, target, self._read_into)
        # Shielded: a cancelled caller must not lose track of a thread still reading the fd.
        return await asyncio.shield(self._reading)

    async def read_all(self) -> bytes:
        chunks = bytearray()
        buffer = bytearray(65536)
        while count := await self.fill(buffer):
            chunks += buffer[:count]
        return bytes(chunks)

    def close(self) -> None:
        """Close the fd, once no thread reads it: a reused fd number must never be read."""
        if self._closed:
            return
        self._closed = True
        if self._reading is not None and not self._reading.done():
            self._reading.add_done_callback(lambda _: os.close(self.fd))
        else:
            os.close(self.fd)

    def _read_into(self, view: memoryview) -> int:
        count = os.readv(self.fd, [view])
        self.transferred += count
        self.reads += 1
        if self._gather_below:
            self.plan.record(count, time.monotonic())
            if 0 < count < self._gather_below <= len(view) - count:
                time.sleep(self.plan.pause())  # in the reading thread, never the event loop
        return count


def gather_threshold(fd: int) -> int:
    """A read of fewer bytes than this from pipe ``fd`` is followed by a wait (``PAUSES``),
    when the caller's buffer has at least this much room left: a quarter of the pipe's capacity,
    or 0 (never wait) for a pipe smaller than ``PIPE_SIZE`` (we could not enlarge it, and the
    short wait's rate with a 1 MiB pipe is what ``PAUSES`` was measured with), or for anything
    but a pipe."""
    try:
        capacity = fcntl.fcntl(fd, F_GETPIPE_SZ)
    except OSError:
        return 0
    return capacity // 4 if capacity >= PIPE_SIZE else 0


@dataclass
class PausePlan:
    """Which of ``PAUSES`` a pipe reader waits after a short read, chosen by measured rate.

    It starts with ``current``. The stream is judged in epochs of ``epoch_bytes``; the first
    epoch is not judged (it holds the start of the dump, and of backupd beside it). After
    ``FIRST_PROBE`` more, one epoch is read with the other wait (a trial) and the next with the
    current one again. The trial's wait replaces the current one if its epoch moved bytes
    ``SWITCH_GAIN`` times faster than the current wait did around it: the average of the mean
    rate of the ``FIRST_PROBE`` epochs just before it and the rate of the epoch after. Epochs on
    both sides, near it, cancel most of a dump's speeding up or slowing down meanwhile (a row
    count beside it ending, a larger table starting): judged against the epochs before it alone,
    the first of them included, such a drift switched a 1.9 GiB dump to the short wait, on which
    it ran 4% slower than on the long one (``bench/``'s scene). A losing trial doubles the epochs
    until the next. A writer held back by the long wait is thus on the short one after five
    epochs (320 MiB), and a dump bound by its server keeps the long one. An epoch's time
    includes any time the consumer spent elsewhere (sending, compressing): the same for both
    waits. ``record`` and ``pause`` are called by the one thread reading the pipe at a time;
    times are ``time.monotonic()`` seconds.
    """

    current: int = LONG_WAIT
    """Index into ``PAUSES`` of the wait in use."""
    epoch_bytes: int = EPOCH_BYTES
    warming: bool = True
    """The first epoch is still being read (it is not judged)."""
    trial: bool = False
    between: int = FIRST_PROBE
    until_trial: int = FIRST_PROBE
    recent: list[float] = field(default_factory=list)
    """Bytes per second of the last ``FIRST_PROBE`` epochs read with the current wait since the
    last trial, oldest first."""
    trial_rate: float | None = None
    """The rate of the last trial, while the epoch after it is read."""
    _bytes: int = 0
    _since: float | None = None

    @property
    def mean_rate(self) -> float:
        """Bytes per second of ``recent`` on average; 0 before any."""
        return sum(self.recent) / len(self.recent) if self.recent else 0.0

    def pause(self) -> float:
        """Seconds to wait after a short read."""
        index = 1 - self.current if self.trial else self.current
        return PAUSES[index]

    def record(self, count: int, now: float) -> None:
        """``count`` bytes were read at ``now``; close the epoch once it holds ``epoch_bytes``."""
        if self._since is None:
            self._since = now
        self._bytes += count
        if self._bytes >= self.epoch_bytes:
            self.judge(self._bytes / max(now - self._since, 1e-6))
            self._bytes, self._since = 0, now

    def judge(self, rate: float) -> None:
        """Take the rate (bytes per second) of the epoch just read."""
        if self.warming:
            self.warming = False
            return
        if self.trial:
            self.trial, self.trial_rate = False, rate
            return
        if self.trial_rate is not None:
            around = (self.mean_rate + rate) / 2
            won = self.trial_rate > around * SWITCH_GAIN
            self.trial_rate, self.recent = None, []
            if won:
                self.current = 1 - self.current
                self.between = self.until_trial = FIRST_PROBE
                return  # this epoch was read with the wait just left
            self.between = self.until_trial = min(self.between * 2, MOST_BETWEEN_PROBES)
        self.recent = [*self.recent, rate][-FIRST_PROBE:]
        self.until_trial -= 1
        self.trial = self.until_trial <= 0


class StderrTail:
    """The last lines a child wrote to stderr, each cut to its first ``STDERR_LINE_CHARS``:
    memory stays bounded whatever the child writes, and however long a line is."""

    def __init__(self, lines: int = STDERR_TAIL_LINES, chars: int = STDERR_LINE_CHARS) -> None:
        self.lines: deque[str] = deque(maxlen=lines)
        self._chars = chars
        self._current = bytearray()
        self._dropped = 0

    def feed(self, data: bytes) -> list[str]:
        """Take a chunk; return the lines it completed."""
        done = []
        for index, piece in enumerate(data.split(b"\n")):
            if index:
                done.append(self._finish_line())
            room = self._chars * 4 - len(self._current)  # bytes; up to 4 per character
            self._current += piece[: max(room, 0)]
            self._dropped += max(len(piece) - max(room, 0), 0)
        return done

    def close(self) -> None:
        if self._current or self._dropped:
            self._finish_line()

    def _finish_line(self) -> str:
        text = self._current.decode("utf-8", "replace").rstrip()
        if len(text) > self._chars or self._dropped:
            text = f"{text[: self._chars]}… ({len(self._current) + self._dropped:,} bytes)"
        self._current, self._dropped = bytearray(), 0
        self.lines.append(text)
        return text


class Child:
    """A running child process whose stderr is drained concurrently into a tail buffer."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, stdout: PipeReader) -> None:
        self.name = name
        self.process = process
        self.stdout = stdout
        self.tail = StderrTail()
        self._stderr_task = asyncio.create_task(self._drain_stderr(), name=f"{name}-stderr")

    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self.process.stdin is not None
        return self.process.stdin

    def stderr_text(self) -> str:
        return " | ".join(line for line in self.tail.lines if line)

    async def _drain_stderr(self) -> None:
        """Read stderr to its end in bounded chunks: never by line, which a line longer than
        the reader's limit would kill, leaving the child blocked on a full pipe."""
        stream = self.process.stderr
        if stream is None:
            return
        while chunk := await stream.read(STDERR_READ):
            for text in self.tail.feed(chunk):
                log.debug("%s: %s", self.name, text)
        self.tail.close()

    async def wait(self) -> int:
        """Wait for exit and for stderr to be fully read; return the exit status."""
        code = await self.process.wait()
        await self._stderr_task
        return code

    async def kill(self) -> None:
        """Terminate the whole process group, escalate to SIGKILL, and reap."""
        if self.process.returncode is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), KILL_GRACE_SECONDS)
            except TimeoutError:
                _signal_group(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        # Stragglers the child forked keep the group alive; make sure none survive.
        _signal_group(self.process.pid, signal.SIGKILL)
        self._stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._stderr_task
        self.stdout.close()


class StallError(BackupdError):
    """A child moved no bytes for longer than ``RESTORE_STALL_TIMEOUT``."""

    step = "stall"


@contextlib.asynccontextmanager
async def stall_guard(
    progress: Callable[[], int], timeout: float, what: str
) -> AsyncIterator[None]:
    """Fail the block with StallError when ``progress()`` (a byte count) stops growing for
    ``timeout`` seconds: the block is cancelled, so its children are killed and its upload
    aborted like on any failure. ``timeout`` 0 turns the guard off."""
    if timeout <= 0:
        yield
        return
    task = asyncio.current_task()
    assert task is not None
    stalled = False

    async def watch() -> None:
        nonlocal stalled
        loop = asyncio.get_running_loop()
        last, since = progress(), loop.time()
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            if (now := progress()) != last:
                last, since = now, loop.time()
            elif loop.time() - since >= timeout:
                stalled = True
                task.cancel()
                return

    watcher = asyncio.create_task(watch(), name=f"stall-guard {what}")
    try:
        yield
    except asyncio.CancelledError:
        if stalled and task.uncancel() == 0:
            raise StallError(
                f"{what} moved no data for {timeout:.0f}s (RESTORE_STALL_TIMEOUT); gave up"
            ) from None
        raise
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def describe_status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"{-code} (killed by {signal.Signals(-code).name})"
    return str(code)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@contextlib.asynccontextmanager
async def spawn(
    name: str,
    command: Command,
    *,
    stdin: int | None = asyncio.subprocess.DEVNULL,
    wait: int = SHORT_WAIT,
) -> AsyncIterator[Child]:
    """Start ``command`` in its own session; kill and reap its group when the block ends.

    ``wait``: which of ``PAUSES`` the reader of its stdout starts with (``LONG_WAIT`` for a
    dump tool reading a database server)."""
    secret_fd = _secret_pipe(command.pipe_file) if command.pipe_file is not None else None
    stdout_read, stdout_write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *command.final_argv(secret_fd),
            stdin=stdin,
            stdout=stdout_write,
            stderr=asyncio.subprocess.PIPE,
            env=dict(command.env),
            start_new_session=True,
            pass_fds=(secret_fd,) if secret_fd is not None else (),
        )
    except BaseException as error:
        os.close(stdout_read)
        program = command.program
        if isinstance(error, FileNotFoundError):
            raise DumpError(f"{program} not found on PATH: install it, or fix PATH") from None
        if isinstance(error, PermissionError):
            raise DumpError(f"{program} is not executable") from None
        raise
    finally:
        os.close(stdout_write)
        if secret_fd is not None:
            os.close(secret_fd)
    child = Child(name, process, PipeReader(stdout_read, PausePlan(wait)))
    try:
        yield child
    finally:
        await asyncio.shield(child.kill())


def _secret_pipe(payload: bytes) -> int:
    """A pipe whose read end yields ``payload`` then EOF; return the read end."""
    if len(payload) >= 65536:
        raise BackupdError("secret file too large for a pipe")
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, payload)
    finally:
        os.close(write_fd)
    return read_fd


async def run_captured(name: str, command: Command, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run a short command to completion; return (status, stdout, stderr tail)."""
    async with spawn(name, command) as child:
        try:
            async with asyncio.timeout(timeout):
                out = await child.stdout.read_all()
                code = await child.wait()
        except TimeoutError:
            raise BackupdError(f"{name} did not answer within {timeout:.0f}s") from None
        return code, out.decode("utf-8", "replace"), child.stderr_text()
