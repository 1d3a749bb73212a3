"""Every MySQL/MariaDB client backupd starts talks utf8mb4; its own statements also run under
the sql_mode their quoting is written for, whatever the server's."""

from __future__ import annotations

import pytest

from backupd.config import DatabaseConfig, Engine
from backupd.sources.mysql import Tool, client_argv, dump_argv, restore_argv, session_argv

MARIADB_DUMP = Tool("mariadb-dump", "mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB, for x")
UTF8MB4 = "--default-character-set=utf8mb4"
DUMP_TOOLS_SQL_MODE = "--init-command=SET SESSION sql_mode = ''"


def config() -> DatabaseConfig:
    return DatabaseConfig.model_validate(
        {"DB_TYPE": Engine.MARIADB, "DB_HOST": "db", "DB_USER": "u", "DB_DATABASE": "ünï"}
    )


@pytest.mark.parametrize(
    "argv",
    [
        client_argv("mariadb", config(), "SELECT 1"),
        session_argv("mariadb", config(), "ünï"),
    ],
    ids=["one query", "session"],
)
def test_backupds_own_statements_run_in_utf8mb4_with_backslash_escapes(
    argv: tuple[str, ...],
) -> None:
    assert UTF8MB4 in argv
    assert DUMP_TOOLS_SQL_MODE in argv


@pytest.mark.parametrize(
    "argv",
    [dump_argv(MARIADB_DUMP, config(), "ünï"), restore_argv("mariadb", config(), "ünï")],
    ids=["dump", "restore"],
)
def test_the_dump_and_its_restore_talk_utf8mb4_and_keep_the_dumps_own_sql_mode(
    argv: tuple[str, ...],
) -> None:
    assert UTF8MB4 in argv
    assert not any(arg.startswith("--init-command") for arg in argv)
