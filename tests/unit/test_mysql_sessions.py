"""Every MySQL/MariaDB client backupd starts talks utf8mb4, whatever the locale."""

from __future__ import annotations

import pytest

from backupd.config import DatabaseConfig, Engine
from backupd.sources.mysql import Tool, client_argv, dump_argv, restore_argv, session_argv

MARIADB_DUMP = Tool("mariadb-dump", "mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB, for x")
UTF8MB4 = "--default-character-set=utf8mb4"


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
def test_backupds_own_statements_run_in_utf8mb4(argv: tuple[str, ...]) -> None:
    assert UTF8MB4 in argv


@pytest.mark.parametrize(
    "argv",
    [dump_argv(MARIADB_DUMP, config(), "ünï"), restore_argv("mariadb", config(), "ünï")],
    ids=["dump", "restore"],
)
def test_the_dump_and_its_restore_talk_utf8mb4(argv: tuple[str, ...]) -> None:
    assert UTF8MB4 in argv
