from __future__ import annotations

from datetime import UTC, datetime

import pytest

from backupd.environment import load_target
from backupd.restore import Backup, RestoreError, StatementFilter, catalogue, choose
from backupd.storage.base import StoredObject

DUMP = (
    b"-- MariaDB dump\n"
    b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n"
    b"USE `shop`;\n"
    b"CREATE TABLE t (x text);\n"
    b"INSERT INTO t VALUES ('USE `shop`; is only text here'),('a\\nUSE `x`');\n"
    b"USE `shop`;\n"
    b"CREATE VIEW v AS SELECT 1;\n"
)
EXPECTED = (
    b"-- MariaDB dump\n"
    b"CREATE TABLE t (x text);\n"
    b"INSERT INTO t VALUES ('USE `shop`; is only text here'),('a\\nUSE `x`');\n"
    b"CREATE VIEW v AS SELECT 1;\n"
)


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 11, 64, len(DUMP)])
def test_statement_filter_drops_database_lines_however_the_stream_is_cut(cut: int) -> None:
    statements = StatementFilter()
    out = b"".join(statements.feed(DUMP[i : i + cut]) for i in range(0, len(DUMP), cut))
    assert out + statements.flush() == EXPECTED


def test_statement_filter_keeps_a_dump_without_database_lines() -> None:
    statements = StatementFilter()
    assert statements.feed(b"SELECT 1;\nSELECT 2;") + statements.flush() == b"SELECT 1;\nSELECT 2;"


TARGET = load_target(
    {"DB_HOST": "h", "DB_USER": "u", "DB_DATABASE": "app", "STORAGE_BUCKET_NAME": "bucket"}
)
MODIFIED = datetime(2026, 1, 1, tzinfo=UTC)


def stored(*keys: str) -> list[StoredObject]:
    return [StoredObject(key, 10, MODIFIED) for key in keys]


def test_catalogue_marks_completeness_and_sorts_newest_first() -> None:
    backups = catalogue(
        stored(
            "backups/20260101/backup_app_20260101_010000.dump",
            "backups/20260101/backup_app_20260101_010000.dump.manifest.json",
            "backups/20260101/backup_app_20260101_020000.dump",
            "backups/.backupd-probe-1234",
        ),
        TARGET,
    )
    assert [(b.key.rsplit("_", 1)[1], b.complete) for b in backups] == [
        ("020000.dump", False),
        ("010000.dump", True),
    ]
    assert backups[0].taken == datetime(2026, 1, 1, 2, tzinfo=UTC)


BACKUPS = [
    Backup("k3", 1, datetime(2026, 1, 3, tzinfo=UTC), True),
    Backup("k2", 1, datetime(2026, 1, 2, tzinfo=UTC), False),
    Backup("k1", 1, datetime(2026, 1, 1, tzinfo=UTC), True),
    Backup("globals_x", 1, datetime(2026, 1, 4, tzinfo=UTC), True),
]


@pytest.mark.parametrize(
    ("key", "at", "force", "chosen"),
    [
        (None, None, False, "k3"),
        (None, datetime(2026, 1, 2, 12, tzinfo=UTC), False, "k1"),
        (None, datetime(2026, 1, 3, tzinfo=UTC), False, "k3"),
        ("k2", None, True, "k2"),
        ("k1", None, False, "k1"),
    ],
)
def test_choose(key: str | None, at: datetime | None, force: bool, chosen: str) -> None:
    assert choose(BACKUPS, key, at, force).key == chosen


@pytest.mark.parametrize(
    ("key", "at", "message"),
    [
        ("k2", None, "has no manifest"),
        ("nope", None, "no backup with key 'nope'"),
        (None, datetime(2025, 1, 1, tzinfo=UTC), "no complete backup at or before 2025-01-01"),
    ],
)
def test_choose_refuses_with_a_reason(key: str | None, at: datetime | None, message: str) -> None:
    with pytest.raises(RestoreError, match=message):
        choose(BACKUPS, key, at, force=False)
