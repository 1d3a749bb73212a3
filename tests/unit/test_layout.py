from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from backupd.layout import (
    backup_stem,
    manifest_bytes,
    manifest_key,
    object_key,
    object_metadata,
    safe_name,
)

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("folder", "database", "extension", "when", "key"),
    [
        (
            "backups",
            "app",
            ".dump",
            datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
            "backups/20260304/backup_app_20260304_050607.dump",
        ),
        (
            "",
            "app",
            ".sql.zst",
            datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
            "20260304/backup_app_20260304_050607.sql.zst",
        ),
        (
            "a/b",
            "shop",
            ".dump.gz",
            datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
            "a/b/20261231/backup_shop_20261231_235959.dump.gz",
        ),
        # 23:30 UTC on New Year's Eve is already the next day, and year, in Berlin.
        (
            "backups",
            "app",
            ".sql",
            datetime(2026, 12, 31, 23, 30, tzinfo=UTC).astimezone(BERLIN),
            "backups/20270101/backup_app_20270101_003000.sql",
        ),
    ],
)
def test_object_key_follows_the_seed_layout_in_local_time(
    folder: str, database: str, extension: str, when: datetime, key: str
) -> None:
    assert object_key(folder, backup_stem(database), extension, when) == key


@pytest.mark.parametrize(
    ("database", "safe"),
    [
        ("app", "app"),
        ("my app", "my_app"),
        ("../../etc", ".._.._etc"),  # inside backup_{name}_{ts}: never a path segment
        ("a/b", "a_b"),
        ("Zoë", "Zoë"),
        ("///", "_"),
    ],
)
def test_database_names_become_safe_key_segments(database: str, safe: str) -> None:
    assert safe_name(database) == safe


def test_metadata_is_ascii_even_for_unicode_names() -> None:
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    metadata = object_metadata("postgres", "Zoë db", when, "UTC")
    assert metadata == {
        "backup-type": "postgres",
        "database": "Zo%C3%AB%20db",
        "upload-timestamp": "2026-03-04T05:06:07+00:00",
        "timezone": "UTC",
        "uploaded-by": metadata["uploaded-by"],
    }
    assert metadata["uploaded-by"].startswith("backupd/")
    assert all(value.isascii() for value in metadata.values())


def test_manifest_is_json_beside_the_object() -> None:
    assert manifest_key("a/b.dump") == "a/b.dump.manifest.json"
    document = json.loads(manifest_bytes({"sha256": "ab", "size": 2, "database": "Zoë"}))
    assert document["sha256"] == "ab"
    assert document["database"] == "Zoë"
    assert document["format"] == 1
    assert "backupd_version" in document
