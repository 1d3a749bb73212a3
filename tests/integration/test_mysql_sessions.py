"""backupd's own MySQL/MariaDB statements mean the same whatever the locale and sql_mode.

backupd runs its own statements beside the dump: it reads the database's defaults and comment,
counts rows, asks whether a restore target exists and holds anything, creates it and applies
the recorded defaults. Those statements name databases and quote comments, so they must reach
the server as the text they were built from: in utf8mb4 whatever the locale backupd runs under,
and with backslash escapes whatever the server's sql_mode. And a database holding anything a
restore would overwrite is not empty.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import mariadb_env, ok, run_backupd, storage_env, unique
from tests.servers import MariaDBServer


def literal(text: str) -> str:
    """``text`` quoted for the suite's own root client (backslash escapes on)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def schema_row(mariadb: MariaDBServer, database: str) -> str:
    return mariadb.root_sql(
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME, HEX(SCHEMA_COMMENT)"
        f" FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {literal(database)}"
    )


def manifest_of(env: dict[str, str]) -> dict[str, Any]:
    (listed,) = json.loads(run_backupd("list", "--json", env=env).stdout)
    manifest: dict[str, Any] = listed["manifest"]
    return manifest


@pytest.mark.parametrize("locale", ["C", "POSIX"])
def test_a_c_locale_keeps_non_ascii_names_and_comments(
    mariadb: MariaDBServer, moto_url: str, bucket: str, locale: str
) -> None:
    database = unique("ünï")
    mariadb.root_sql(
        f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        " COMMENT 'snow ☃ é'"
    )
    mariadb.root_sql(
        "CREATE TABLE `tâble` (v TEXT); INSERT INTO `tâble` VALUES ('☃ 😀');", database
    )
    env = {
        **mariadb_env(mariadb, database),
        **storage_env(moto_url, bucket),
        "LANG": locale,
        "LC_ALL": locale,
    }
    ok("once", env=env)
    into = unique("dëst")

    ok("restore", "--into", into, env=env)

    manifest = manifest_of(env)
    assert manifest["properties"]["comment"] == "snow ☃ é"
    assert manifest["tables"] == [{"schema": None, "name": "tâble", "rows": 1}]
    assert schema_row(mariadb, into) == schema_row(mariadb, database)
    assert mariadb.plain_dump(into) == mariadb.plain_dump(database)


@contextlib.contextmanager
def server_sql_mode(mariadb: MariaDBServer, mode: str) -> Iterator[None]:
    """``mode`` added to the server's global sql_mode (new sessions only) for the block."""
    old = mariadb.root_sql("SELECT @@GLOBAL.sql_mode").strip()
    mariadb.root_sql(f"SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, ',{mode}')")
    try:
        yield
    finally:
        mariadb.root_sql(f"SET GLOBAL sql_mode = {literal(old)}")


def test_backslashes_mean_the_same_under_no_backslash_escapes(
    mariadb: MariaDBServer, moto_url: str, bucket: str
) -> None:
    database = unique("back\\slash")
    comment = "C:\\temp\\new 'quoted'"
    mariadb.root_sql(f"CREATE DATABASE `{database}` COMMENT {literal(comment)}")
    mariadb.root_sql("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('a\\\\b''c');", database)
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    into = unique("in\\to")

    with server_sql_mode(mariadb, "NO_BACKSLASH_ESCAPES"):
        ok("once", env=env)
        ok("restore", "--into", into, env=env)
        again = run_backupd("restore", "--into", into, env=env)

    manifest = manifest_of(env)
    assert manifest["properties"]["comment"] == comment
    assert manifest["row_counts"] == "own snapshot"
    assert manifest["tables"] == [{"schema": None, "name": "t", "rows": 1}]
    assert schema_row(mariadb, into) == schema_row(mariadb, database)
    assert mariadb.plain_dump(into) == mariadb.plain_dump(database)
    assert again.returncode == 1
    assert "is not empty; add --clean" in again.stdout


BACKED_UP = """
CREATE EVENT ev ON SCHEDULE EVERY 1 DAY DISABLE COMMENT 'from the backup' DO SELECT 1;
CREATE VIEW v AS SELECT 'from the backup' AS what;
CREATE PROCEDURE p() COMMENT 'from the backup' SELECT 1;
CREATE SEQUENCE s START WITH 1;
"""


@pytest.mark.parametrize(
    ("only", "check"),
    [
        (
            "CREATE EVENT ev ON SCHEDULE EVERY 1 HOUR DISABLE COMMENT 'precious' DO SELECT 2",
            "SELECT EVENT_COMMENT FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {schema}",
        ),
        (
            "CREATE VIEW v AS SELECT 'precious' AS what",
            "SELECT VIEW_DEFINITION FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {schema}",
        ),
        (
            "CREATE PROCEDURE p() COMMENT 'precious' SELECT 2",
            "SELECT ROUTINE_COMMENT FROM information_schema.ROUTINES"
            " WHERE ROUTINE_SCHEMA = {schema}",
        ),
        (
            "CREATE SEQUENCE s START WITH 42",
            "SELECT start_value FROM {database}.s",
        ),
    ],
    ids=["event", "view", "procedure", "sequence"],
)
def test_a_database_holding_only_one_object_the_dump_replaces_is_not_empty(
    mariadb: MariaDBServer, moto_url: str, bucket: str, only: str, check: str
) -> None:
    database = unique("source")
    mariadb.create_database(database, BACKED_UP)
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    ok("once", env=env)
    occupied = unique("occupied")
    mariadb.create_database(occupied, only)
    query = check.format(schema=literal(occupied), database=f"`{occupied}`")
    before = mariadb.root_sql(query)

    refused = run_backupd("restore", "--into", occupied, env=env)

    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "is not empty; add --clean" in refused.stdout
    assert mariadb.root_sql(query) == before
    assert before.strip()
