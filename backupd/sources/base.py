"""The contract every database engine module fulfils."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from backupd.process import Command


@dataclass(frozen=True)
class ServerInfo:
    """What a successful login tells us about the server and the local dump tool."""

    server_version: str
    tool_version: str
    superuser: bool = False


class Source(Protocol):
    """One database engine: how to log in, how to dump, what the dump is called."""

    extension: str
    """File extension of the raw dump, e.g. ``.dump`` or ``.sql``."""

    can_compress: bool
    """Whether the dump tool compresses by itself (pg_dump's custom format does)."""

    async def probe(self) -> ServerInfo:
        """Log in, read the server version, check the dump tool. Raise ConnectError/DumpError."""
        ...

    async def list_databases(self) -> list[str]:
        """Every database worth backing up (``DB_DATABASE=*``): no templates or system schemas."""
        ...

    async def estimated_size(self, database: str) -> int | None:
        """About how many bytes ``database`` holds (for progress), or None if unknown."""
        ...

    def globals_command(self, info: ServerInfo) -> Command | None:
        """For ``DB_DATABASE=*``: a dump of server-wide objects (roles, ...), if any."""
        ...

    async def dump_command(self, database: str, native_compression: bool) -> Command:
        """The dump tool's command: the dump goes to stdout, secrets never into argv.

        Async because the argv depends on the installed tool's flavour (Oracle's mysqldump
        takes options MariaDB's rejects): it is built only once ``--version`` has answered.
        """
        ...

    async def database_properties(self, database: str) -> dict[str, Any]:
        """Database-level settings the dump does not carry into another name (encoding,
        locale, defaults, comment), as JSON data for the manifest. Raise DumpError when the
        database does not exist."""
        ...

    def explain_failure(self, stderr: str) -> str | None:
        """A human hint for a known failure in the tool's stderr, if any."""
        ...

    # --- restore -------------------------------------------------------------------------

    async def database_state(self, database: str) -> str:
        """``"missing"``, ``"empty"`` or ``"in use"`` (holds tables, views or routines)."""
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

    def restore_command(self, database: str) -> Command:
        """The restore tool, reading a dump of this engine's format on stdin."""
        ...


@runtime_checkable
class FileSource(Protocol):
    """An engine whose server writes the backup file itself (SQL Server) into a shared folder."""

    extension: str
    can_compress: bool

    async def probe(self) -> ServerInfo: ...

    async def list_databases(self) -> list[str]: ...

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
