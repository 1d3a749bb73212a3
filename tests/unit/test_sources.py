from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from backupd.config import DatabaseConfig, Engine
from backupd.errors import ConnectError, QueryError
from backupd.process import Command, child_environment, mask
from backupd.sources.mysql import (
    DUMP_OPTIONS,
    ORACLE_ONLY_OPTIONS,
    MySQLSource,
    Tool,
    dump_argv,
    is_mariadb_tool,
    option_file,
    short_version,
)
from backupd.sources.postgres import (
    PostgresSource,
    client_program,
    creation_differences,
    libpq_env,
    major_version,
    owner_plan,
    pg_dump_argv,
    pg_restore_argv,
    privilege_statements,
    property_statements,
    tool_version_of,
    version_problem,
)

PASSWORD = "pa ss\"w'rd\\#1"


def database(engine: Engine = Engine.POSTGRES, **overrides: object) -> DatabaseConfig:
    raw = {
        "DB_TYPE": engine,
        "DB_HOST": "db",
        "DB_USER": "u",
        "DB_PASSWORD": PASSWORD,
        "DB_DATABASE": "app",
    }
    return DatabaseConfig.model_validate({**raw, **overrides})


@pytest.mark.parametrize(
    ("native", "argv"),
    [
        (True, ("pg_dump", "--format=custom", "--no-password")),
        (False, ("pg_dump", "--format=custom", "--no-password", "--compress=0")),
    ],
)
def test_pg_dump_argv_holds_no_connection_details(native: bool, argv: tuple[str, ...]) -> None:
    assert pg_dump_argv(native) == argv


def test_libpq_env_carries_the_login_and_a_database_name_with_equals_signs() -> None:
    env = libpq_env(database(DB_PORT=6543), "odd=name")
    assert env["PGHOST"] == "db"
    assert env["PGPORT"] == "6543"
    assert env["PGUSER"] == "u"
    assert env["PGDATABASE"] == "odd=name"
    assert env["PGPASSWORD"] == PASSWORD


async def test_dump_command_keeps_the_password_out_of_argv() -> None:
    command = await PostgresSource(database()).dump_command("app", native_compression=True)
    assert all(PASSWORD not in arg for arg in command.argv)
    assert PASSWORD not in repr(command)


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("pg_dump (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)", "15.19"),
        ("pg_dump (PostgreSQL) 17.2", "17.2"),
        ("pg_dump (PostgreSQL) 9.6.24", "9.6.24"),
    ],
)
def test_tool_version_is_read_from_version_output(output: str, version: str) -> None:
    assert tool_version_of(output) == version


@pytest.mark.parametrize(
    ("server", "tool", "needed"),
    [
        ("15.19 (Debian 15.19-0+deb12u1)", "15.19", None),
        ("15.2", "17.0", None),
        ("16.2", "15.19", 16),
        ("17.0", "9.6.24", 17),
        ("9.6.24", "9.5.1", None),  # same major number: pg_dump's own check decides
    ],
)
def test_version_problem_names_the_client_needed(
    server: str, tool: str, needed: int | None
) -> None:
    problem = version_problem(server, tool)
    if needed is None:
        assert problem is None
    else:
        assert problem is not None
        assert f"install the PostgreSQL {needed} client tools" in problem
        assert f"postgresql-client-{needed}" in problem


def test_major_version_refuses_text_without_a_number() -> None:
    with pytest.raises(ValueError, match="no version number"):
        major_version("unknown")


def test_pg_dump_mismatch_in_stderr_is_explained() -> None:
    stderr = (
        "pg_dump: error: aborting because of server version mismatch | "
        "pg_dump: detail: server version: 16.2 (Debian 16.2-1); "
        "pg_dump version: 15.19 (Debian 15.19-0)"
    )
    hint = PostgresSource(database()).explain_failure(stderr)
    assert hint is not None
    assert "postgresql-client-16" in hint


def test_running_out_of_lock_slots_names_the_server_setting() -> None:
    stderr = (
        "pg_restore: error: could not execute query: ERROR:  out of shared memory | "
        "HINT:  You might need to increase max_locks_per_transaction."
    )
    hint = PostgresSource(database()).explain_failure(stderr)
    assert hint is not None
    assert "raise max_locks_per_transaction on the server" in hint


@pytest.mark.parametrize(
    ("stderr", "hint"),
    [
        (
            'pg_restore: error: could not execute query: ERROR:  role "carol" does not exist\n'
            "Command was: GRANT SELECT ON TABLE public.t TO carol;",
            "role carol does not exist on db.example:5432 and the backup names it",
        ),
        (
            'psql: error: connection to server at "db.example" (10.0.0.5), port 5432 failed: '
            'FATAL:  role "backupd" does not exist',
            "cannot log in to PostgreSQL at db.example:5432 as backupd",
        ),
        (
            'pg_dump: error: connection to server at "db.example", port 5432 failed: '
            'FATAL:  database "sh""op" does not exist',
            'database sh"op does not exist on db.example:5432',
        ),
        (
            'pg_restore: error: could not execute query: ERROR:  schema "app" does not exist\n'
            "Command was: CREATE TABLE app.t (n integer);",
            None,
        ),
        (
            'pg_restore: error: could not execute query: ERROR:  database "old" does not exist'
            "\nCommand was: ALTER DATABASE old SET work_mem TO '8MB';",
            None,
        ),
    ],
)
def test_only_a_login_that_names_something_missing_is_a_login_failure(
    stderr: str, hint: str | None
) -> None:
    """A statement failing with "does not exist" is the restore's own failure, not the
    login's: a missing role it grants to is named, with what to do."""
    said = PostgresSource(database(DB_HOST="db.example", DB_USER="backupd")).explain_failure(stderr)
    if hint is None:
        assert said is None
    else:
        assert said is not None
        assert said.startswith(hint), said


def pg_database_row(encoding: str = "UTF8", **row: str | None) -> dict[str, Any]:
    return {"encoding": encoding, "row": {"datcollate": "C", "datctype": "C", **row}}


ICU_15 = pg_database_row(datlocprovider="i", daticulocale="de-DE")


@pytest.mark.parametrize(
    ("recorded", "actual", "differences"),
    [
        (ICU_15, ICU_15, []),
        (
            ICU_15,
            pg_database_row(datlocprovider="c", daticulocale=None),
            [("datlocprovider", "i", "c"), ("daticulocale", "de-DE", None)],
        ),
        (ICU_15, pg_database_row(datlocprovider="i", datlocale="de-DE"), []),  # onto 17
        (
            ICU_15,
            pg_database_row(datlocprovider="i", datlocale="fr-FR"),
            [("daticulocale", "de-DE", "fr-FR")],
        ),
        (pg_database_row(), pg_database_row(datlocprovider="c", daticulocale=None), []),  # 14
        (
            pg_database_row(),
            pg_database_row(datlocprovider="i", daticulocale="de-DE"),
            [("datlocprovider", "c", "i")],
        ),
        (
            pg_database_row("LATIN1", datlocprovider="c"),
            pg_database_row(datlocprovider="c", datcollate="C.UTF-8"),
            [("encoding", "LATIN1", "UTF8"), ("datcollate", "C", "C.UTF-8")],
        ),
        ({}, pg_database_row(), []),
    ],
)
def test_the_locale_provider_and_icu_locale_are_fixed_at_creation_too(
    recorded: dict[str, Any], actual: dict[str, Any], differences: list[tuple[str, Any, Any]]
) -> None:
    assert creation_differences(recorded, actual) == differences


def test_option_file_quotes_the_password_so_a_parser_reads_it_back() -> None:
    text = option_file(PASSWORD).decode()
    assert text.startswith("[client]\n")
    value = configparser.ConfigParser(interpolation=None)
    value.read_string(text)
    raw = value["client"]["password"]
    unquoted = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    assert unquoted == PASSWORD


def test_option_file_without_password_has_only_the_group() -> None:
    assert option_file(None) == b"[client]\n"


@pytest.mark.parametrize(
    ("version", "extra"),
    [
        ("mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB, for debian-linux-gnu", ()),
        ("mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)", None),
    ],
)
def test_mysql_dump_argv_uses_the_documented_options(
    version: str, extra: tuple[str, ...] | None
) -> None:
    argv = dump_argv(Tool("mysqldump", version), database(Engine.MYSQL), "-shop")
    assert argv == (
        "mysqldump",
        "--host=db",
        "--port=3306",
        "--user=u",
        *DUMP_OPTIONS,
        *(ORACLE_ONLY_OPTIONS if extra is None else extra),
        # One database, named after `--` (a name may start with a dash), without --databases:
        # the SQL names no database and loads under any name without rewriting.
        "--",
        "-shop",
    )
    assert all(PASSWORD not in arg for arg in argv)


@pytest.mark.parametrize(
    ("output", "mariadb"),
    [
        ("mariadb-dump  Ver 10.19 Distrib 10.11.6-MariaDB, for debian-linux-gnu (x86_64)", True),
        ("mysqldump  Ver 10.19 Distrib 10.11.6-MariaDB, for debian-linux-gnu (x86_64)", True),
        ("mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)", False),
    ],
)
def test_mariadb_and_oracle_dump_tools_are_told_apart(output: str, mariadb: bool) -> None:
    assert is_mariadb_tool(output) is mariadb


def test_secret_file_option_comes_first() -> None:
    command = Command(
        ("mariadb-dump", "--host=db"), pipe_file=b"x", pipe_file_flag="--defaults-extra-file="
    )
    assert command.final_argv(7) == ["mariadb-dump", "--defaults-extra-file=/dev/fd/7", "--host=db"]
    assert command.final_argv(None) == ["mariadb-dump", "--host=db"]


def test_child_environment_keeps_only_basics() -> None:
    parent = {"PATH": "/bin", "HOME": "/h", "STORAGE_SECRET_ACCESS_KEY": "s", "DB_PASSWORD": "p"}
    assert child_environment({"PGPASSWORD": "x"}, parent) == {
        "PATH": "/bin",
        "HOME": "/h",
        "PGPASSWORD": "x",
    }


@pytest.mark.parametrize(
    ("text", "secrets", "masked"),
    [
        ("password hunter2 leaked", ["hunter2"], "password ****** leaked"),
        ("keep short a b", ["a", "b"], "keep short a b"),
        ("two abcd and abcdef", ["abcd", "abcdef"], "two ****** and ******"),
    ],
)
def test_mask_hides_secrets(text: str, secrets: list[str], masked: str) -> None:
    assert mask(text, secrets) == masked


def test_secret_str_does_not_print() -> None:
    assert PASSWORD not in repr(database()) and str(SecretStr(PASSWORD)) == "**********"


@pytest.mark.parametrize(
    ("output", "version"),
    [
        (
            "mariadb-dump  Ver 10.19 Distrib 10.11.6-MariaDB, for debian-linux-gnu",
            "mariadb-dump 10.11.6-MariaDB",
        ),
        (
            "/usr/bin/mariadb-dump from 11.4.2-MariaDB, client 10.19 for Linux",
            "mariadb-dump 11.4.2-MariaDB",
        ),
        (
            "mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)",
            "mysqldump 8.0.36",
        ),
    ],
)
def test_dump_tool_release_is_read_from_version_output(output: str, version: str) -> None:
    assert short_version(output) == version


def executable(path: Path, text: str = "#!/bin/sh\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_a_debian_wrapper_is_skipped_for_the_newest_versions_program(tmp_path: Path) -> None:
    binroot = tmp_path / "lib"
    for version in ("9.6", "13", "15"):
        executable(binroot / version / "bin" / "pg_dump")
    (binroot / "16" / "bin").mkdir(parents=True)  # a newer server without this client program
    (binroot / "notes").mkdir()
    wrapper = executable(tmp_path / "share" / "pg_wrapper")
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "pg_dump").symlink_to(wrapper)
    (on_path / "psql").symlink_to(wrapper)

    chosen = client_program("pg_dump", str(on_path), binroot)
    without_versions = client_program("psql", str(on_path), binroot)

    assert chosen == str(binroot / "15" / "bin" / "pg_dump")
    assert without_versions == "psql"


def test_a_program_that_is_not_the_wrapper_runs_as_found(tmp_path: Path) -> None:
    binroot = tmp_path / "lib"
    executable(binroot / "15" / "bin" / "pg_dump")
    own = executable(tmp_path / "bin" / "pg_dump")

    assert client_program("pg_dump", str(own.parent), binroot) == "pg_dump"
    assert client_program("pg_dump", str(tmp_path / "empty"), binroot) == "pg_dump"


def test_database_privileges_become_grants_after_revoking_publics_defaults() -> None:
    owner_and_reader = {
        "owner": "alice",
        "acl": [
            {"grantee": "alice", "privilege": "CREATE", "grantable": True},
            {"grantee": "bob", "privilege": "CONNECT", "grantable": True},
            {"grantee": None, "privilege": "TEMPORARY", "grantable": False},
        ],
    }
    assert [sql for _, sql in privilege_statements('"db"', owner_and_reader)] == [
        'REVOKE ALL ON DATABASE "db" FROM PUBLIC',
        'GRANT CONNECT ON DATABASE "db" TO "bob" WITH GRANT OPTION',
        'GRANT TEMPORARY ON DATABASE "db" TO PUBLIC',
    ]
    assert privilege_statements('"db"', {"owner": "alice", "acl": None}) == []
    assert privilege_statements('"db"', {}) == []
    # The owner kept: its own entries as recorded, not as ALTER OWNER leaves them.
    assert [sql for _, sql in privilege_statements('"db"', owner_and_reader, True)] == [
        'REVOKE ALL ON DATABASE "db" FROM PUBLIC',
        'REVOKE ALL ON DATABASE "db" FROM "alice"',
        'GRANT CREATE ON DATABASE "db" TO "alice" WITH GRANT OPTION',
        'GRANT CONNECT ON DATABASE "db" TO "bob" WITH GRANT OPTION',
        'GRANT TEMPORARY ON DATABASE "db" TO PUBLIC',
    ]
    assert property_statements("db", owner_and_reader, True)[0] == (
        "owner",
        'ALTER DATABASE "db" OWNER TO "alice"',
    )
    assert all(what != "owner" for what, _ in property_statements("db", owner_and_reader))


def test_an_existing_databases_own_grants_and_role_settings_go_before_the_recorded_ones() -> None:
    """Restored into a database that existed: what it granted to others and its per-role
    settings are not the backup's, and go; recorded default privileges come back as such."""
    existing = {
        "owner": "dba",
        "acl": [
            {"grantee": "dba", "privilege": "CREATE", "grantable": False},
            {"grantee": "carol", "privilege": "CONNECT", "grantable": False},
            {"grantee": "carol", "privilege": "CREATE", "grantable": False},
        ],
        "role_settings": [{"role": "carol", "setting": "work_mem=7MB"}],
    }
    defaults = {"owner": "alice", "acl": None, "role_settings": []}

    assert [sql for _, sql in privilege_statements('"db"', defaults, existing=existing)] == [
        'REVOKE ALL ON DATABASE "db" FROM PUBLIC',
        'REVOKE ALL ON DATABASE "db" FROM "carol" CASCADE',
        'GRANT CONNECT, TEMPORARY ON DATABASE "db" TO PUBLIC',
    ]
    assert [sql for _, sql in property_statements("db", defaults, existing=existing)] == [
        'ALTER ROLE "carol" IN DATABASE "db" RESET ALL',
        'REVOKE ALL ON DATABASE "db" FROM PUBLIC',
        'REVOKE ALL ON DATABASE "db" FROM "carol" CASCADE',
        'GRANT CONNECT, TEMPORARY ON DATABASE "db" TO PUBLIC',
    ]
    reader = {"owner": "alice", "acl": [{"grantee": "bob", "privilege": "CONNECT"}]}
    assert [sql for _, sql in privilege_statements('"db"', reader, existing=existing)] == [
        'REVOKE ALL ON DATABASE "db" FROM PUBLIC',
        'REVOKE ALL ON DATABASE "db" FROM "carol" CASCADE',
        'GRANT CONNECT ON DATABASE "db" TO "bob"',
    ]
    # The kept owner may be one of the roles revoked: it gets an owner's defaults back.
    kept = privilege_statements('"db"', defaults, keep_owner=True, existing=existing)
    assert [sql for _, sql in kept][-2:] == [
        'GRANT CONNECT, TEMPORARY ON DATABASE "db" TO PUBLIC',
        'GRANT ALL ON DATABASE "db" TO "alice"',
    ]
    # An existing database with the default privileges, or a backup from a backupd that did
    # not record them: nothing to change.
    assert privilege_statements('"db"', defaults, existing={"owner": "dba", "acl": None}) == []
    assert privilege_statements('"db"', {"owner": "alice"}, existing=existing) == []


OWNED = {"owner": "alice", "owners": ["alice", "bob"]}


@pytest.mark.parametrize(
    ("properties", "server", "problem"),
    [
        (OWNED, {"user": "backupd", "superuser": True, "roles": ["alice", "bob"]}, None),
        (
            {"owner": "al", "owners": ["al"]},
            {"user": "al", "superuser": False, "roles": ["al"]},
            None,
        ),
        (
            OWNED,
            {"user": "backupd", "superuser": True, "roles": ["alice"]},
            "this server has no role bob (create them",
        ),
        (
            {"owner": "carol", "owners": ["dave"]},
            {"user": "backupd", "superuser": True, "roles": []},
            "this server has no role carol, dave (create them",
        ),
        (
            OWNED,
            {"user": "alice", "superuser": False, "roles": ["alice", "bob"]},
            "only a superuser can restore objects owned by bob",
        ),
        (
            {"owner": "alice"},
            {"user": "backupd", "superuser": True, "roles": ["alice"]},
            "the backup records none (made by an older backupd",
        ),
        ({}, {"user": "backupd", "superuser": True, "roles": []}, "the backup records none"),
    ],
)
def test_owners_are_kept_only_where_each_exists_and_a_superuser_restores(
    properties: dict[str, Any], server: dict[str, Any], problem: str | None
) -> None:
    said = owner_plan("db", properties, server)
    if problem is None:
        assert said is None
    else:
        assert said is not None
        assert said.startswith(
            f"everything restored into db is owned by {server['user']}, not by its recorded"
        )
        assert problem in said


@pytest.mark.parametrize(("keep", "no_owner"), [(True, False), (False, True)])
def test_pg_restore_gives_objects_their_owners_only_when_kept(keep: bool, no_owner: bool) -> None:
    assert ("--no-owner" in pg_restore_argv("db", keep_owners=keep)) is no_owner


@pytest.mark.parametrize(
    ("version", "dumps_history"),
    [
        ("mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)", True),
        ("mariadb-dump from 11.8.2-MariaDB, client 10.19 for Linux (x86_64)", True),
        ("mysqldump  Ver 10.19 Distrib 10.6.12-MariaDB, for Linux (x86_64)", False),
        ("mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)", False),
    ],
)
def test_history_is_dumped_only_by_a_mariadb_dump_that_offers_it(
    version: str, dumps_history: bool
) -> None:
    tool = Tool("mariadb-dump", version)
    assert tool.dumps_history is dumps_history
    assert "--dump-history" in dump_argv(tool, database(Engine.MARIADB), "app", history=True)
    assert "--dump-history" not in dump_argv(tool, database(Engine.MARIADB), "app")


def test_a_server_that_never_speaks_is_a_login_failure_not_a_wide_row() -> None:
    stderr = (
        "mariadb-dump: Got error: 2013: \"Lost connection to server at 'handshake: reading "
        "initial communication packet', system error: 110\" when trying to connect"
    )
    hint = MySQLSource(database(Engine.MARIADB)).explain_failure(stderr)
    assert hint is not None
    assert hint.startswith("cannot log in to MariaDB at ")


def test_a_connection_lost_during_a_dump_is_not_blamed_on_a_wide_row() -> None:
    """The server sends rows of any size and the dump tool takes up to 1 GiB: a dump that
    loses its connection lost it (a server killed or restarted, a network drop). Its hint
    sent the operator to raise max_allowed_packet instead."""
    source = MySQLSource(database(Engine.MARIADB))
    lost = (
        "mariadb-dump: Error 2013: Lost connection to server during query when dumping "
        "table `r` at row: 20727"
    )
    said = source.explain_dump_failure(lost)
    assert said is not None and "was lost during the dump" in said
    assert "max_allowed_packet" not in said
    # Loading a statement, the same loss may be a refused packet: both are named.
    restoring = source.explain_failure("ERROR 2006 (HY000) at line 38: Server has gone away")
    assert restoring is not None and "raise max_allowed_packet on the server" in restoring
    assert "stopped or restarted" in restoring
    refused = "ERROR 1153 (08S01) at line 38: Got a packet bigger than 'max_allowed_packet' bytes"
    assert source.explain_dump_failure(refused) == source.explain_failure(refused)
    assert "raise max_allowed_packet on the server" in (source.explain_failure(refused) or "")


# What the MariaDB 10.11 client printed for a user who logged in but may not create the drill's
# scratch database, and for a wrong password (both tested against a server the suite starts).
NO_CREATE_PRIVILEGE = (
    "--------------\nCREATE DATABASE `backupd_drill_shop_a0f91379`\n--------------\n\n"
    "ERROR 1044 (42000) at line 1: Access denied for user 'ro'@'%' to database "
    "'backupd_drill_shop_a0f91379'"
)
WRONG_PASSWORD = "ERROR 1045 (28000): Access denied for user 'ro'@'localhost' (using password: YES)"


async def test_a_statement_refused_for_a_privilege_is_not_a_failed_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A drill run as a user without CREATE said "cannot log in to MariaDB ... as ro" and
    "could not drop the scratch database": the login had worked, a statement was refused."""
    source = MySQLSource(database(Engine.MARIADB))
    answers = {"refused": NO_CREATE_PRIVILEGE, "login": WRONG_PASSWORD}

    async def client(program: str, command: Command) -> tuple[int, str, str]:
        return 1, "", answers[current]

    monkeypatch.setattr("backupd.sources.mysql.run_captured", client)
    current = "refused"
    with pytest.raises(QueryError) as refused:
        await source.drop_database("backupd_drill_shop_a0f91379")
    assert not isinstance(refused.value, ConnectError)
    assert "cannot log in" not in str(refused.value)
    assert "Access denied for user 'ro'@'%' to database" in str(refused.value)
    assert source.explain_failure(NO_CREATE_PRIVILEGE) is None
    dump_refused = (
        "mariadb-dump: Couldn't execute 'SHOW CREATE PROCEDURE `p`': Access denied; you need "
        "(at least one of) the SHOW CREATE ROUTINE privilege(s) for this operation (1227)"
    )
    assert source.explain_dump_failure(dump_refused) is None
    current = "login"
    with pytest.raises(ConnectError, match="cannot log in to MariaDB at "):
        await source.drop_database("backupd_drill_shop_a0f91379")
    assert (source.explain_failure(WRONG_PASSWORD) or "").startswith("cannot log in to MariaDB")
