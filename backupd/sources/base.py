"""The contract every database engine module fulfils."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from backupd.errors import DumpError
from backupd.parts import Readable, fill
from backupd.process import LONG_WAIT, Command, describe_status, spawn
from backupd.sources.session import DumpSession

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from backupd.catalogue import Backup


@dataclass(frozen=True)
class ServerInfo:
    """What a successful login tells us about the server and the local dump tool."""

    server_version: str
    tool_version: str
    superuser: bool = False


class ScriptFilter(Protocol):
    """Rewrites a dump on its way into the restore tool, fed chunk by chunk."""

    def feed(self, data: bytes) -> bytes:
        """The bytes of ``data`` (with what was held back before) that are ready to go on."""
        ...

    def flush(self) -> bytes:
        """At the end of the dump: whatever is still held back."""
        ...


@dataclass(frozen=True)
class RestoreTool:
    """How one backup goes back into a database: the restore tool's command (reading the
    dump on stdin), and ``rewrite`` where the dump needs changes on its way in (None: it is
    loaded byte for byte)."""

    command: Command
    rewrite: ScriptFilter | None = None


class BackupSource(Protocol):
    """What every engine offers the backup pipeline, which knows no engine beyond this."""

    extension: str
    """File extension of the raw dump, e.g. ``.dump``, ``.sql`` or ``.bak``."""

    can_compress: bool
    """Whether the dump tool compresses by itself (pg_dump's custom format does)."""

    restores_atomically: bool
    """Whether a failed restore leaves the database as it was (pg_restore in one transaction);
    where not, an existing database is touched only after the object was verified whole."""

    async def probe(self) -> ServerInfo:
        """Log in, read the server version, check the dump tool. Raise ConnectError/DumpError."""
        ...

    async def list_databases(self) -> list[str]:
        """Every database worth backing up (``DB_DATABASE=*``): no templates or system schemas."""
        ...

    async def estimated_size(self, database: str) -> int | None:
        """About how many bytes ``database`` holds (for progress, and R2's part size), or None
        if unknown."""
        ...

    def open_dump(
        self, database: str, native_compression: bool, snapshot: str | None = None
    ) -> AbstractAsyncContextManager[Readable]:
        """The backup of ``database`` as a byte source; ``snapshot`` is one ``dump_session``
        exported for the dump to share.

        Leaving the block after reading to end of stream checks that the backup succeeded
        (the dump tool's exit status) and raises ``DumpError`` otherwise; leaving it any way at
        all releases what the backup held (the child killed and reaped, a ``.bak`` deleted).
        """
        ...

    def dump_session(
        self, database: str, lock_wait: float | None = None
    ) -> AbstractAsyncContextManager[DumpSession]:
        """Open for the whole dump: a client session counting every table's rows as the dump
        sees them (see the engine module for how exact that is), or nothing to count. It waits
        at most ``lock_wait`` seconds (None: as the server's defaults) for any table lock, so
        a locked table cannot hold a backup beyond RESTORE_STALL_TIMEOUT."""
        ...

    def open_globals(self, info: ServerInfo) -> AbstractAsyncContextManager[Readable] | None:
        """For ``DB_DATABASE=*``: server-wide objects (roles, ...) as a byte source, if any."""
        ...

    async def database_properties(self, database: str) -> dict[str, Any]:
        """Database-level settings the dump does not carry into another name (encoding,
        locale, defaults, comment), as JSON data for the manifest; ``{}`` when the backup
        carries them itself. Raise DumpError when the database does not exist."""
        ...


class Source(BackupSource, Protocol):
    """One database engine that dumps to a pipe: how to log in, dump and restore."""

    async def database_exists(self, database: str) -> bool:
        """Whether the server has ``database``. Raise ConnectError when the login fails."""
        ...

    def globals_command(self, info: ServerInfo) -> Command | None:
        """For ``DB_DATABASE=*``: a dump of server-wide objects (roles, ...), if any."""
        ...

    async def dump_command(
        self, database: str, native_compression: bool, snapshot: str | None = None
    ) -> Command:
        """The dump tool's command: the dump goes to stdout, secrets never into argv.

        Async because the argv depends on the installed tool's flavour (Oracle's mysqldump
        takes options MariaDB's rejects): it is built only once ``--version`` has answered.
        """
        ...

    async def count_rows(self, database: str) -> list[dict[str, Any]]:
        """Every table of ``database`` with its row count, as ``DumpSession.count`` gives."""
        ...

    def explain_failure(self, stderr: str) -> str | None:
        """A human hint for a known failure in the tool's stderr, if any."""
        ...

    # --- restore -------------------------------------------------------------------------

    async def database_state(self, database: str) -> str:
        """``"missing"``, ``"empty"`` or ``"in use"`` (holds anything its restore would
        replace: tables, views, sequences, routines, events)."""
        ...

    async def create_database(self, database: str, properties: dict[str, Any]) -> list[str]:
        """Create ``database`` with the recorded ``properties`` that must exist from the start
        (encoding, locale, character set). Return one line per property the server could not
        take (the database is then created without it)."""
        ...

    async def apply_properties(self, database: str, properties: dict[str, Any]) -> list[str]:
        """After the restore: the recorded defaults and comment. Return one line per property
        that could not be applied."""
        ...

    async def drop_database(self, database: str) -> None: ...

    async def statement_limit(self) -> int | None:
        """The longest line of this engine's dump (bytes) the server takes as one statement,
        for a dump of SQL text whose statements of rows are one line each (MySQL/MariaDB:
        max_allowed_packet), so that a restore can refuse a dump it would fail on before it
        changes anything; None where the engine's restore has no such limit or it cannot be
        read."""
        ...

    async def restore_tool(
        self, backup: Backup, database: str, *, in_one_transaction: bool = True
    ) -> RestoreTool:
        """How ``backup`` (a dump of this engine's format) is loaded into ``database``, which
        exists. With ``in_one_transaction`` false, a database this restore created (and drops
        again on failure) is loaded without one transaction where the engine offers it. What
        the manifest records decides the rest (PostgreSQL: whether the owners are kept;
        MySQL/MariaDB: which statements name the database). Raise QueryError when the server
        cannot be asked what it needs to decide."""
        ...


@runtime_checkable
class FileSource(BackupSource, Protocol):
    """An engine whose server writes the backup file itself (SQL Server) into a shared folder."""

    def explain_failure(self, stderr: str) -> str | None: ...

    def paths(self, name: str) -> tuple[str, Path]:
        """The file as the server names it, and as backupd opens it."""
        ...

    async def backup_to_file(
        self, database: str, server_path: str, native_compression: bool
    ) -> None:
        """Have the server write a backup of ``database`` to ``server_path``."""
        ...

    async def database_state(self, database: str) -> str: ...

    async def restore_from_file(self, server_path: str, database: str, replace: bool) -> None: ...


@contextlib.asynccontextmanager
async def command_output(
    command: Command, explain: Callable[[str], str | None]
) -> AsyncIterator[Readable]:
    """The stdout of ``command`` (a dump tool); see ``BackupSource.open_dump``.

    ``explain`` turns the tool's stderr into a hint for a known failure, if any.
    """
    # A dump tool reads a server: letting it block on its pipe batches those reads (PAUSES).
    async with spawn(command.program, command, wait=LONG_WAIT) as child:
        yield child.stdout
        code = await child.wait()
        if code != 0:
            stderr = child.stderr_text()
            hint = explain(stderr)
            raise DumpError(
                f"{f'{hint}: ' if hint else ''}{child.name} exited with status "
                f"{describe_status(code)}: {stderr or 'no output'}"
            )


class FileReader:
    """A file read into the caller's buffers in a worker thread (SQL Server's .bak)."""

    def __init__(self, handle: io.BufferedReader) -> None:
        self._handle = handle

    async def fill(self, target: io.BytesIO | bytearray) -> int:
        return await asyncio.to_thread(self._fill, target)

    def _fill(self, target: io.BytesIO | bytearray) -> int:
        return fill(target, self._handle.readinto)


@contextlib.asynccontextmanager
async def deleted_afterwards(path: Path) -> AsyncIterator[None]:
    """``path``, a file on SQL Server's shared volume, is deleted however the block ends,
    cancellation included. A file that cannot be deleted (a volume backupd may read but not
    write) fails the block with a line naming MSSQL_LOCAL_DIR, never taken for the storage's
    error; when the block failed already, the line is logged and the block's own error raised."""
    try:
        yield
    except BaseException:
        if (problem := await _delete(path)) is not None:
            log.error("%s", problem)
        raise
    if (problem := await _delete(path)) is not None:
        raise DumpError(problem)


async def _delete(path: Path) -> str | None:
    try:
        await asyncio.shield(asyncio.to_thread(path.unlink, missing_ok=True))
    except OSError as error:
        if not await asyncio.to_thread(os.path.lexists, path):
            return None  # never made: a read-only volume refuses even to look for it
        return (
            f"cannot delete {path} from MSSQL_LOCAL_DIR: {error.strerror or error}; backupd "
            "must be able to delete files there, or every backup leaves its .bak behind"
        )
    return None


def login_settings(stderr: str, causes: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The variables a refused login points at: those of the first of ``causes`` (a phrase of
    the client's error) that ``stderr`` holds; none when it holds none of them."""
    return next((settings for phrase, settings in causes.items() if phrase in stderr), ())
