"""PostgreSQL: ``pg_dump --format=custom`` to stdout.

Connection parameters, the database name included, travel in libpq's ``PG*`` environment
variables: the password never reaches argv, and a database name containing ``=`` is never
mistaken for a connection string.
"""

from __future__ import annotations

import asyncio
import re

from backupd.config import DatabaseConfig
from backupd.errors import BackupdError, ConnectError, DumpError
from backupd.process import Command, child_environment, run_captured
from backupd.sources.base import ServerInfo

_VERSION = re.compile(r"(\d+)(?:\.(\d+))?")
_MISMATCH = re.compile(r"server version: ([\d.]+)[^;]*; pg_dump version: ([\d.]+)")
_CONNECT_FAILURES = (
    "password authentication failed",
    "could not connect",
    "connection to server",
    "could not translate host name",
    "no password supplied",
    "does not exist",
    "timeout expired",
    "pg_hba.conf",
)


def libpq_env(config: DatabaseConfig, database: str) -> dict[str, str]:
    """libpq's environment for one database; holds the password, so never log it."""
    env = {
        "PGHOST": config.host,
        "PGPORT": str(config.effective_port),
        "PGUSER": config.user,
        "PGDATABASE": database,
        "PGAPPNAME": "backupd",
        "PGCONNECT_TIMEOUT": "10",
    }
    if config.password is not None:
        env["PGPASSWORD"] = config.password.get_secret_value()
    return env


def pg_dump_argv(native_compression: bool) -> tuple[str, ...]:
    argv = ["pg_dump", "--format=custom", "--no-password"]
    if not native_compression:
        argv.append("--compress=0")
    return tuple(argv)


def tool_version_of(output: str) -> str:
    """``'pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)'`` → ``'15.19'``."""
    match = re.search(r"\(PostgreSQL\)\s+(\S+)", output)
    return match.group(1) if match else output.strip()


def pg_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def pg_identifier(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def pg_restore_argv(database: str) -> tuple[str, ...]:
    """All or nothing (one transaction); the name goes in a conninfo, so ``=`` is harmless."""
    conninfo = "dbname=" + "'" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return (
        "pg_restore",
        "--no-owner",
        "--exit-on-error",
        "--single-transaction",
        "--no-password",
        f"--dbname={conninfo}",
    )


def pg_dumpall_globals_argv(superuser: bool) -> tuple[str, ...]:
    """Roles and tablespaces. Without superuser rights, pg_authid (passwords) is unreadable."""
    argv = ["pg_dumpall", "--globals-only", "--no-password"]
    if not superuser:
        argv.append("--no-role-passwords")
    return tuple(argv)


def major_version(version: str) -> int:
    """``'15.19 (Debian ...)'`` → 15; ``'9.6.24'`` → 9 (the old scheme has two-part majors)."""
    match = _VERSION.search(version)
    if match is None:
        raise ValueError(f"no version number in {version!r}")
    return int(match.group(1))


def version_problem(server_version: str, tool_version: str) -> str | None:
    """Say which client is needed when pg_dump is older than the server, else None."""
    server, tool = major_version(server_version), major_version(tool_version)
    if tool >= server:
        return None
    return (
        f"pg_dump {tool_version} cannot dump a PostgreSQL {server_version} server: "
        f"install the PostgreSQL {server} client tools or newer (postgresql-client-{server})"
    )


class PostgresSource:
    extension = ".dump"
    can_compress = True

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config

    def _env(self, database: str) -> dict[str, str]:
        return child_environment(libpq_env(self.config, database))

    @property
    def _login_database(self) -> str:
        """Where the probe logs in: the first database named, or ``postgres`` for ``*``."""
        return (self.config.databases or ("postgres",))[0]

    async def _query(self, sql: str, database: str | None = None) -> list[str]:
        """Rows of a one-column query, as text; raise ConnectError when the login fails."""
        argv = ("psql", "--no-psqlrc", "--no-password", "-At", "--record-separator-zero", "-c", sql)
        where = database if database is not None else self._login_database
        code, out, err = await run_captured("psql", Command(argv, self._env(where)))
        if code != 0:
            raise ConnectError(
                f"cannot log in to PostgreSQL at {self._where()}: {err or f'psql exited {code}'}"
            )
        return [row for row in out.split("\0") if row]

    async def probe(self) -> ServerInfo:
        query = (
            "SELECT current_setting('server_version') || '|' || "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)::text"
        )
        version = Command(("pg_dump", "--version"), self._env(""))
        rows, (tool_code, tool_out, tool_err) = await asyncio.gather(
            self._query(query), run_captured("pg_dump", version)
        )
        if tool_code != 0:
            raise DumpError(f"pg_dump --version failed: {tool_err}")
        server_version, _, superuser = rows[0].strip().rpartition("|")
        tool_version = tool_version_of(tool_out)
        problem = version_problem(server_version, tool_version)
        if problem is not None:
            raise DumpError(problem)
        return ServerInfo(server_version, f"pg_dump {tool_version}", superuser == "true")

    async def list_databases(self) -> list[str]:
        return await self._query(
            "SELECT datname FROM pg_database"
            " WHERE datallowconn AND NOT datistemplate ORDER BY datname"
        )

    async def estimated_size(self, database: str) -> int | None:
        """``pg_database_size`` in bytes: tables, indexes and free space, so a dump is usually
        smaller; None when it cannot be read (no CONNECT privilege, ...)."""
        try:
            rows = await self._query(f"SELECT pg_database_size({pg_literal(database)})", "postgres")
        except BackupdError:
            return None
        return int(rows[0]) if rows and rows[0].isdigit() else None

    def globals_command(self, info: ServerInfo) -> Command:
        return Command(pg_dumpall_globals_argv(info.superuser), self._env("postgres"))

    def dump_command(self, database: str, native_compression: bool) -> Command:
        return Command(pg_dump_argv(native_compression), self._env(database))

    def explain_failure(self, stderr: str) -> str | None:
        mismatch = _MISMATCH.search(stderr)
        if mismatch is not None:
            return version_problem(mismatch.group(1), mismatch.group(2))
        if any(marker in stderr for marker in _CONNECT_FAILURES):
            return f"cannot log in to PostgreSQL at {self._where()}"
        return None

    def _where(self) -> str:
        return f"{self.config.host}:{self.config.effective_port} as {self.config.user}"

    async def database_state(self, database: str) -> str:
        found = await self._query(
            f"SELECT 1 FROM pg_database WHERE datname = {pg_literal(database)}", "postgres"
        )
        if not found:
            return "missing"
        objects = await self._query(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%'",
            database,
        )
        return "empty" if objects == ["0"] else "in use"

    async def create_database(self, database: str) -> None:
        await self._query(f"CREATE DATABASE {pg_identifier(database)}", "postgres")

    async def drop_database(self, database: str) -> None:
        await self._query(
            f"DROP DATABASE IF EXISTS {pg_identifier(database)} WITH (FORCE)", "postgres"
        )

    def restore_command(self, database: str) -> Command:
        return Command(pg_restore_argv(database), self._env(database))
