"""age encryption in the stream, with the stock ``age`` command as a child process.

backupd never implements cryptography: it runs age (https://age-encryption.org/v1), so every
stored object is a standard age file that ``age -d -i key.txt`` decrypts without backupd. The
backup side holds only recipients (public keys); the identity (the secret key) is needed by
``backupd restore`` alone, and only age reads it: backupd passes the file's name, never its
contents, and the name is not a secret.

Recipients are read and checked in ``recipients.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import os
import shutil
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from backupd.errors import BackupdError
from backupd.parts import Readable
from backupd.process import (
    F_SETPIPE_SZ,
    PIPE_SIZE,
    Child,
    Command,
    PipeReader,
    child_environment,
    describe_status,
    run_captured,
    spawn,
)

SUFFIX = ".age"
CHUNK = 1024 * 1024
SPLICE_CHUNK = 1024 * 1024
_NO_MATCH = "no identity matched"
_NO_TERMINAL = ("failed to obtain passphrase", "failed to decrypt identity file")
"""age's words for an identity it needs a passphrase for: an SSH key, or an identity file that
``age -p`` encrypted (a passphrase-protected age identity)."""


class EncryptError(BackupdError):
    """age is missing, refused a recipient or failed while encrypting."""

    step = "encrypt"


class DecryptError(BackupdError):
    """age failed while decrypting (a damaged object, a missing identity file, ...)."""

    step = "restore"


class WrongIdentity(DecryptError):
    """None of the identities in the file matches a recipient of the object."""


def encrypt_argv(recipients: Sequence[str]) -> tuple[str, ...]:
    """``age --encrypt -r R1 -r R2 ...``: recipients are public, so argv is fine for them."""
    argv = ["age", "--encrypt"]
    for recipient in recipients:
        argv += ["--recipient", recipient]
    return tuple(argv)


def decrypt_argv(identity: Path) -> tuple[str, ...]:
    """``age --decrypt --identity FILE``: the file's name, never its contents."""
    return ("age", "--decrypt", "--identity", str(identity))


def decrypt_problem(stderr: str, identity: Path, key: str) -> str:
    """One line for a person from age's stderr when decryption failed."""
    if _NO_MATCH in stderr:
        return f"none of the identities in {identity} can decrypt {key}"
    if _needs_passphrase(stderr):
        return (
            f"{identity} is protected by a passphrase, which backupd cannot type in (age runs "
            "without a terminal); decrypt it into a file only you can read and give that"
        )
    if (reason := _identity_file_reason(stderr, identity)) is not None:
        return f"cannot use {identity} as an age identity file: {reason}"
    return f"age could not decrypt {key}: {stderr or 'no output'}"


def decrypt_error(stderr: str, identity: Path, key: str) -> DecryptError:
    """``WrongIdentity`` when the failure is the identity file's (no match, unreadable, not an
    identity, passphrase-protected: age finds these before it reads the payload), else
    ``DecryptError`` (damage, which the checksum also finds); ``decrypt_problem``'s text."""
    problem = decrypt_problem(stderr, identity, key)
    identity_trouble = _NO_MATCH in stderr or _needs_passphrase(stderr)
    if identity_trouble or _identity_file_reason(stderr, identity) is not None:
        return WrongIdentity(problem)
    return DecryptError(problem)


def _needs_passphrase(stderr: str) -> bool:
    return any(words in stderr for words in _NO_TERMINAL)


def _identity_file_reason(stderr: str, identity: Path) -> str | None:
    """age's reason for refusing the identity file (``reading "FILE": REASON``), or None."""
    marker = f'reading "{identity}": '
    if marker not in stderr:
        return None
    reason = stderr.split(marker, 1)[1].split(" | ", 1)[0]
    return reason.removeprefix(f'failed to read "{identity}": ') or "unreadable"


# --- the child process -------------------------------------------------------------------------


def _require_age(error: type[BackupdError]) -> None:
    if shutil.which("age") is None:
        raise error("age not found on PATH: install it (Debian and Ubuntu: apt-get install age)")


class _PipeWriter:
    """The write end of a child's stdin, written from a worker thread (one copy, no buffering
    in the event loop). Closing waits for a write in flight: a reused fd is never written."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._writing: asyncio.Future[Any] | None = None
        self._closed = False

    async def write(self, data: memoryview | bytes) -> None:
        loop = asyncio.get_running_loop()
        self._writing = loop.run_in_executor(None, _write_all, self.fd, data)
        self._writing.add_done_callback(_retrieve)  # a caller cancelled meanwhile never will
        await asyncio.shield(self._writing)

    async def splice_from(self, fd: int, moved: Callable[[int], None]) -> None:
        """Move everything from the pipe ``fd`` into this one inside the kernel (no copy
        through backupd) until end of stream, telling ``moved`` each count as it goes (from
        the worker thread).

        The thread works on a duplicate of ``fd``, closed when it ends, so the owner may close
        its own ``fd`` at any time.
        """
        source = os.dup(fd)
        loop = asyncio.get_running_loop()
        moving = loop.run_in_executor(None, _splice_all, source, self.fd, moved)
        moving.add_done_callback(_retrieve)
        self._writing = moving
        await asyncio.shield(moving)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writing is not None and not self._writing.done():
            self._writing.add_done_callback(lambda _: os.close(self.fd))
        else:
            os.close(self.fd)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a worker's outcome as seen: after a cancellation, its error (a broken pipe from a
    killed child) is expected and must not be logged as never retrieved."""
    if not future.cancelled():
        future.exception()


def _splice_all(source: int, target: int, moved: Callable[[int], None]) -> None:
    try:
        while count := os.splice(source, target, SPLICE_CHUNK):
            moved(count)
    finally:
        os.close(source)


def _write_all(fd: int, data: memoryview | bytes) -> None:
    with memoryview(data) as view:
        while view:
            view = view[os.write(fd, view) :]


@contextlib.asynccontextmanager
async def _age(argv: tuple[str, ...]) -> AsyncIterator[tuple[Child, _PipeWriter]]:
    """age with a stdin we feed and a stdout we drain, in its own process group; killed and
    reaped however the block ends."""
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):  # a larger pipe, as for a dump's stdout
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_SIZE)
    writer = _PipeWriter(write_fd)
    try:
        async with spawn("age", Command(argv, child_environment({})), stdin=read_fd) as child:
            os.close(read_fd)
            read_fd = -1
            yield child, writer
    finally:
        if read_fd >= 0:
            os.close(read_fd)
        writer.close()


class Encrypt:
    """The encryption stage: the bytes, encrypted to every recipient by ``age``.

    A feeder task moves the source into age's stdin while the caller reads age's stdout, so
    neither pipe can fill up and block the other. A dump tool's pipe is spliced into age's in
    the kernel (as ``pg_dump | age`` would be); other sources are copied. ``size`` counts the
    bytes encrypted.
    """

    suffix = SUFFIX

    def __init__(self, recipients: Sequence[str]) -> None:
        self.recipients = tuple(recipients)
        self.size = 0

    @contextlib.asynccontextmanager
    async def apply(self, source: Readable) -> AsyncIterator[Readable]:
        _require_age(EncryptError)
        async with _age(encrypt_argv(self.recipients)) as (child, writer):
            feeder = asyncio.create_task(self._feed(source, writer), name="age-feed")
            try:
                yield child.stdout
                code = await child.wait()
                if code != 0:
                    raise EncryptError(
                        f"age exited with status {describe_status(code)}: "
                        f"{child.stderr_text() or 'no output'}"
                    )
                await feeder  # the source's own error, if it failed
            finally:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)

    def facts(self) -> dict[str, Any]:
        """The manifest's ``encryption``: the format, the recipients (public keys, never an
        identity) and ``plaintext_size``, the bytes before encryption. The manifest's own
        ``sha256`` and ``size`` are those of the stored, encrypted bytes."""
        return {
            "encryption": {
                "format": "age",
                "recipients": list(self.recipients),
                "plaintext_size": self.size,
            }
        }

    def _count(self, moved: int) -> None:
        self.size += moved  # from one thread at a time: a progress signal while splicing

    async def _feed(self, source: Readable, writer: _PipeWriter) -> None:
        """Everything from ``source`` into age, then end of input. On a source error, age still
        gets end of input, so the reader is never left waiting."""
        try:
            if isinstance(source, PipeReader) and hasattr(os, "splice"):
                await writer.splice_from(source.fd, self._count)
                return
            chunk = bytearray(CHUNK)
            while count := await source.fill(chunk):
                self.size += count
                await writer.write(memoryview(chunk)[:count])
        except BrokenPipeError:
            pass  # age exited early; its exit status and stderr tell why
        finally:
            writer.close()


class _Bytes:
    """A small in-memory byte source."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    async def fill(self, target: io.BytesIO | bytearray) -> int:
        with target.getbuffer() if isinstance(target, io.BytesIO) else memoryview(target) as view:
            count = min(len(view), len(self._data))
            view[:count] = self._data[:count]
            self._data = self._data[count:]
            return count


async def _encrypted_probe(recipients: Sequence[str]) -> bytes:
    """A few bytes encrypted to every recipient, as a backup is (an age file, ~200 bytes per
    recipient). Raises ``EncryptError`` when age is missing or refuses a recipient."""
    stage = Encrypt(recipients)
    output = bytearray(64 * 1024)
    collected = bytearray()
    async with stage.apply(_Bytes(b"backupd encryption probe\n")) as encrypted:
        while count := await encrypted.fill(output):
            collected += output[:count]
    return bytes(collected)


async def probe(recipients: Sequence[str], identity: Path | None = None) -> str:
    """Encrypt a few bytes to every recipient, as a backup would, and decrypt them with
    ``identity`` when given (what restores and drills use); return what was checked.

    Raises ``EncryptError`` when age is missing or refuses a recipient, ``DecryptError``
    (``WrongIdentity``) when the identity file cannot decrypt what is encrypted now.
    """
    encrypted = await _encrypted_probe(recipients)
    if identity is not None:
        await probe_identity(identity, encrypted)
    code, version, _ = await run_captured(
        "age", Command(("age", "--version"), child_environment({}))
    )
    said = f"age {version.strip() if code == 0 else '?'} encrypts to {len(recipients)} recipient(s)"
    return said + (f"; {identity} decrypts it" if identity is not None else "")


async def probe_identity(identity: Path, encrypted: bytes | None = None) -> None:
    """Check that the identity file ``identity`` (ENCRYPTION_IDENTITY_FILE) is one age can
    use and, given ``encrypted`` (an age file), that it decrypts it.

    Raises ``DecryptError`` naming ENCRYPTION_IDENTITY_FILE: missing, unreadable, no age,
    or (``WrongIdentity``) none of its identities matches, a public key, a passphrase.
    """
    identity_for(SUFFIX, identity, "ENCRYPTION_IDENTITY_FILE")
    if encrypted is None:
        return

    async def chunks() -> AsyncIterator[bytes]:
        yield encrypted

    what = "a probe encrypted to ENCRYPTION_RECIPIENTS"
    try:
        await check_identity(chunks(), identity, what)
    except WrongIdentity as error:
        raise WrongIdentity(
            f"ENCRYPTION_IDENTITY_FILE: {error}: restores and drills of new backups will fail"
        ) from None


async def is_recipient(identity: Path, recipients: Sequence[str]) -> bool:
    """Whether the public key of the age identity file ``identity`` (``age-keygen -y``, given
    the file's name, never its contents) is one of ``recipients``; False when it cannot be
    told (no age-keygen, an SSH or passphrase-protected identity, an unreadable file)."""
    if shutil.which("age-keygen") is None:
        return False
    command = Command(("age-keygen", "-y", str(identity)), child_environment({}))
    code, out, _ = await run_captured("age-keygen", command)
    return code == 0 and any(line.strip() in recipients for line in out.splitlines() if line)


def is_encrypted(key: str) -> bool:
    """Whether the object ``key`` names is an age file (backupd's keys end in ``.age``)."""
    return key.endswith(SUFFIX)


def without_suffix(key: str) -> str:
    """``x.sql.zst.age`` → ``x.sql.zst``: what decryption gives back."""
    return key.removesuffix(SUFFIX)


def identity_for(key: str, identity: Path | None, named: str = "--identity") -> Path | None:
    """The identity file to decrypt ``key`` with: None for an unencrypted object. ``named`` is
    where the file was given (``--identity`` or ``ENCRYPTION_IDENTITY_FILE``), for the message.

    Raises ``DecryptError`` for an encrypted object without a readable identity file, or
    without age to decrypt it.
    """
    if not is_encrypted(key):
        return None
    if identity is None:
        raise DecryptError(
            f"{key} is encrypted: give the age identity file of one of its recipients with "
            "--identity FILE (or ENCRYPTION_IDENTITY_FILE)"
        )
    if not identity.exists():
        raise DecryptError(f"the identity file {identity} ({named}) does not exist")
    if not os.access(identity, os.R_OK) or not identity.is_file():
        raise DecryptError(f"cannot read the identity file {identity} ({named})")
    _require_age(DecryptError)
    return identity


async def check_identity(chunks: AsyncIterator[bytes], identity: Path, key: str) -> None:
    """Raise ``WrongIdentity`` when ``identity`` cannot decrypt the age file arriving as
    ``chunks``: no identity in it matches a recipient, or age cannot use the file (unreadable,
    a public key, passphrase-protected); ``DecryptError`` when age fails otherwise before its
    first plaintext (not installed, a plugin that cannot start, damage: a caller that has not
    checked the bytes yet tells damage apart by the checksum).

    Reads only until age writes its first plaintext (age reads the identities and checks them
    against the header first), so it costs little more than the header's download.
    """
    decryption = Decryption(chunks, identity, key)
    async with decryption, contextlib.aclosing(decryption.plaintext()) as plain:
        async for _ in plain:
            break


class Decryption:
    """``age --decrypt`` over an age file arriving as ``chunks``, as an async context manager.

    A feeder task is the only reader of ``chunks``: it writes them to age's stdin while the
    caller reads ``plaintext()``, so neither pipe can block the other. Leaving the block kills
    and reaps age however it ends.
    """

    def __init__(self, chunks: AsyncIterator[bytes], identity: Path, key: str) -> None:
        self._chunks = chunks
        self._identity = identity
        self._key = key
        self._stack = contextlib.AsyncExitStack()
        self._child: Child | None = None
        self._feeder: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Decryption:
        _require_age(DecryptError)
        async with contextlib.AsyncExitStack() as stack:
            child, writer = await stack.enter_async_context(_age(decrypt_argv(self._identity)))
            self._feeder = asyncio.create_task(self._feed(writer), name="age-feed")
            stack.push_async_callback(_settle, self._feeder)
            self._child, self._stack = child, stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def plaintext(self) -> AsyncGenerator[bytes, None]:
        """The decrypted bytes. Raises ``DecryptError`` at the end if age failed (one line:
        "none of the identities in FILE can decrypt KEY" for an identity that does not match,
        which age finds from the header, before any plaintext)."""
        assert self._child is not None and self._feeder is not None
        buffer = bytearray(CHUNK)
        while count := await self._child.stdout.fill(buffer):
            yield bytes(buffer[:count])
        code = await self._child.wait()
        if code != 0:
            raise decrypt_error(self._child.stderr_text(), self._identity, self._key)
        await self._feeder  # a download error, if there was one

    async def finish_input(self) -> None:
        """Stop decrypting and let the rest of ``chunks`` flow through the feeder unwritten (so
        that a caller hashing them sees every byte); return once all are read."""
        assert self._child is not None and self._feeder is not None
        await self._child.kill()  # a write in flight fails at once; the feeder reads on
        await self._feeder

    async def _feed(self, writer: _PipeWriter) -> None:
        writing = True
        try:
            async for chunk in self._chunks:
                if writing:
                    try:
                        await writer.write(chunk)
                    except BrokenPipeError:
                        writing = False  # age stopped; its exit status says why
                        writer.close()
        finally:
            writer.close()


async def _settle(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
