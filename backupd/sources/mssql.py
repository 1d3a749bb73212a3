"""SQL Server: native ``BACKUP DATABASE`` into a ``.bak`` on a volume shared with the server.

SQL Server writes the file itself, so this engine cannot stream from a pipe: backupd asks for
the backup with ``sqlcmd`` (password in ``SQLCMDPASSWORD``, never argv), then streams the file
from ``MSSQL_LOCAL_DIR``, the same directory as backupd sees it, and the caller deletes it.
``COPY_ONLY`` keeps the user's own differential backup chain intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ntpath
import posixpath
import secrets
import shutil
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

from backupd.catalogue import safe_name, stem_for
from backupd.config import MSSQLConfig, TargetConfig
from backupd.errors import ConnectError, DumpError
from backupd.parts import Readable
from backupd.process import Command, child_environment, run_captured
from backupd.sources.base import FileReader, ServerInfo, deleted_afterwards
from backupd.sources.session import DumpSession, no_session
from backupd.units import human_size

log = logging.getLogger(__name__)

MAX_NAME = 128
ACCESS_HINT = (
    "SQL Server could not write to {dir} (MSSQL_BACKUP_DIR): the shared volume must be "
    "writable by the SQL Server process (user mssql, UID 10001, in Microsoft's images) and "
    "readable and deletable by backupd"
)


class RestoreFailed(DumpError):
    step = "restore"


def check_name(database: str) -> None:
    if not database or len(database) > MAX_NAME or any(ord(c) < 32 for c in database):
        raise DumpError(f"{database!r} is not a usable SQL Server database name")


def bracket(name: str) -> str:
    """A T-SQL identifier: ``]`` doubled inside brackets."""
    check_name(name)
    return "[" + name.replace("]", "]]") + "]"


def literal(text: str) -> str:
    """A T-SQL Unicode string literal: ``'`` doubled."""
    return "N'" + text.replace("'", "''") + "'"


def backup_statement(database: str, path: str, compression: bool) -> str:
    options = "COPY_ONLY, CHECKSUM, INIT, FORMAT" + (", COMPRESSION" if compression else "")
    return f"BACKUP DATABASE {bracket(database)} TO DISK = {literal(path)} WITH {options}"


def restore_statement(database: str, path: str, moves: list[tuple[str, str]], replace: bool) -> str:
    clauses = [f"MOVE {literal(logical)} TO {literal(physical)}" for logical, physical in moves]
    clauses += ["CHECKSUM", "RECOVERY"] + (["REPLACE"] if replace else [])
    source = f"FROM DISK = {literal(path)}"
    return f"RESTORE DATABASE {bracket(database)} {source} WITH {', '.join(clauses)}"


def moved_files(files: list[tuple[str, str]], database: str) -> list[tuple[str, str]]:
    """New physical names beside the old ones, so a restore under a new name never collides."""
    moves = []
    for logical, physical in files:
        paths = ntpath if "\\" in physical else posixpath
        folder, name = paths.split(physical)
        extension = paths.splitext(name)[1]
        moves.append(
            (logical, paths.join(folder, f"{safe_name(database)}_{safe_name(logical)}{extension}"))
        )
    return moves


def sqlcmd_argv(target: TargetConfig, query: str) -> tuple[str, ...]:
    db = target.database
    argv = [
        "sqlcmd",
        "-S",
        f"tcp:{db.host},{db.effective_port}",
        "-U",
        db.user,
        "-d",
        "master",
        "-b",
    ]
    argv += ["-h", "-1", "-W", "-s", "|", "-Q", query]
    if target.mssql.trust_server_certificate:
        argv.append("-C")
    return tuple(argv)


def sqlcmd_env(target: TargetConfig) -> dict[str, str]:
    password = target.database.password
    return child_environment({"SQLCMDPASSWORD": password.get_secret_value()} if password else {})


def bak_name(database: str, when: datetime) -> str:
    """A fresh name on the shared volume: two backups never write the same file."""
    return f"{stem_for(database)}_{when:%Y%m%d_%H%M%S}_{secrets.token_hex(4)}.bak"


def explain(output: str, config: MSSQLConfig) -> str | None:
    if "Operating system error 5" in output or "Access is denied" in output:
        return ACCESS_HINT.format(dir=config.backup_dir)
    if "Login failed" in output or "Login timeout" in output or "TCP Provider" in output:
        return "cannot log in to SQL Server"
    if "Msg 3201" in output:
        return f"SQL Server cannot open a backup file in {config.backup_dir} (MSSQL_BACKUP_DIR)"
    return None


class MSSQLSource:
    extension = ".bak"
    can_compress = True
    restores_atomically = True  # the .bak is verified whole before the server reads it

    def __init__(self, target: TargetConfig) -> None:
        self.target = target
        self.config = target.mssql

    async def _sqlcmd(
        self, query: str, step: type[DumpError] = DumpError, timeout: float = 30.0
    ) -> list[str]:
        command = Command(sqlcmd_argv(self.target, query), sqlcmd_env(self.target))
        code, out, err = await run_captured("sqlcmd", command, timeout=timeout)
        if code != 0:
            said = " | ".join(
                line.strip() for line in (out + "\n" + err).splitlines() if line.strip()
            )[-2000:]
            hint = explain(said, self.config)
            where = f"{self.target.database.host}:{self.target.database.effective_port}"
            error = ConnectError if hint == "cannot log in to SQL Server" else step
            prefix = f"{hint}: " if hint else ""
            raise error(f"{prefix}sqlcmd at {where} exited {code}: {said or 'no output'}")
        return [line.strip() for line in out.splitlines() if line.strip()]

    async def probe(self) -> ServerInfo:
        if shutil.which("sqlcmd") is None:
            raise DumpError("sqlcmd not found on PATH: install mssql-tools18 (or go-sqlcmd)")
        rows = await self._sqlcmd("SET NOCOUNT ON; SELECT @@VERSION")
        tool = await run_captured("sqlcmd", Command(("sqlcmd", "-?"), child_environment({})))
        version = next((line for line in tool[1].splitlines() if "Version" in line), "sqlcmd")
        return ServerInfo(server_version=rows[0] if rows else "?", tool_version=version.strip())

    async def list_databases(self) -> list[str]:
        return await self._sqlcmd(
            "SET NOCOUNT ON; SELECT name FROM sys.databases"
            " WHERE database_id > 4 AND state = 0 ORDER BY name"
        )

    def explain_failure(self, stderr: str) -> str | None:
        return explain(stderr, self.config)

    def paths(self, name: str) -> tuple[str, Path]:
        """The file as the server names it, and as backupd opens it."""
        return posixpath.join(self.config.backup_dir, name), self.config.effective_local_dir / name

    async def check_space(self, database: str) -> None:
        """Refuse a backup that cannot fit on the shared volume, when the server reports a size."""
        rows = await self._sqlcmd(
            "SET NOCOUNT ON; SELECT CAST(SUM(CAST(size AS bigint)) * 8192 AS bigint)"
            f" FROM sys.master_files WHERE database_id = DB_ID({literal(database)}) AND type = 0"
        )
        folder = self.config.effective_local_dir
        with contextlib.suppress(ValueError, IndexError):
            size = int(rows[0])
            needed = size // 4 if self.config.compression else size
            try:
                free = (await asyncio.to_thread(shutil.disk_usage, folder)).free
            except OSError as error:
                raise DumpError(
                    f"MSSQL_LOCAL_DIR {folder}: {error.strerror or error}; it must be the "
                    "directory MSSQL_BACKUP_DIR names, as backupd sees it"
                ) from None
            if free < needed:
                raise DumpError(
                    f"MSSQL_LOCAL_DIR {folder} has {human_size(free)} free; the backup "
                    f"of {database} needs about {human_size(needed)} (data files of "
                    f"{human_size(size)})"
                )

    async def backup_to_file(
        self, database: str, server_path: str, native_compression: bool
    ) -> None:
        check_name(database)
        await self.check_space(database)
        statement = backup_statement(
            database, server_path, native_compression and self.config.compression
        )
        await self._sqlcmd(statement, timeout=24 * 3600)

    def dump_session(
        self, database: str, lock_wait: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[DumpSession]:
        """SQL Server's backups record no row counts."""
        return no_session()

    @contextlib.asynccontextmanager
    async def open_dump(
        self, database: str, native_compression: bool, snapshot: str | None = None
    ) -> AsyncIterator[Readable]:
        """Have the server write a ``.bak`` to the shared volume and read it from there; the
        file is deleted however the block ends, cancellation included."""
        now = datetime.now(self.target.layout.tz)
        server_path, local_path = self.paths(bak_name(database, now))
        log.debug("SQL Server writes %s to %s", database, server_path)
        async with deleted_afterwards(local_path):
            await self.backup_to_file(database, server_path, native_compression)
            if not await asyncio.to_thread(local_path.is_file):
                raise DumpError(
                    f"the server reported a backup, but {local_path} does not exist: "
                    "MSSQL_LOCAL_DIR must be the directory MSSQL_BACKUP_DIR names, as backupd "
                    "sees it"
                )
            async with self._opened(local_path) as reader:
                yield reader

    @contextlib.asynccontextmanager
    async def _opened(self, local_path: Path) -> AsyncIterator[FileReader]:
        """The .bak to read; one the server left unreadable to backupd fails naming
        MSSQL_LOCAL_DIR, never as the storage's error or an unexpected one."""
        try:
            handle = await asyncio.to_thread(local_path.open, "rb")
        except OSError as error:
            raise DumpError(
                f"cannot read {local_path} from MSSQL_LOCAL_DIR: {error.strerror or error}; "
                "the server's .bak files must be readable and deletable by backupd"
            ) from None
        with handle:
            yield FileReader(handle)

    def open_globals(self, info: ServerInfo) -> None:
        return None

    async def database_properties(self, database: str) -> dict[str, Any]:
        return {}  # a .bak carries the database's settings itself

    # --- restore -------------------------------------------------------------------------

    async def estimated_size(self, database: str) -> int | None:
        """Not estimated: the server writes the backup file itself."""
        return None

    async def database_state(self, database: str) -> str:
        rows = await self._sqlcmd(
            f"SET NOCOUNT ON; SELECT COUNT(*) FROM sys.databases WHERE name = {literal(database)}"
        )
        return "missing" if rows == ["0"] else "in use"

    async def restore_from_file(self, server_path: str, database: str, replace: bool) -> None:
        listing = await self._sqlcmd(
            f"RESTORE FILELISTONLY FROM DISK = {literal(server_path)}", RestoreFailed
        )
        files = [(row.split("|")[0], row.split("|")[1]) for row in listing if row.count("|") >= 2]
        if not files:
            raise RestoreFailed(f"RESTORE FILELISTONLY listed no files in {server_path}")
        statement = restore_statement(database, server_path, moved_files(files, database), replace)
        await self._sqlcmd(statement, RestoreFailed, timeout=24 * 3600)
