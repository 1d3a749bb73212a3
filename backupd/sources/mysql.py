"""MySQL and MariaDB: ``mysqldump``/``mariadb-dump`` to stdout.

The password travels in a ``[client]`` option file that exists only as an inherited pipe
(``--defaults-extra-file=/dev/fd/N``): it touches neither argv nor disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backupd.config import DatabaseConfig, Engine, SSLMode
from backupd.errors import BackupdError, ConnectError, DumpError, QueryError
from backupd.parts import Readable
from backupd.process import Command, child_environment, run_captured
from backupd.sources.base import RestoreTool, ServerInfo, command_output, login_settings
from backupd.sources.mysql_script import DatabaseStatementFilter
from backupd.sources.session import DumpSession, client_session, parse_counts

if TYPE_CHECKING:
    from backupd.catalogue import Backup

log = logging.getLogger(__name__)

# The largest packet a client accepts (MySQL's and MariaDB's limit): a row the server took is
# never refused by the dump tool on the way out (its default is 24 MiB) nor by the client on
# the way back in (16 MiB).
MAX_ALLOWED_PACKET = 1024 * 1024 * 1024
# Every client backupd starts talks utf8mb4, whatever the locale: left to itself the client
# picks its character set from the locale (latin1 under LANG=C), and names and comments
# travel mangled both ways. The dump tool's output says SET NAMES utf8mb4 at its top.
CLIENT_CHARSET = "--default-character-set=utf8mb4"
# backupd's own statements (``client_argv``, ``session_argv``) run under the sql_mode the dump
# tools set for themselves (''), not the server's: ``sql_literal`` escapes with backslashes,
# which NO_BACKSLASH_ESCAPES would keep as text (or end a literal early), and modes such as
# ANSI_QUOTES or EMPTY_STRING_IS_NULL would change what other statements say.
SESSION_SQL_MODE = "--init-command=SET SESSION sql_mode = ''"
# No LOCK TABLES `t` WRITE around each table's rows (--add-locks, on by default in both tools'
# --opt): a table whose column defaults to NEXTVAL(seq) (MariaDB) could not take its rows
# back, the sequence not being among the locked tables (ERROR 1100). The locks only spare
# MyISAM-style tables a key-cache flush per INSERT (MySQL's reference manual, "Optimizing
# INSERT Statements"; each extended INSERT holds up to net_buffer_length, 1 MiB, of rows),
# and kept other sessions from reading a table half loaded, which a restore, not atomic,
# cannot promise anyway.
DUMP_OPTIONS = (
    "--single-transaction",
    "--quick",
    "--skip-add-locks",
    "--routines",
    "--events",
    "--triggers",
    "--hex-blob",
    CLIENT_CHARSET,
    f"--max-allowed-packet={MAX_ALLOWED_PACKET}",
)
# Oracle's mysqldump only: MariaDB's rejects these.
ORACLE_ONLY_OPTIONS = ("--set-gtid-purged=OFF", "--column-statistics=0")
# Not dumped by DB_DATABASE=*: server internals, and `mysql` (users and grants), which cannot be
# loaded over another server's own.
LIST_DATABASES = (
    "SELECT schema_name FROM information_schema.schemata WHERE schema_name NOT IN"
    " ('information_schema', 'performance_schema', 'sys', 'mysql') ORDER BY schema_name"
)
# What the variables to change are, by the client's error.
_LOGIN_CAUSES = {
    "Access denied": ("DB_USER", "DB_PASSWORD"),
    "Unknown MySQL server host": ("DB_HOST",),
    "Unknown server host": ("DB_HOST",),
    "Can't connect": ("DB_HOST", "DB_PORT"),
}
_CONNECT_FAILURES = (
    "Access denied",
    "Can't connect",
    "Unknown MySQL server host",  # ERROR 2005, MySQL's client
    "Unknown server host",  # ERROR 2005, MariaDB's
    "Got error: 2",
    "at 'handshake",  # ERROR 2013: a server that accepts connections but never speaks
    "TLS/SSL error",  # ERROR 2026: no TLS, or a certificate that did not verify (DB_SSL_*)
)
# A statement the server refused once the login had succeeded: the client's "ERROR 1044
# (42000) at line 1: Access denied for user ... to database ..." (CREATE DATABASE without the
# privilege), and the dump tool's "Couldn't execute '...': Access denied; you need ...". Its
# "Access denied" is a privilege the user lacks, not a failed login.
_STATEMENT_REFUSED = re.compile(r"ERROR \d+ \(\w+\) at line \d+:|Couldn't execute '")


def login_failed(stderr: str) -> bool:
    """Whether a MySQL/MariaDB tool's ``stderr`` says it could not log in (or reach the
    server): one of ``_CONNECT_FAILURES``, except an "Access denied" answering a statement."""
    statement = _STATEMENT_REFUSED.search(stderr) is not None
    return any(
        marker in stderr
        for marker in _CONNECT_FAILURES
        if not (statement and marker == "Access denied")
    )


# ERROR 1153: the server names its max_allowed_packet.
_PACKET_REFUSED = ("max_allowed_packet",)
# ERROR 2006/2013: the connection closed, on an oversized statement sent to the server, or
# because the server stopped or restarted, or the network (a proxy) dropped it.
_CONNECTION_LOST = ("server has gone away", "lost connection to")
PACKET_HINT = (
    "the server refused a statement larger than its max_allowed_packet (a wide row; the "
    "client allows 1 GiB): raise max_allowed_packet on the server"
)
_UNKNOWN_DATABASE = re.compile(r"Unknown database '(.*)'")
_NAME = re.compile(r"^\w+$", re.ASCII)


def sql_literal(text: str) -> str:
    """``text`` as a quoted string literal, backslash-escaped: for the sessions backupd opens
    itself, whose sql_mode (``SESSION_SQL_MODE``) keeps backslash escapes on."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_identifier(text: str) -> str:
    return "`" + text.replace("`", "``") + "`"


def restore_argv(tool: str, config: DatabaseConfig, database: str) -> tuple[str, ...]:
    return (
        tool,
        *connection_args(config),
        # The dump sets its own character set and sql_mode at its top (SET NAMES,
        # SET SQL_MODE), before anything they change the meaning of: nothing more here.
        CLIENT_CHARSET,
        "--binary-mode",
        # Keep comments: the client strips them by default, also inside routine bodies.
        "--comments",
        f"--max-allowed-packet={MAX_ALLOWED_PACKET}",
        f"--database={database}",
    )


def missing_database(config: DatabaseConfig, database: str) -> str:
    return (
        f"database {database} does not exist on {config.host}:{config.effective_port} (DB_DATABASE)"
    )


OTHER_COLLATION = "objects_under_other_collation"
"""The property counting the routines, triggers and events created while the database had
another default collation than now: their dump switches the database's default by name around
each (see ``mysql_script``), so a restore under another name must rename it there."""


def names_database(backup: Backup) -> bool:
    """Whether a MySQL/MariaDB dump's SQL names its database (made with ``--databases``):
    as the manifest says; without one, keys that carry no run id come from those releases."""
    if backup.manifest is not None:
        return backup.manifest.names_database
    return backup.parsed.run_id is None


def statement_filter(backup: Backup, into: str) -> DatabaseStatementFilter | None:
    """What a dump's SQL needs on its way into ``into``, or None to load it unchanged (the
    fast path: the filter reads every statement, at tens of MiB/s).

    An old ``--databases`` dump loses its ``CREATE DATABASE``/``USE`` statements; a dump
    whose manifest counts objects under another collation (``OTHER_COLLATION``) loaded under
    a new name gets that name in its ``ALTER DATABASE`` statements.
    """
    manifest = backup.manifest
    rename = (manifest.database, into) if manifest is not None else None
    if names_database(backup):
        return DatabaseStatementFilter(rename)
    if manifest is None or manifest.database == into:
        return None
    return DatabaseStatementFilter(rename) if manifest.properties.get(OTHER_COLLATION) else None


def properties_query(database: str, with_comment: bool) -> str:
    """The database's defaults as one JSON line (SCHEMA_COMMENT: MariaDB 10.5+ only), with
    the count of ``OTHER_COLLATION`` objects (mysqldump compares the collation names)."""
    comment = ", 'comment', s.SCHEMA_COMMENT" if with_comment else ""
    name = sql_literal(database)
    others = (
        "SELECT COUNT(*) FROM ("
        "SELECT DATABASE_COLLATION AS c FROM information_schema.ROUTINES"
        f" WHERE ROUTINE_SCHEMA = {name}"
        " UNION ALL SELECT DATABASE_COLLATION FROM information_schema.TRIGGERS"
        f" WHERE TRIGGER_SCHEMA = {name}"
        " UNION ALL SELECT DATABASE_COLLATION FROM information_schema.EVENTS"
        f" WHERE EVENT_SCHEMA = {name}"
        ") o WHERE o.c <> s.DEFAULT_COLLATION_NAME"
    )
    return (
        "SELECT JSON_OBJECT('character_set', s.DEFAULT_CHARACTER_SET_NAME, "
        f"'collation', s.DEFAULT_COLLATION_NAME{comment}, '{OTHER_COLLATION}', ({others})) "
        f"FROM information_schema.SCHEMATA s WHERE s.SCHEMA_NAME = {name}"
    )


def objects_query(database: str) -> str:
    """How many objects of ``database`` a dump holds and its restore would replace, as one
    row: tables, views and sequences (``tables``, with the triggers on them), procedures and
    functions (``routines``), and events."""
    name = sql_literal(database)
    return (
        f"SELECT (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = {name})"
        f" + (SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = {name})"
        f" + (SELECT COUNT(*) FROM information_schema.events WHERE event_schema = {name})"
    )


def database_clauses(properties: dict[str, Any], empty_comment: bool) -> list[str]:
    """The recorded character set, collation and comment as CREATE/ALTER DATABASE clauses
    (names checked to be plain words, the comment quoted)."""
    clauses = []
    charset, collation = properties.get("character_set"), properties.get("collation")
    if isinstance(charset, str) and _NAME.match(charset):
        clauses.append(f"CHARACTER SET {charset}")
    if isinstance(collation, str) and _NAME.match(collation):
        clauses.append(f"COLLATE {collation}")
    comment = properties.get("comment")
    if isinstance(comment, str) and (comment or empty_comment):
        clauses.append(f"COMMENT {sql_literal(comment)}")
    return clauses


def create_database_sql(database: str, properties: dict[str, Any]) -> str:
    """``CREATE DATABASE`` with the recorded character set, collation and comment."""
    clauses = database_clauses(properties, empty_comment=False) or ["CHARACTER SET utf8mb4"]
    return f"CREATE DATABASE {sql_identifier(database)} {' '.join(clauses)}"


def alter_database_sql(database: str, properties: dict[str, Any]) -> str | None:
    """``ALTER DATABASE`` to the recorded defaults (an empty comment clears one), or None when
    nothing was recorded."""
    clauses = database_clauses(properties, empty_comment=True)
    return f"ALTER DATABASE {sql_identifier(database)} {' '.join(clauses)}" if clauses else None


def option_value(text: str) -> str:
    """``text`` double-quoted per MySQL's option-file rules (backslashes, double quotes and
    line breaks escaped): read back exactly, blanks, ``#`` and ``=`` included."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def option_file(password: str | None, tls: tuple[str, ...] = ()) -> bytes:
    """A ``[client]`` option file carrying the password, quoted per MySQL's option-file rules,
    and the ``tls`` option lines (``tls_options``)."""
    lines = ["[client]"]
    if password is not None:
        lines.append(f"password={option_value(password)}")
    lines += tls
    return ("\n".join(lines) + "\n").encode()


def tls_options(config: DatabaseConfig) -> tuple[str, ...]:
    """The MariaDB client options for ``config``'s DB_SSL_* settings, as option-file lines.

    What the MariaDB 10.11 client tools (Connector/C) were found to do, and so the mapping:
    ``skip-ssl`` never uses TLS (disable); ``ssl``, the tools' own default, uses TLS when the
    server offers it and goes on unencrypted when not, verifying nothing (prefer; with
    ``ssl-ca`` the chain is checked, but the fallback stays); only ``ssl-verify-server-cert``
    refuses a server without TLS, and it checks the chain and the host name together
    (verify-full; the MariaDB documentation's "Secure Connections Overview"). require and
    verify-ca have no exact form: the loader refuses them, and were they given here they
    would get verify-full's options, the stricter ones. Unset: only a client certificate, if
    any. Oracle's MySQL client tools take ``ssl-mode`` instead and are not tested.
    """
    lines: list[str] = []
    mode = config.ssl_mode
    if mode is SSLMode.DISABLE:
        lines.append("skip-ssl")
    elif mode is SSLMode.PREFER:
        lines.append("ssl")
    elif mode is not None:
        lines += ["ssl", "ssl-verify-server-cert"]
    if config.ssl_ca is not None:
        lines.append(f"ssl-ca={option_value(str(config.ssl_ca))}")
    if config.ssl_cert is not None and config.ssl_key is not None:
        lines.append(f"ssl-cert={option_value(str(config.ssl_cert))}")
        lines.append(f"ssl-key={option_value(str(config.ssl_key))}")
    return tuple(lines)


def is_mariadb_tool(version_output: str) -> bool:
    return "mariadb" in version_output.lower()


def connection_args(config: DatabaseConfig) -> tuple[str, ...]:
    return (f"--host={config.host}", f"--port={config.effective_port}", f"--user={config.user}")


@dataclass(frozen=True)
class Tool:
    """The dump tool on PATH, as its ``--version`` describes it."""

    program: str
    version_output: str

    @property
    def is_mariadb(self) -> bool:
        return is_mariadb_tool(self.version_output)

    @property
    def dumps_history(self) -> bool:
        """Whether it offers ``--dump-history`` (mariadb-dump of MariaDB 10.11 and later)."""
        found = re.search(r"(\d+)\.(\d+)\.\d+-MariaDB", self.version_output)
        return self.is_mariadb and found is not None and (int(found[1]), int(found[2])) >= (10, 11)


def dump_argv(
    tool: Tool, config: DatabaseConfig, database: str, history: bool = False
) -> tuple[str, ...]:
    """One database, without ``--databases``: the SQL names no database, so it loads into
    whichever database the client names, and nothing in it needs rewriting. With
    ``history``, system-versioned tables keep their history (``--dump-history``)."""
    extra = () if tool.is_mariadb else ORACLE_ONLY_OPTIONS
    more = ("--dump-history",) if history else ()
    return (tool.program, *connection_args(config), *DUMP_OPTIONS, *extra, *more, "--", database)


def history_query(database: str) -> str:
    """System-versioned tables, and how many of them keep transaction-precise history (a
    ``ROW START`` column, as MariaDB's COLUMNS shows it in GENERATION_EXPRESSION, of
    ``BIGINT``), which ``--dump-history`` refuses (it dumps only
    timestamp-based history), as ``count<TAB>precise<TAB>first precise table``."""
    name = sql_literal(database)
    return (
        "SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
        f"{name} AND TABLE_TYPE = 'SYSTEM VERSIONED'), COUNT(*), COALESCE(MIN(TABLE_NAME), '')"
        f" FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {name}"
        " AND GENERATION_EXPRESSION = 'ROW START' AND DATA_TYPE = 'bigint'"
    )


def client_argv(tool: str, config: DatabaseConfig, sql: str) -> tuple[str, ...]:
    return (
        tool,
        *connection_args(config),
        "--connect-timeout=10",
        CLIENT_CHARSET,
        SESSION_SQL_MODE,
        "--batch",
        "--raw",
        "--skip-column-names",
        "-e",
        sql,
    )


def pick_tool(engine: Engine, kind: str) -> str:
    """The installed binary for ``kind`` ('dump' or 'client'), preferring the engine's own name."""
    names = {"dump": ("mariadb-dump", "mysqldump"), "client": ("mariadb", "mysql")}[kind]
    if engine is Engine.MYSQL:
        names = names[::-1]
    for name in names:
        if shutil.which(name):
            return name
    return names[0]


class MySQLSource:
    extension = ".sql"
    can_compress = False
    restores_atomically = False  # the client commits statement by statement

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self._tool: asyncio.Future[Tool] | None = None

    def _command(self, argv: tuple[str, ...]) -> Command:
        password = (
            self.config.password.get_secret_value() if self.config.password is not None else None
        )
        return Command(
            argv,
            child_environment({}),
            pipe_file=option_file(password, tls_options(self.config)),
            pipe_file_flag="--defaults-extra-file=",
        )

    async def _query(self, sql: str) -> list[str]:
        """Rows of a one-column query; raise ConnectError when the login fails."""
        client = pick_tool(self.config.engine, "client")
        code, out, err = await run_captured(
            client, self._command(client_argv(client, self.config, sql))
        )
        if code != 0 and login_failed(err):
            where = f"{self._label()} at {self._where()}"
            raise ConnectError(
                f"cannot log in to {where}: {err}{self._tls_hint(err)}",
                login_settings(err, _LOGIN_CAUSES),
            )
        if code != 0:
            raise QueryError(err or f"{client} exited {code}")
        return [line for line in out.splitlines() if line]

    async def tool(self) -> Tool:
        """The dump tool and its flavour, asked once per source."""
        if self._tool is None:
            self._tool = asyncio.ensure_future(self._ask_tool())
        return await asyncio.shield(self._tool)

    async def _ask_tool(self) -> Tool:
        program = pick_tool(self.config.engine, "dump")
        version = Command((program, "--version"), child_environment({}))
        code, out, err = await run_captured(program, version)
        if code != 0:
            raise DumpError(f"{program} --version failed: {err}")
        return Tool(program, out)

    async def probe(self) -> ServerInfo:
        rows, tool = await asyncio.gather(self._query("SELECT VERSION()"), self.tool())
        return ServerInfo(
            server_version=rows[0].strip(), tool_version=short_version(tool.version_output)
        )

    async def list_databases(self) -> list[str]:
        return await self._query(LIST_DATABASES)

    async def database_exists(self, database: str) -> bool:
        """Whether the server has the schema ``database``."""
        found = await self._query(
            "SELECT COUNT(*) FROM information_schema.schemata"
            f" WHERE schema_name = {sql_literal(database)}"
        )
        return found != ["0"]

    async def estimated_size(self, database: str) -> int | None:
        """Data and index length of the schema's tables in bytes (``information_schema``, an
        estimate for InnoDB); None when it cannot be read."""
        try:
            rows = await self._query(
                "SELECT COALESCE(SUM(data_length + index_length), 0)"
                f" FROM information_schema.tables WHERE table_schema = {sql_literal(database)}"
            )
        except BackupdError:
            return None
        return int(rows[0]) if rows and rows[0].isdigit() else None

    def globals_command(self, info: ServerInfo) -> None:
        return None

    async def dump_command(
        self, database: str, native_compression: bool, snapshot: str | None = None
    ) -> Command:
        tool = await self.tool()
        history = tool.dumps_history and await self._keeps_history(database)
        return self._command(dump_argv(tool, self.config, database, history))

    async def _keeps_history(self, database: str) -> bool:
        """Whether ``database`` has system-versioned tables whose history mariadb-dump can
        dump (all timestamp-based). Where one keeps transaction-precise history, no history
        is dumped, and a warning says so; the current rows are dumped as always."""
        try:
            (row,) = await self._query(history_query(database))
            counted, exact, table = [*row.split("\t"), ""][:3]
            versioned, precise = int(counted), int(exact)
        except (QueryError, ValueError):
            return False
        if precise:
            log.warning(
                "%s: the history of its system-versioned tables is not backed up: table %s "
                "keeps transaction-precise history, which mariadb-dump cannot dump",
                database,
                table,
            )
            return False
        return versioned > 0

    async def database_properties(self, database: str) -> dict[str, Any]:
        try:
            rows = await self._query(properties_query(database, with_comment=True))
        except QueryError:  # MySQL has no SCHEMA_COMMENT
            rows = await self._query(properties_query(database, with_comment=False))
        if not rows:
            raise DumpError(missing_database(self.config, database))
        properties: dict[str, Any] = json.loads(rows[0])
        return properties

    @contextlib.asynccontextmanager
    async def open_dump(
        self, database: str, native_compression: bool, snapshot: str | None = None
    ) -> AsyncIterator[Readable]:
        command = await self.dump_command(database, native_compression)
        async with command_output(command, self.explain_dump_failure) as output:
            yield output

    def open_globals(self, info: ServerInfo) -> None:
        return None

    def explain_dump_failure(self, stderr: str) -> str | None:
        """``explain_failure`` for the dump tool, which sends no statement a server could
        refuse as too large (and takes rows up to 1 GiB): a lost connection is lost."""
        lowered = stderr.lower()
        lost = any(marker in lowered for marker in _CONNECTION_LOST)
        refused = any(marker in lowered for marker in _PACKET_REFUSED)
        if lost and not refused and "at 'handshake" not in stderr:
            return (
                f"the connection to {self._label()} at {self._where()} was lost during the "
                "dump: the server stopped or restarted, or the network dropped it (the "
                "server's error log says which)"
            )
        return self.explain_failure(stderr)

    def explain_failure(self, stderr: str) -> str | None:
        lowered = stderr.lower()
        if "at 'handshake" not in stderr:
            if any(marker in lowered for marker in _PACKET_REFUSED):
                return PACKET_HINT
            if any(marker in lowered for marker in _CONNECTION_LOST):
                return (
                    "the connection to the server was lost: either the server stopped or "
                    f"restarted (its error log says so), or {PACKET_HINT}"
                )
        if (unknown := _UNKNOWN_DATABASE.search(stderr)) is not None:
            return missing_database(self.config, unknown.group(1))
        if login_failed(stderr):
            return f"cannot log in to {self._label()} at {self._where()}"
        return None

    def _tls_hint(self, stderr: str) -> str:
        """What DB_SSL_MODE=disable may have to do with a refused login: MariaDB answers a
        plain connection to a server or user that requires TLS with ERROR 1045 (Access
        denied), as it does a wrong password (MariaDB 10.11, tested)."""
        if self.config.ssl_mode is SSLMode.DISABLE and "Access denied" in stderr:
            return " (DB_SSL_MODE=disable: a server or user requiring TLS refuses it so too)"
        return ""

    def _label(self) -> str:
        return "MariaDB" if self.config.engine is Engine.MARIADB else "MySQL"

    def _where(self) -> str:
        return f"{self.config.host}:{self.config.effective_port} as {self.config.user}"

    async def statement_limit(self) -> int | None:
        """The server's max_allowed_packet (bytes), or None when it cannot be read."""
        try:
            rows = await self._query("SELECT @@GLOBAL.max_allowed_packet")
        except QueryError:
            return None
        return int(rows[0]) if rows and rows[0].isdigit() else None

    async def database_state(self, database: str) -> str:
        name = sql_literal(database)
        found = await self._query(
            f"SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = {name}"
        )
        if found == ["0"]:
            return "missing"
        used = await self._query(objects_query(database))
        return "empty" if used == ["0"] else "in use"

    async def create_database(self, database: str, properties: dict[str, Any]) -> list[str]:
        try:
            await self._query(create_database_sql(database, properties))
        except QueryError as error:
            if not properties:
                raise
            await self._query(create_database_sql(database, {}))
            return [f"created {database} with utf8mb4 instead of the recorded defaults: {error}"]
        return []

    async def apply_properties(self, database: str, properties: dict[str, Any]) -> list[str]:
        """The recorded defaults again: a database that existed before the restore gets them
        too (they are defaults for new tables; the dump's tables name their own)."""
        statement = alter_database_sql(database, properties)
        if statement is None:
            return []
        try:
            await self._query(statement)
        except QueryError as error:
            return [f"could not restore the database's character set and comment: {error}"]
        return []

    async def drop_database(self, database: str) -> None:
        await self._query(f"DROP DATABASE IF EXISTS {sql_identifier(database)}")

    async def restore_tool(
        self, backup: Backup, database: str, *, in_one_transaction: bool = True
    ) -> RestoreTool:
        """The client reading the dump's SQL, through ``statement_filter`` where the dump
        needs it. MySQL has no way to load a dump without its own transactions."""
        client = pick_tool(self.config.engine, "client")
        command = self._command(restore_argv(client, self.config, database))
        return RestoreTool(command, statement_filter(backup, database))

    def _session_command(self, database: str) -> Command:
        client = pick_tool(self.config.engine, "client")
        return self._command(session_argv(client, self.config, database))

    @contextlib.asynccontextmanager
    async def dump_session(
        self, database: str, lock_wait: float | None = None
    ) -> AsyncIterator[DumpSession]:
        """A consistent snapshot taken just before the dump's own (mysqldump cannot share its
        snapshot), in which every table's rows are counted: exact for InnoDB tables as of a
        moment before the dump began, so writes in between can make them differ slightly.
        Without it the dump runs as usual and records no counts."""
        async with contextlib.AsyncExitStack() as stack:
            found: DumpSession | None = None
            try:
                session = await stack.enter_async_context(
                    client_session(self._label(), self._session_command(database))
                )
                if lock_wait is not None:  # metadata locks (a table being altered)
                    await session.ask(f"SET SESSION lock_wait_timeout = {max(1, int(lock_wait))};")
                await session.ask(START_SNAPSHOT)
                found = DumpSession(None, "own snapshot", session, COUNT_ROWS)
            except QueryError as error:
                # A login failure is the dump's to report, once: not a warning here too.
                said = log.debug if self.explain_failure(str(error)) else log.warning
                said("%s: row counts are not recorded: %s", database, error)
            yield found if found is not None else DumpSession()

    async def count_rows(self, database: str) -> list[dict[str, Any]]:
        """Every table of ``database`` with its exact row count (a drill's check)."""
        async with client_session(self._label(), self._session_command(database)) as session:
            return parse_counts(await session.ask(COUNT_ROWS))


START_SNAPSHOT = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;"
# One query over every base table, built and run on the server; each row prints
# ``<TAB>name<TAB>rows`` with the name hex-encoded (MySQL/MariaDB has no schema level here).
COUNT_ROWS = """SET SESSION group_concat_max_len = 1073741824;
SELECT GROUP_CONCAT(CONCAT('SELECT \\'\\', ', QUOTE(HEX(table_name)), ', COUNT(*) FROM `',
    REPLACE(table_name, '`', '``'), '`') ORDER BY table_name SEPARATOR ' UNION ALL ')
  INTO @backupd_count FROM information_schema.tables
  WHERE table_schema = DATABASE() AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED');
SET @backupd_count = COALESCE(@backupd_count, 'SELECT 1 FROM DUAL WHERE FALSE');
PREPARE backupd_count FROM @backupd_count;
EXECUTE backupd_count;
DEALLOCATE PREPARE backupd_count;"""


def session_argv(tool: str, config: DatabaseConfig, database: str) -> tuple[str, ...]:
    return (
        tool,
        *connection_args(config),
        "--connect-timeout=10",
        CLIENT_CHARSET,
        SESSION_SQL_MODE,
        "--batch",
        "--skip-column-names",
        "--unbuffered",
        f"--database={database}",
    )


def short_version(output: str) -> str:
    """The tool and its release from ``--version``, e.g. ``mariadb-dump 10.11.6-MariaDB``."""
    text = output.strip()
    name = text.split()[0].rsplit("/", 1)[-1] if text else "?"
    for pattern in (r"Distrib\s+([^\s,]+)", r"\bfrom\s+([^\s,]+)", r"Ver\s+([^\s,]+)"):
        match = re.search(pattern, text)
        if match is not None:
            return f"{name} {match.group(1)}"
    return text
