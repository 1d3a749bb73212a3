from __future__ import annotations

import pytest

from backupd.environment import load_target
from backupd.errors import DumpError
from backupd.sources.mssql import (
    backup_statement,
    bracket,
    explain,
    literal,
    moved_files,
    restore_statement,
    sqlcmd_argv,
    sqlcmd_env,
)

ENV = {
    "DB_TYPE": "mssql",
    "DB_HOST": "sql",
    "DB_USER": "sa",
    "DB_PASSWORD": "Secret-Pass-1",
    "DB_DATABASE": "shop",
    "STORAGE_BUCKET_NAME": "bucket",
}


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("shop", "[shop]"),
        ("odd]name", "[odd]]name]"),
        ("a]]b", "[a]]]]b]"),
        ("with space; DROP DATABASE x --", "[with space; DROP DATABASE x --]"),
        ("Zoë's", "[Zoë's]"),
    ],
)
def test_identifiers_are_bracketed_with_closing_brackets_doubled(name: str, quoted: str) -> None:
    assert bracket(name) == quoted


@pytest.mark.parametrize("name", ["", "tab\there", "x" * 129])
def test_unusable_names_are_refused(name: str) -> None:
    with pytest.raises(DumpError):
        bracket(name)


@pytest.mark.parametrize(
    ("text", "quoted"), [("a", "N'a'"), ("O'Brien", "N'O''Brien'"), ("''", "N''''''")]
)
def test_string_literals_double_quotes(text: str, quoted: str) -> None:
    assert literal(text) == quoted


@pytest.mark.parametrize(
    ("compression", "options"),
    [
        (True, "COPY_ONLY, CHECKSUM, INIT, FORMAT, COMPRESSION"),
        (False, "COPY_ONLY, CHECKSUM, INIT, FORMAT"),
    ],
)
def test_backup_statement_is_copy_only(compression: bool, options: str) -> None:
    assert backup_statement("sh]op", "/b/x's.bak", compression) == (
        f"BACKUP DATABASE [sh]]op] TO DISK = N'/b/x''s.bak' WITH {options}"
    )


def test_restore_statement_moves_files_beside_the_originals() -> None:
    moves = moved_files(
        [("shop", "/var/opt/mssql/data/shop.mdf"), ("shop_log", "D:\\Data\\shop_log.ldf")], "copy"
    )
    assert moves == [
        ("shop", "/var/opt/mssql/data/copy_shop.mdf"),
        ("shop_log", "D:\\Data\\copy_shop_log.ldf"),
    ]
    assert restore_statement("copy", "/b/r.bak", moves, replace=True) == (
        "RESTORE DATABASE [copy] FROM DISK = N'/b/r.bak' WITH "
        "MOVE N'shop' TO N'/var/opt/mssql/data/copy_shop.mdf', "
        "MOVE N'shop_log' TO N'D:\\Data\\copy_shop_log.ldf', CHECKSUM, RECOVERY, REPLACE"
    )


@pytest.mark.parametrize(("trust", "has_c"), [("false", False), ("true", True)])
def test_sqlcmd_argv_keeps_the_password_in_the_environment(trust: str, has_c: bool) -> None:
    target = load_target({**ENV, "MSSQL_TRUST_SERVER_CERTIFICATE": trust})
    argv = sqlcmd_argv(target, "SELECT 1")
    assert argv[:8] == ("sqlcmd", "-S", "tcp:sql,1433", "-U", "sa", "-d", "master", "-b")
    assert ("-C" in argv) is has_c
    assert not any("Secret-Pass-1" in arg for arg in argv)
    assert sqlcmd_env(target)["SQLCMDPASSWORD"] == "Secret-Pass-1"


def test_local_dir_defaults_to_the_server_dir() -> None:
    assert str(load_target(ENV).mssql.effective_local_dir) == "/var/opt/mssql/backup"


@pytest.mark.parametrize(
    ("output", "hint"),
    [
        (
            "Msg 3201 ... Operating system error 5(Access is denied.)",
            "writable by the SQL Server process",
        ),
        ("Login failed for user 'sa'", "cannot log in to SQL Server"),
        (
            "Msg 3201, Cannot open backup device",
            "cannot open a backup file in /var/opt/mssql/backup",
        ),
        ("Msg 156, Incorrect syntax", None),
    ],
)
def test_sqlcmd_messages_get_a_hint(output: str, hint: str | None) -> None:
    said = explain(output, load_target(ENV).mssql)
    assert (said is None) if hint is None else (hint in (said or ""))
