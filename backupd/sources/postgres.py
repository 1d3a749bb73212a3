"""PostgreSQL: ``pg_dump --format=custom`` to stdout.

Connection parameters, the database name included, travel in libpq's ``PG*`` environment
variables: the password never reaches argv, and a database name containing ``=`` is never
mistaken for a connection string.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backupd.config import DatabaseConfig
from backupd.errors import BackupdError, ConnectError, DumpError, QueryError
from backupd.parts import Readable
from backupd.process import Command, child_environment, run_captured, spawn
from backupd.sources.base import RestoreTool, ServerInfo, command_output, login_settings
from backupd.sources.session import DumpSession, client_session, parse_counts

if TYPE_CHECKING:
    from backupd.catalogue import Backup

log = logging.getLogger(__name__)

_VERSION = re.compile(r"(\d+)(?:\.(\d+))?")
_MISMATCH = re.compile(r"server version: ([\d.]+)[^;]*; pg_dump version: ([\d.]+)")
PSQL_CONNECTION_FAILED = 2
# Said by the server when a login names what it lacks (``FATAL``), never by a statement
# (``ERROR``): a restore's ``GRANT ... TO carol`` naming a missing role is no login failure.
_MISSING = re.compile(r'FATAL:\s+database "((?:[^"]|"")*)" does not exist')
_NO_LOGIN_ROLE = re.compile(r'FATAL:\s+role "(?:[^"]|"")*" does not exist')
_NO_ROLE = re.compile(r'ERROR:\s+role "((?:[^"]|"")*)" does not exist')
# Settings whose value is a list of quoted items (pg_dump's variable_is_guc_list_quote).
LIST_SETTINGS = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)
# The roles owning what a restore gives an owner (``ALTER ... OWNER TO``, as pg_dump writes
# it): every object made after initdb (oid >= FirstNormalObjectId, 16384) of the catalogs with
# an owner, the public schema (pg_dump 15 names its owner unless it is pg_database_owner) and
# every large object; not an extension's members or what is made along with another object
# (pg_depend ``e``, ``i``), not temporary objects. pg_database_owner is left out: whoever owns
# the restored database is it. The catalogs are those of PostgreSQL 10 on.
OWNERS_QUERY = r"""SELECT coalesce(json_agg(DISTINCT pg_get_userbyid(o.owner)), '[]'::json)
FROM (
    SELECT 'pg_namespace'::regclass AS classid, oid, nspowner AS owner FROM pg_namespace
     WHERE (oid >= 16384 OR nspname = 'public')
       AND nspname NOT LIKE 'pg\_temp\_%' AND nspname NOT LIKE 'pg\_toast\_temp\_%'
    UNION ALL SELECT 'pg_class'::regclass, oid, relowner FROM pg_class
     WHERE oid >= 16384 AND relpersistence <> 't'
    UNION ALL SELECT 'pg_proc'::regclass, oid, proowner FROM pg_proc WHERE oid >= 16384
    UNION ALL SELECT 'pg_type'::regclass, oid, typowner FROM pg_type WHERE oid >= 16384
    UNION ALL SELECT 'pg_operator'::regclass, oid, oprowner FROM pg_operator WHERE oid >= 16384
    UNION ALL SELECT 'pg_opclass'::regclass, oid, opcowner FROM pg_opclass WHERE oid >= 16384
    UNION ALL SELECT 'pg_opfamily'::regclass, oid, opfowner FROM pg_opfamily WHERE oid >= 16384
    UNION ALL SELECT 'pg_collation'::regclass, oid, collowner FROM pg_collation
     WHERE oid >= 16384
    UNION ALL SELECT 'pg_conversion'::regclass, oid, conowner FROM pg_conversion
     WHERE oid >= 16384
    UNION ALL SELECT 'pg_language'::regclass, oid, lanowner FROM pg_language WHERE oid >= 16384
    UNION ALL SELECT 'pg_ts_config'::regclass, oid, cfgowner FROM pg_ts_config
     WHERE oid >= 16384
    UNION ALL SELECT 'pg_ts_dict'::regclass, oid, dictowner FROM pg_ts_dict WHERE oid >= 16384
    UNION ALL SELECT 'pg_foreign_data_wrapper'::regclass, oid, fdwowner
     FROM pg_foreign_data_wrapper WHERE oid >= 16384
    UNION ALL SELECT 'pg_foreign_server'::regclass, oid, srvowner FROM pg_foreign_server
     WHERE oid >= 16384
    UNION ALL SELECT 'pg_event_trigger'::regclass, oid, evtowner FROM pg_event_trigger
     WHERE oid >= 16384
    UNION ALL SELECT 'pg_publication'::regclass, oid, pubowner FROM pg_publication
     WHERE oid >= 16384
    UNION ALL SELECT 'pg_statistic_ext'::regclass, oid, stxowner FROM pg_statistic_ext
     WHERE oid >= 16384
    UNION ALL SELECT 'pg_largeobject_metadata'::regclass, oid, lomowner
     FROM pg_largeobject_metadata
) o
WHERE pg_get_userbyid(o.owner) <> 'pg_database_owner'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = o.classid AND d.objid = o.oid
                  AND d.deptype IN ('e', 'i'))"""
PROPERTIES_QUERY = f"""
SELECT json_build_object(
    'owners', ({OWNERS_QUERY}),
    'encoding', pg_encoding_to_char(d.encoding),
    'row', to_jsonb(d) - 'datacl' - 'datfrozenxid' - 'datminmxid',
    'comment', shobj_description(d.oid, 'pg_database'),
    'owner', pg_get_userbyid(d.datdba),
    'tablespace', (SELECT t.spcname FROM pg_tablespace t WHERE t.oid = d.dattablespace),
    'acl', CASE WHEN d.datacl IS NOT NULL THEN coalesce((
        SELECT json_agg(json_build_object(
            'grantee', CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
            'privilege', a.privilege_type, 'grantable', a.is_grantable)
            ORDER BY a.grantee, a.privilege_type)
        FROM aclexplode(d.datacl) a), '[]'::json) END,
    'settings', coalesce((
        SELECT json_agg(item ORDER BY ordinality) FROM pg_db_role_setting s,
        unnest(s.setconfig) WITH ORDINALITY AS item
        WHERE s.setdatabase = d.oid AND s.setrole = 0), '[]'::json),
    'role_settings', coalesce((
        SELECT json_agg(json_build_object('role', r.rolname, 'setting', item)
                        ORDER BY r.rolname, ordinality)
        FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole,
        unnest(s.setconfig) WITH ORDINALITY AS item
        WHERE s.setdatabase = d.oid), '[]'::json)
)::text FROM pg_database d WHERE d.datname = current_database()
"""
# What a restore would collide with or be mixed with: any relation outside the system schemas
# (an extension's tables too: their rows would mix), any large object, and every object
# created after initdb (oid >= FirstNormalObjectId, 16384) of the other catalogs a dump fills
# (schemas, routines, types, operators, casts, text search, foreign data, event triggers,
# publications, default privileges), except those made along with another (an array type,
# a table's row type: pg_depend ``i``) or by an extension (``e``). Extensions themselves do not
# count: pg_dump creates them IF NOT EXISTS. The catalogs are those of PostgreSQL 10 on.
IN_USE_QUERY = r"""
SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\_toast%')
     + (SELECT count(*) FROM pg_largeobject_metadata)
     + (SELECT count(*) FROM (
            SELECT 'pg_namespace'::regclass AS classid, oid FROM pg_namespace
             WHERE nspname NOT LIKE 'pg\_temp\_%' AND nspname NOT LIKE 'pg\_toast\_temp\_%'
            UNION ALL SELECT 'pg_proc'::regclass, oid FROM pg_proc
            UNION ALL SELECT 'pg_type'::regclass, oid FROM pg_type
            UNION ALL SELECT 'pg_operator'::regclass, oid FROM pg_operator
            UNION ALL SELECT 'pg_opclass'::regclass, oid FROM pg_opclass
            UNION ALL SELECT 'pg_opfamily'::regclass, oid FROM pg_opfamily
            UNION ALL SELECT 'pg_collation'::regclass, oid FROM pg_collation
            UNION ALL SELECT 'pg_conversion'::regclass, oid FROM pg_conversion
            UNION ALL SELECT 'pg_cast'::regclass, oid FROM pg_cast
            UNION ALL SELECT 'pg_language'::regclass, oid FROM pg_language
            UNION ALL SELECT 'pg_ts_config'::regclass, oid FROM pg_ts_config
            UNION ALL SELECT 'pg_ts_dict'::regclass, oid FROM pg_ts_dict
            UNION ALL SELECT 'pg_ts_parser'::regclass, oid FROM pg_ts_parser
            UNION ALL SELECT 'pg_ts_template'::regclass, oid FROM pg_ts_template
            UNION ALL SELECT 'pg_foreign_data_wrapper'::regclass, oid FROM pg_foreign_data_wrapper
            UNION ALL SELECT 'pg_foreign_server'::regclass, oid FROM pg_foreign_server
            UNION ALL SELECT 'pg_event_trigger'::regclass, oid FROM pg_event_trigger
            UNION ALL SELECT 'pg_publication'::regclass, oid FROM pg_publication
            UNION ALL SELECT 'pg_default_acl'::regclass, oid FROM pg_default_acl
        ) o WHERE o.oid >= 16384 AND NOT EXISTS (
            SELECT 1 FROM pg_depend d WHERE d.classid = o.classid AND d.objid = o.oid
               AND d.deptype IN ('e', 'i')))
"""
# What the variables to change are, by the client's error.
_LOGIN_CAUSES = {
    "password authentication failed": ("DB_USER", "DB_PASSWORD"),
    "no password supplied": ("DB_PASSWORD",),
    "could not translate host name": ("DB_HOST",),
    "Connection refused": ("DB_HOST", "DB_PORT"),
    "timeout expired": ("DB_HOST", "DB_PORT"),
}
_CONNECT_FAILURES = (
    "password authentication failed",
    "could not connect",
    "connection to server",
    "could not translate host name",
    "no password supplied",
    "timeout expired",
    "pg_hba.conf",
)

# What psql says of a session the server ended after its login (a timeout, an administrator's
# pg_terminate_backend, a restart): "connection to server" alone is also a failed login's.
_SESSION_LOST = ("connection to server was lost", "terminating connection")

PG_BINROOT = Path("/usr/lib/postgresql")
"""Where Debian and Ubuntu (and the PGDG packages) install each major version's programs."""


@functools.lru_cache(maxsize=64)
def client_program(name: str, search_path: str | None, binroot: Path = PG_BINROOT) -> str:
    """What to exec for the PostgreSQL program ``name`` found on ``search_path``.

    On Debian and Ubuntu, ``psql``, ``pg_dump`` and friends on PATH are links to
    postgresql-common's ``pg_wrapper``, a Perl script that chooses a version on every call and
    costs 40-60 ms of CPU before the program even starts (a backup makes four or five such
    calls). When ``PGHOST`` is set, as backupd always sets it, the wrapper runs the program of
    the newest installed version (pg_wrapper(1): an explicit host skips the cluster lookup):
    backupd runs that program itself. Any other ``name`` on PATH, or a wrapper with no version
    installed, is run as it is. Looked up once per process.
    """
    found = shutil.which(name, path=search_path)
    if found is None or Path(found).resolve().name != "pg_wrapper":
        return name
    versions: list[tuple[tuple[int, ...], Path]] = []
    with contextlib.suppress(OSError):
        for folder in binroot.iterdir():
            program = folder / "bin" / name
            numbers = folder.name.split(".")
            if all(n.isdigit() for n in numbers) and os.access(program, os.X_OK):
                versions.append((tuple(int(n) for n in numbers), program))
    return str(max(versions)[1]) if versions else name


def libpq_env(config: DatabaseConfig, database: str) -> dict[str, str]:
    """libpq's environment for one database; holds the password, so never log it.

    The TLS settings go in ``PGSSLMODE``, ``PGSSLROOTCERT``, ``PGSSLCERT`` and ``PGSSLKEY``
    (libpq's "Environment Variables"), paths only; each unset leaves libpq's default
    (``sslmode=prefer``; ``~/.postgresql/postgresql.crt`` and its key if they exist)."""
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
    return env | libpq_tls_env(config)


def libpq_tls_env(config: DatabaseConfig) -> dict[str, str]:
    """The ``PGSSL*`` variables for ``config``'s DB_SSL_* settings (see ``libpq_env``)."""
    env: dict[str, str] = {}
    if config.ssl_mode is not None:
        env["PGSSLMODE"] = str(config.ssl_mode)
    if config.ssl_ca is not None:
        env["PGSSLROOTCERT"] = str(config.ssl_ca)
    if config.ssl_cert is not None and config.ssl_key is not None:
        env["PGSSLCERT"], env["PGSSLKEY"] = str(config.ssl_cert), str(config.ssl_key)
    return env


def pg_dump_argv(native_compression: bool, snapshot: str | None = None) -> tuple[str, ...]:
    argv = ["pg_dump", "--format=custom", "--no-password"]
    if not native_compression:
        argv.append("--compress=0")
    if snapshot is not None:
        argv.append(f"--snapshot={snapshot}")
    return tuple(argv)


# The tables whose rows a backup records: those pg_dump dumps the data of (tables of
# extensions are left out: their scripts create them).
DUMPED_TABLES = r"""FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')"""
# The server's time limits, off as pg_dump turns them off for itself: a database's (or
# role's) ``statement_timeout`` cancelled the count of a big table (no counts recorded, no
# drill check), and its ``idle_in_transaction_session_timeout`` ended the session, and with it
# the exported snapshot, while it waited idle for pg_dump to import it (the backup failed:
# "invalid snapshot identifier"). Each only where the server has it (transaction_timeout: 17).
# ``{scope}``: LOCAL inside a transaction, else empty.
TIMEOUTS_OFF = r"""SELECT format('SET {scope} %I = 0', name) FROM pg_settings
WHERE name IN ('statement_timeout', 'idle_in_transaction_session_timeout', 'transaction_timeout')
\gexec"""
# The snapshot, and the tables locked as pg_dump locks them (ACCESS SHARE), so that no table
# rewrite queued meanwhile can make a later count see other rows than the dump. The counts run
# as this one backend, never with parallel workers: on a small host those would take the cores
# the dump needs. The locks are waited for at most RESTORE_STALL_TIMEOUT (``lock_timeout``): a
# table another session holds cannot keep a backup waiting beyond what the stall guard allows.
# The database's own timeouts go first, for the session, before the transaction begins: psql
# sends one statement at a time, and set inside the transaction, an
# idle_in_transaction_session_timeout of a few ms ended the session between two of them.
EXPORT_SNAPSHOT = rf"""{TIMEOUTS_OFF.replace("{scope}", "SESSION")}
BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
SET LOCAL max_parallel_workers_per_gather = 0;
SET LOCAL lock_timeout = '{{lock_timeout}}';
SELECT pg_export_snapshot();
SELECT 'LOCK TABLE ' || string_agg(format('%I.%I', n.nspname, c.relname), ', ')
    || ' IN ACCESS SHARE MODE'
{DUMPED_TABLES}
\gexec"""
# One count query per table, run by psql's \gexec; each prints ``schema<TAB>name<TAB>rows``
# with the names hex-encoded.
_COUNT = r"""format('SELECT %L || E''\t'' || %L || E''\t'' || count(*) FROM %I.%I',
    encode(convert_to(n.nspname, 'UTF8'), 'hex'), encode(convert_to(c.relname, 'UTF8'), 'hex'),
    n.nspname, c.relname)"""
COUNT_ROWS = rf"""SELECT {_COUNT}
{DUMPED_TABLES}
ORDER BY n.nspname, c.relname
\gexec"""
# The same in the dump's snapshot, each count in a savepoint rolled back once it has printed:
# planning a count locks the table's indexes too, and the transaction that holds the snapshot
# would keep those locks to the end, beside the tables' own (kept by the LOCK above) and
# pg_dump's. A database of some 6,000 tables with an index each, which pg_dump alone dumps
# under the default max_locks_per_transaction, ran the server out of lock slots and the
# backup failed. Rolled back, a savepoint gives up the locks it took; the snapshot stays.
COUNT_ROWS_IN_SNAPSHOT = rf"""SELECT 'SAVEPOINT backupd_count', {_COUNT},
    'ROLLBACK TO SAVEPOINT backupd_count'
{DUMPED_TABLES}
ORDER BY n.nspname, c.relname
\gexec"""


def tool_version_of(output: str) -> str:
    """``'pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)'`` → ``'15.19'``."""
    match = re.search(r"\(PostgreSQL\)\s+(\S+)", output)
    return match.group(1) if match else output.strip()


def pg_literal(text: str) -> str:
    """``text`` as a string constant that means the same whatever the session's
    ``standard_conforming_strings``: with a backslash, an escape string (``E'...'``)."""
    quoted = text.replace("'", "''")
    if "\\" not in text:
        return f"'{quoted}'"
    return "E'" + quoted.replace("\\", "\\\\") + "'"


def pg_identifier(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def pg_restore_argv(
    database: str, in_one_transaction: bool = True, keep_owners: bool = False
) -> tuple[str, ...]:
    """Stop at the first error; all or nothing (one transaction) unless told otherwise, since
    one transaction holds a lock per table until it ends (``max_locks_per_transaction`` times
    connections bound them: a few thousand tables exhaust the default). The objects keep their
    recorded owners with ``keep_owners`` (pg_restore's ``ALTER ... OWNER TO``, which fails on a
    role the server lacks), else the restoring role owns them (``--no-owner``). The name goes
    in a conninfo, so ``=`` is harmless."""
    conninfo = "dbname=" + "'" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"
    single = ("--single-transaction",) if in_one_transaction else ()
    owners = () if keep_owners else ("--no-owner",)
    return (
        "pg_restore",
        *owners,
        "--exit-on-error",
        *single,
        "--no-password",
        f"--dbname={conninfo}",
    )


def pg_dumpall_globals_argv(superuser: bool) -> tuple[str, ...]:
    """Roles and tablespaces. Without superuser rights, pg_authid (passwords) is unreadable."""
    argv = ["pg_dumpall", "--globals-only", "--no-password"]
    if not superuser:
        argv.append("--no-role-passwords")
    return tuple(argv)


def missing_database(config: DatabaseConfig, database: str) -> str:
    return (
        f"database {database} does not exist on {config.host}:{config.effective_port} (DB_DATABASE)"
    )


def split_setting(setting: str) -> tuple[str, str]:
    """``'search_path=app, public'`` (a ``pg_db_role_setting`` item) → (name, value)."""
    name, _, value = setting.partition("=")
    return name, value


def split_list_value(value: str) -> list[str]:
    """The items of a list setting as the server stores it: comma-separated, each optionally
    double-quoted with ``""`` inside (PostgreSQL's SplitGUCList)."""
    items: list[str] = []
    current: list[str] = []
    quoted = was_quoted = False
    index = 0
    while index < len(value):
        char = value[index]
        if quoted:
            if char == '"' and value[index + 1 : index + 2] == '"':
                current.append('"')
                index += 1
            elif char == '"':
                quoted = False
            else:
                current.append(char)
        elif char == '"':
            quoted = was_quoted = True
        elif char == ",":
            items.append("".join(current) if was_quoted else "".join(current).strip())
            current, was_quoted = [], False
        elif not (char.isspace() and not current):
            current.append(char)
        index += 1
    if current or was_quoted or items:
        items.append("".join(current) if was_quoted else "".join(current).strip())
    return items


def set_clause(setting: str) -> str:
    """``SET name TO ...`` for one stored setting, quoted as pg_dump quotes it."""
    name, value = split_setting(setting)
    if name.lower() in LIST_SETTINGS:
        rendered = ", ".join(pg_literal(item) for item in split_list_value(value)) or "''"
    else:
        rendered = pg_literal(value)
    return f"SET {pg_identifier(name)} TO {rendered}"


def create_database_sql(database: str, properties: dict[str, Any]) -> str:
    """``CREATE DATABASE`` with the recorded encoding and locale (template0, so any locale)."""
    row = properties.get("row") or {}
    clauses = ["TEMPLATE template0"]
    if properties.get("encoding"):
        clauses.append(f"ENCODING {pg_literal(properties['encoding'])}")
    provider = row.get("datlocprovider", "c")
    if provider == "i":
        clauses.append("LOCALE_PROVIDER icu")
        icu = row.get("datlocale") or row.get("daticulocale")
        if icu:
            clauses.append(f"ICU_LOCALE {pg_literal(icu)}")
    elif provider == "b":
        clauses.append("LOCALE_PROVIDER builtin")
        if row.get("datlocale"):
            clauses.append(f"BUILTIN_LOCALE {pg_literal(row['datlocale'])}")
    for key, clause in (("datcollate", "LC_COLLATE"), ("datctype", "LC_CTYPE")):
        if row.get(key):
            clauses.append(f"{clause} {pg_literal(row[key])}")
    return f"CREATE DATABASE {pg_identifier(database)} {' '.join(clauses)}"


def property_statements(
    database: str,
    properties: dict[str, Any],
    keep_owner: bool = False,
    existing: dict[str, Any] | None = None,
) -> list[tuple[str, str]]:
    """(what, SQL) for each recorded default and the comment, applied after the restore; with
    ``keep_owner``, the recorded owner first. ``existing``: what the database has now, when it
    existed before the restore: its own settings, per-role settings and grants go first (see
    ``privilege_statements``), so that it ends with the recorded ones alone."""
    name = pg_identifier(database)
    owner = properties.get("owner")
    statements = []
    if keep_owner and isinstance(owner, str):
        statements.append(("owner", f"ALTER DATABASE {name} OWNER TO {pg_identifier(owner)}"))
    if "settings" in properties:  # recorded: an existing database's own defaults go first
        statements.append(("settings", f"ALTER DATABASE {name} RESET ALL"))
    if "role_settings" in properties:
        had = sorted({entry["role"] for entry in (existing or {}).get("role_settings") or []})
        statements += [
            (
                f"settings of role {role}",
                f"ALTER ROLE {pg_identifier(role)} IN DATABASE {name} RESET ALL",
            )
            for role in had
        ]
    statements += [
        (f"setting {split_setting(item)[0]}", f"ALTER DATABASE {name} {set_clause(item)}")
        for item in properties.get("settings") or []
    ]
    for entry in properties.get("role_settings") or []:
        role, setting = entry["role"], entry["setting"]
        statements.append(
            (
                f"setting {split_setting(setting)[0]} of role {role}",
                f"ALTER ROLE {pg_identifier(role)} IN DATABASE {name} {set_clause(setting)}",
            )
        )
    statements += privilege_statements(name, properties, keep_owner, existing)
    row = properties.get("row") or {}
    limit = row.get("datconnlimit")
    if isinstance(limit, int):  # -1 too: an existing database's own limit goes
        statements.append(("connection limit", f"ALTER DATABASE {name} CONNECTION LIMIT {limit}"))
    if properties.get("comment") is not None:
        statements.append(
            ("comment", f"COMMENT ON DATABASE {name} IS {pg_literal(properties['comment'])}")
        )
    elif "comment" in properties:  # recorded as none: an existing database's own one goes
        statements.append(("comment", f"COMMENT ON DATABASE {name} IS NULL"))
    if row.get("datistemplate") is True:
        statements.append(("template flag", f"ALTER DATABASE {name} IS_TEMPLATE true"))
    return statements


def _fixed_properties(properties: dict[str, Any]) -> dict[str, Any]:
    """What CREATE DATABASE fixes, from a ``properties``-shaped record (``encoding`` by name,
    ``row`` the pg_database row as JSON), under the row's column names; the ICU or builtin
    locale under the name the row gives it (``daticulocale`` before 17, ``datlocale`` from)."""
    row = properties.get("row") or {}
    fixed = {"encoding": properties.get("encoding")}
    fixed |= {name: row.get(name) for name in ("datcollate", "datctype")}
    fixed["datlocprovider"] = row.get("datlocprovider", "c" if row else None)  # libc before 15
    locale_name = "daticulocale" if "daticulocale" in row else "datlocale"
    fixed[locale_name] = row.get("datlocale") or row.get("daticulocale")
    return fixed


def creation_differences(
    recorded: dict[str, Any], actual: dict[str, Any]
) -> list[tuple[str, Any, Any]]:
    """(name, recorded, actual) for each property fixed at creation that an existing database
    (``actual``, shaped as ``recorded``) has otherwise; what the backup did not record (a
    server before 15 has no provider) is not compared."""
    want, have = _fixed_properties(recorded), _fixed_properties(actual)
    have_locale = have.get("datlocale", have.get("daticulocale"))
    differences = []
    for name, value in want.items():
        present = have_locale if name in ("datlocale", "daticulocale") else have.get(name)
        if value is not None and present != value:
            differences.append((name, value, present))
    return differences


def _shown(value: Any) -> str:
    return "none" if value is None else repr(value)


def owner_plan(database: str, properties: dict[str, Any], server: dict[str, Any]) -> str | None:
    """Why ``database`` cannot keep its recorded owners on this server, or None when it can.

    ``server`` is what OWNER_CHECK answers: the restoring role (``user``), whether it is a
    superuser, and which recorded owners the server has (``roles``). Owners are kept only all
    together, the database's (``owner``) and its objects' (``owners``): each must exist, and
    the restoring role must be a superuser unless it is every owner itself. A member of the
    owners is not enough: pg_restore's ``ALTER ... OWNER TO`` by a non-superuser needs the new
    owner to hold CREATE on the schema (on ``public`` too: only the database owner has it), and
    privileges come back only at the end, so the whole restore would fail.
    """
    user = server.get("user", "the restoring role")
    gone = f"everything restored into {database} is owned by {user}, not by its recorded owners"
    recorded = properties.get("owners")
    if not isinstance(recorded, list):
        return f"{gone}: the backup records none (made by an older backupd, or no manifest)"
    owner = properties.get("owner")
    wanted = sorted({*recorded, *([owner] if isinstance(owner, str) else [])})
    missing = [role for role in wanted if role not in (server.get("roles") or [])]
    if missing:
        return (
            f"{gone}: this server has no role {', '.join(missing)} (create them, e.g. from a"
            " DB_DATABASE=* backup's globals object, and restore again to keep the owners)"
        )
    others = [role for role in wanted if role != user]
    if others and not server.get("superuser"):
        return (
            f"{gone}: only a superuser can restore objects owned by {', '.join(others)}"
            " (restore as one to keep the owners)"
        )
    return None


def owner_check_sql(properties: dict[str, Any]) -> str:
    """OWNER_CHECK for the roles ``properties`` records as owners."""
    owners = properties.get("owners")
    names = [*(owners if isinstance(owners, list) else []), properties.get("owner")]
    listed = ", ".join(pg_literal(n) for n in sorted({n for n in names if isinstance(n, str)}))
    return OWNER_CHECK.format(roles=f"ARRAY[{listed}]::text[]")


# The restoring role, whether it is a superuser, and which of the given roles exist.
OWNER_CHECK = """SELECT json_build_object(
    'user', current_user,
    'superuser', (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
    'roles', (SELECT coalesce(json_agg(rolname), '[]') FROM pg_roles WHERE rolname = ANY({roles}))
)::text"""


DATABASE_PRIVILEGES = frozenset({"CREATE", "CONNECT", "TEMPORARY"})


def privilege_statements(
    name: str,
    properties: dict[str, Any],
    keep_owner: bool = False,
    existing: dict[str, Any] | None = None,
) -> list[tuple[str, str]]:
    """The recorded ``acl`` (``aclexplode`` of ``datacl``) as GRANTs on ``name`` (quoted),
    after revoking PUBLIC's default CONNECT and TEMPORARY. With ``keep_owner`` (the recorded
    owner owns the copy) the owner's own entries are restored as recorded, after revoking its
    defaults; otherwise they are left out: the restoring role owns the copy and holds them as
    owner.

    ``existing``: the properties the database has now (``PROPERTIES_QUERY``), when it existed
    before the restore. Whatever its ``acl`` grants to a role other than its owner is revoked
    first, and where the backup recorded the default privileges (``acl`` null) the defaults
    come back: CONNECT and TEMPORARY for PUBLIC (PostgreSQL's ``acldefault`` for a database),
    and with ``keep_owner`` all three for the owner, whose grants as a role of the existing
    database were revoked with the others'.
    A backup that recorded no ``acl`` at all (an older backupd) changes nothing."""
    if "acl" not in properties:
        return []
    acl = properties.get("acl")
    owner = properties.get("owner")
    explicit = isinstance((existing or {}).get("acl"), list)
    if not isinstance(acl, list) and not explicit:
        return []
    statements = [("privileges of PUBLIC", f"REVOKE ALL ON DATABASE {name} FROM PUBLIC")]
    statements += _revoke_existing(name, existing)
    if keep_owner and isinstance(owner, str):
        revoke = f"REVOKE ALL ON DATABASE {name} FROM {pg_identifier(owner)}"
        statements.append((f"privileges of {owner}", revoke))
    if not isinstance(acl, list):
        statements.append(
            ("privileges of PUBLIC", f"GRANT CONNECT, TEMPORARY ON DATABASE {name} TO PUBLIC")
        )
        if keep_owner and isinstance(owner, str):
            grant = f"GRANT ALL ON DATABASE {name} TO {pg_identifier(owner)}"
            statements.append((f"privileges of {owner}", grant))
        return statements
    for entry in acl:
        grantee, privilege = entry.get("grantee"), entry.get("privilege")
        if privilege not in DATABASE_PRIVILEGES or (
            grantee and grantee == owner and not keep_owner
        ):
            continue
        to = pg_identifier(grantee) if grantee else "PUBLIC"
        option = " WITH GRANT OPTION" if grantee and entry.get("grantable") else ""
        statements.append(
            (
                f"privilege {privilege} of {grantee or 'PUBLIC'}",
                f"GRANT {privilege} ON DATABASE {name} TO {to}{option}",
            )
        )
    return statements


def _revoke_existing(name: str, existing: dict[str, Any] | None) -> list[tuple[str, str]]:
    """REVOKEs of what an existing database's explicit ``acl`` grants to roles other than its
    owner and PUBLIC (PUBLIC's are the caller's); none for default privileges. Each cascades:
    a role holding a privilege WITH GRANT OPTION that it granted on (to another role, or to
    PUBLIC) refuses a plain REVOKE (dependent privileges exist), and what it granted, which
    only revoking its own takes back, stayed too."""
    acl = (existing or {}).get("acl")
    if not isinstance(acl, list):
        return []
    owner = (existing or {}).get("owner")
    grantees = sorted({e.get("grantee") for e in acl if e.get("grantee") not in (None, owner)})
    return [
        (
            f"privileges of {grantee}",
            f"REVOKE ALL ON DATABASE {name} FROM {pg_identifier(grantee)} CASCADE",
        )
        for grantee in grantees
    ]


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
    restores_atomically = True  # pg_restore --single-transaction

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config

    def _env(self, database: str) -> dict[str, str]:
        return child_environment(libpq_env(self.config, database))

    def _command(self, argv: tuple[str, ...], database: str) -> Command:
        """``argv`` run on ``database``, its program the one pg_wrapper would pick."""
        env = self._env(database)
        return Command((client_program(argv[0], env.get("PATH")), *argv[1:]), env)

    def _psql(self, argv: tuple[str, ...], database: str) -> Command:
        """backupd's own psql on ``database``, talking UTF-8 whatever the database's encoding
        (psql otherwise speaks it, and a LATIN1 comment would come back mangled). Never for
        pg_dump, whose dump would then be converted too."""
        command = self._command(argv, database)
        return replace(command, env={**command.env, "PGCLIENTENCODING": "UTF8"})

    @property
    def _login_database(self) -> str:
        """Where the probe logs in: the first database named, or ``postgres`` for ``*``."""
        return (self.config.databases or ("postgres",))[0]

    async def _query(
        self, sql: str, database: str | None = None, *, utf8: bool = True
    ) -> list[str]:
        """Rows of a one-column query, as text: in UTF-8, or with ``utf8`` false in the
        database's own encoding (decoded as UTF-8, other bytes replaced).

        Raise DumpError naming the database when it does not exist, ConnectError when the login
        fails (psql exits 2), QueryError when the statement fails.
        """
        argv = ("psql", "--no-psqlrc", "--no-password", "-At", "--record-separator-zero", "-c", sql)
        where = database if database is not None else self._login_database
        command = self._psql(argv, where) if utf8 else self._command(argv, where)
        code, out, err = await run_captured("psql", command)
        if code != 0 and (missing := _MISSING.search(err)) and missing.group(1) == where:
            raise DumpError(missing_database(self.config, where))
        if code == PSQL_CONNECTION_FAILED:
            raise ConnectError(
                f"cannot log in to PostgreSQL at {self._where()}: {err}",
                login_settings(err, _LOGIN_CAUSES),
            )
        if code != 0:
            raise QueryError(err or f"psql exited {code}")
        return [row for row in out.split("\0") if row]

    async def probe(self) -> ServerInfo:
        query = (
            "SELECT current_setting('server_version') || '|' || "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)::text"
        )
        version = self._command(("pg_dump", "--version"), "")
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

    async def database_exists(self, database: str) -> bool:
        """Whether the server has ``database``: asked where the probe logs in, or in the
        maintenance database when that is the missing one."""
        sql = f"SELECT 1 FROM pg_database WHERE datname = {pg_literal(database)}"
        try:
            found = await self._query(sql)
        except ConnectError:
            found = await self._query(sql, "postgres")
        return bool(found)

    async def estimated_size(self, database: str) -> int | None:
        """``pg_database_size`` in bytes: tables, indexes and free space, so a dump is usually
        smaller; None when it cannot be read (no CONNECT privilege, ...)."""
        try:
            rows = await self._query(f"SELECT pg_database_size({pg_literal(database)})", database)
        except BackupdError:
            return None
        return int(rows[0]) if rows and rows[0].isdigit() else None

    def globals_command(self, info: ServerInfo) -> Command:
        return self._command(pg_dumpall_globals_argv(info.superuser), "postgres")

    async def dump_command(
        self, database: str, native_compression: bool, snapshot: str | None = None
    ) -> Command:
        return self._command(pg_dump_argv(native_compression, snapshot), database)

    @contextlib.asynccontextmanager
    async def open_dump(
        self, database: str, native_compression: bool, snapshot: str | None = None
    ) -> AsyncIterator[Readable]:
        command = await self.dump_command(database, native_compression, snapshot)
        async with command_output(command, self.explain_failure) as output:
            yield output

    def open_globals(self, info: ServerInfo) -> AbstractAsyncContextManager[Readable]:
        return command_output(self.globals_command(info), self.explain_failure)

    async def database_properties(self, database: str) -> dict[str, Any]:
        try:
            rows = await self._query(PROPERTIES_QUERY, database)
        except QueryError as error:
            if "invalid byte sequence" not in str(error):
                raise
            # A SQL_ASCII database holds bytes no encoding names: read them as they are.
            log.warning(
                "%s: its comment or settings are not UTF-8 (a SQL_ASCII database): recorded "
                "with such bytes replaced",
                database,
            )
            rows = await self._query(PROPERTIES_QUERY, database, utf8=False)
        properties: dict[str, Any] = json.loads(rows[0])
        return properties

    def explain_failure(self, stderr: str) -> str | None:
        if "max_locks_per_transaction" in stderr:
            return (
                "the server ran out of lock slots (one transaction locks every table): raise "
                "max_locks_per_transaction on the server"
            )
        mismatch = _MISMATCH.search(stderr)
        if mismatch is not None:
            return version_problem(mismatch.group(1), mismatch.group(2))
        if (missing := _MISSING.search(stderr)) is not None:
            return missing_database(self.config, missing.group(1).replace('""', '"'))
        if _NO_LOGIN_ROLE.search(stderr) or any(m in stderr for m in _CONNECT_FAILURES):
            return f"cannot log in to PostgreSQL at {self._where()}"
        if (role := _NO_ROLE.search(stderr)) is not None:
            name = role.group(1).replace('""', '"')
            return (
                f"role {name} does not exist on {self.config.host}:{self.config.effective_port}"
                " and the backup names it (a grant, a policy, default privileges): create it"
                " there (a DB_DATABASE=* backup's globals object holds the roles) and restore"
                " again, or restore onto a server that has it"
            )
        return None

    def _refused_login(self, stderr: str) -> bool:
        """Whether a session's psql failed to log in (which pg_dump, logging in the same way,
        then reports), not lost its connection later (``_SESSION_LOST``): the dump goes on
        without that session, and what it costs must be said."""
        lost = any(marker in stderr for marker in _SESSION_LOST)
        return not lost and self.explain_failure(stderr) is not None

    def _where(self) -> str:
        return f"{self.config.host}:{self.config.effective_port} as {self.config.user}"

    async def database_state(self, database: str) -> str:
        found = await self._query(
            f"SELECT 1 FROM pg_database WHERE datname = {pg_literal(database)}", "postgres"
        )
        if not found:
            return "missing"
        objects = await self._query(IN_USE_QUERY, database)
        return "empty" if objects == ["0"] else "in use"

    async def create_database(self, database: str, properties: dict[str, Any]) -> list[str]:
        problems = []
        try:
            await self._query(create_database_sql(database, properties), "postgres")
        except QueryError as error:
            if not properties:
                raise
            # e.g. a locale this server lacks: say so, and keep the database's own defaults.
            await self._query(f"CREATE DATABASE {pg_identifier(database)}", "postgres")
            problems.append(
                f"created {database} with this server's default encoding and locale: {error}"
            )
        tablespace = properties.get("tablespace")
        if isinstance(tablespace, str) and tablespace != "pg_default":
            # Moved while still empty; never from inside the database itself.
            move = f"ALTER DATABASE {pg_identifier(database)} SET TABLESPACE"
            try:
                await self._query(f"{move} {pg_identifier(tablespace)}", "postgres")
            except QueryError as error:
                problems.append(f"{database} stays in the default tablespace: {error}")
        return problems

    async def owners_kept(self, database: str, properties: dict[str, Any]) -> tuple[bool, str]:
        """Whether ``database`` (which exists) can keep the owners ``properties`` records, and
        if not, why (see ``owner_plan``)."""
        answer = await self._query(owner_check_sql(properties), database)
        problem = owner_plan(database, properties, json.loads(answer[0]))
        return problem is None, problem or ""

    async def apply_properties(self, database: str, properties: dict[str, Any]) -> list[str]:
        problems = await self._fixed_at_creation(database, properties)
        keep_owner = bool(properties) and (await self.owners_kept(database, properties))[0]
        existing = await self.database_properties(database) if properties else None
        statements = property_statements(database, properties, keep_owner, existing)
        if statements:
            problems += await self._run_each(database, statements)
        return problems

    async def _run_each(self, database: str, statements: list[tuple[str, str]]) -> list[str]:
        """Run ``(what, SQL)`` statements in one psql session on ``database`` itself, as
        pg_dump's DATABASE PROPERTIES run after ``\\connect``: the comment and settings, kept
        in shared catalogs, are stored in the database's own encoding, and a setting just
        applied (``default_transaction_read_only``, ``role``) reaches only later sessions.
        The statements go by stdin, never argv (a setting may hold a secret). Return a
        problem line for each statement that failed; the others still ran.

        Raise ConnectError when the login fails, BackupdError when psql does not finish
        within 30 s.
        """
        marker = f"backupd-{secrets.token_hex(8)}"
        script = "".join(
            f"{sql};\n\\echo {marker} {index} :ERROR :LAST_ERROR_MESSAGE\n"
            for index, (_, sql) in enumerate(statements)
        )
        argv = ("psql", "--no-psqlrc", "--no-password", "--quiet", "-At", "-f", "-")
        async with spawn(
            "psql", self._psql(argv, database), stdin=asyncio.subprocess.PIPE
        ) as child:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                child.stdin.write(script.encode())
                await child.stdin.drain()
            child.stdin.close()
            try:
                async with asyncio.timeout(30):
                    out = (await child.stdout.read_all()).decode("utf-8", "replace")
                    code = await child.wait()
            except TimeoutError:
                raise BackupdError(
                    "psql did not finish the database's properties within 30s"
                ) from None
            said = child.stderr_text()
        if code == PSQL_CONNECTION_FAILED:
            raise ConnectError(
                f"cannot log in to PostgreSQL at {self._where()}: {said}",
                login_settings(said, _LOGIN_CAUSES),
            )
        answered: dict[int, str | None] = {}
        for line in out.splitlines():
            if line.startswith(marker + " "):
                number, failed, message = [*line[len(marker) + 1 :].split(" ", 2), ""][:3]
                answered[int(number)] = message if failed == "true" else None
        problems = []
        for position, (what, _) in enumerate(statements):
            if position not in answered:
                problems.append(f"could not restore the database's {what}: {said or 'no answer'}")
            elif (reason := answered[position]) is not None:
                problems.append(f"could not restore the database's {what}: {reason}")
        return problems

    async def _fixed_at_creation(self, database: str, properties: dict[str, Any]) -> list[str]:
        """Encoding, locale and locale provider cannot change after CREATE DATABASE: say so
        where a database that already existed differs from the recorded ones. The server's
        row is read whole, whatever its version has (``datlocprovider`` and ``daticulocale``
        from PostgreSQL 15, renamed ``datlocale`` in 17)."""
        if not properties:
            return []
        rows = await self._query(
            "SELECT json_build_object('encoding', pg_encoding_to_char(d.encoding),"
            " 'row', to_jsonb(d) - 'datacl')::text"
            f" FROM pg_database d WHERE d.datname = {pg_literal(database)}",
            "postgres",
        )
        found = json.loads(rows[0]) if rows else {}
        return [
            f"{database} keeps its {name} {_shown(actual)}; the backup recorded"
            f" {_shown(recorded)} (fixed when a database is created: restore with --clean to"
            " re-create it)"
            for name, recorded, actual in creation_differences(properties, found)
        ]

    async def drop_database(self, database: str) -> None:
        """Drop ``database`` if it exists, closing its connections; a template database (a
        restored template flag) is made an ordinary one first, as PostgreSQL requires."""
        name = pg_identifier(database)
        template = await self._query(
            f"SELECT 1 FROM pg_database WHERE datname = {pg_literal(database)} AND datistemplate",
            "postgres",
        )
        if template:
            await self._query(f"ALTER DATABASE {name} IS_TEMPLATE false", "postgres")
        await self._query(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", "postgres")

    async def statement_limit(self) -> int | None:
        return None  # pg_restore reads an archive, not statements of lines

    async def restore_tool(
        self, backup: Backup, database: str, *, in_one_transaction: bool = True
    ) -> RestoreTool:
        """pg_restore, keeping the recorded owners where this server can (see
        ``owner_plan``); where not, a warning says that the restoring role owns all."""
        properties = backup.manifest.properties if backup.manifest is not None else {}
        keep, problem = await self.owners_kept(database, properties)
        if not keep:
            log.warning("%s", problem)
        argv = pg_restore_argv(database, in_one_transaction, keep)
        return RestoreTool(self._command(argv, database))

    def _session_command(self, database: str) -> Command:
        argv = ("psql", "--no-psqlrc", "--no-password", "--quiet", "-At", "-v", "ON_ERROR_STOP=1")
        return self._psql(argv, database)

    @contextlib.asynccontextmanager
    async def dump_session(
        self, database: str, lock_wait: float | None = None
    ) -> AsyncIterator[DumpSession]:
        """A REPEATABLE READ transaction that exports its snapshot for ``pg_dump --snapshot``
        and counts every table's rows in that same snapshot: the counts are exactly what the
        dump holds. Open until the block ends. Without it (the export failed, e.g. on a server
        that cannot export snapshots) the dump runs as usual and records no counts."""
        async with contextlib.AsyncExitStack() as stack:
            found: DumpSession | None = None
            try:
                session = await stack.enter_async_context(
                    client_session("psql", self._session_command(database))
                )
                bound = f"{max(1, round(lock_wait * 1000))}ms" if lock_wait else "0"
                export = EXPORT_SNAPSHOT.format(lock_timeout=bound)
                snapshot = (await session.ask(export))[0].strip()
                found = DumpSession(snapshot, "dump snapshot", session, COUNT_ROWS_IN_SNAPSHOT)
            except (QueryError, IndexError) as error:
                # A login failure is the dump's to report, once: not a warning here too.
                said = log.debug if self._refused_login(str(error)) else log.warning
                said("%s: row counts are not recorded: %s", database, error)
            yield found if found is not None else DumpSession()

    async def count_rows(self, database: str) -> list[dict[str, Any]]:
        """Every table of ``database`` with its exact row count (a drill's check)."""
        async with client_session("psql", self._session_command(database)) as session:
            return parse_counts(await session.ask(f"{TIMEOUTS_OFF.format(scope='')}\n{COUNT_ROWS}"))
