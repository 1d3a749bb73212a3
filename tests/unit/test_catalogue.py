"""The catalogue: key format, parsing, manifests and choosing a backup. Pure, no I/O."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backupd.catalogue import (
    Backup,
    CatalogueError,
    ChoiceError,
    Manifest,
    backups_among,
    choose,
    manifest_key,
    new_run_id,
    object_key,
    object_metadata,
    parse_key,
    safe_name,
    stem_for,
)
from backupd.cli import listing_lines, parse_at
from backupd.config import Engine
from backupd.environment import load_target
from backupd.errors import ConfigError
from backupd.prune import PruneResult
from backupd.restore import name_problem
from backupd.retention import Candidate, Decision
from backupd.storage.base import StoredObject

BERLIN = ZoneInfo("Europe/Berlin")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")


@pytest.mark.parametrize(
    ("folder", "database", "extension", "when", "key"),
    [
        (
            "backups",
            "app",
            ".dump",
            datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
            "backups/20260304/backup_app_20260304_050607_0badc0de.dump",
        ),
        (
            "",
            "app",
            ".sql.zst",
            datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
            "20260304/backup_app_20260304_050607_0badc0de.sql.zst",
        ),
        (  # a database that is really named globals, not the server globals object
            "a/b",
            "globals",
            ".sql",
            datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC),
            "a/b/20261231/backup_globals_20261231_235959_0badc0de.sql",
        ),
        # 23:30 UTC on New Year's Eve is already the next day, and year, in Berlin.
        (
            "backups",
            "app",
            ".sql",
            datetime(2026, 12, 31, 23, 30, tzinfo=UTC).astimezone(BERLIN),
            "backups/20270101/backup_app_20270101_003000_0badc0de.sql",
        ),
    ],
)
def test_object_key_is_readable_and_dated_in_local_time(
    folder: str, database: str, extension: str, when: datetime, key: str
) -> None:
    assert object_key(folder, database, extension, when, "0badc0de") == key


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


def test_distinct_databases_never_share_a_stem() -> None:
    names = ["q a", "q_a", "q/a", "q-a", "Q_A", "q__a", "Zoë", "Zo_", "Zoé", "Zo ë"]
    stems = [stem_for(name) for name in names]
    assert len(set(stems)) == len(names)
    assert stem_for("q_a") == "backup_q_a"  # a safe name keeps its plain, readable stem
    assert stem_for("q a").startswith("backup_q_a~")
    assert stem_for("q a") == stem_for("q a")  # stable across runs


def test_two_runs_never_get_the_same_key_even_in_the_same_second() -> None:
    when = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)
    run_ids = [f"{n:08x}" for n in range(10_000)]
    keys = {object_key("backups", "app", ".dump", when, run_id) for run_id in run_ids}
    assert len(keys) == 10_000  # the key tells runs apart by their run id alone
    drawn = [new_run_id() for _ in range(200)]
    assert all(len(r) == 8 and int(r, 16) >= 0 for r in drawn)
    assert len(set(drawn)) == 200  # 32 random bits: a repeat among 200 has odds of 1 in 200,000


NOW = datetime(2026, 11, 29, 5, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("key", "prefix", "expected"),
    [
        (
            "backups/20261129/backup_app_20261129_050001_0badc0de.dump",
            "backups",
            ("backup_app", "20261129_050001", "0badc0de", ".dump"),
        ),
        # The form written before run ids existed.
        (
            "backups/20261129/backup_app_20261129_050001.sql.zst",
            "backups",
            ("backup_app", "20261129_050001", None, ".sql.zst"),
        ),
        (
            "backups/20261129/backup_a_20200101_000000_20261129_050001_0badc0de.sql.zst.age",
            "backups",
            ("backup_a_20200101_000000", "20261129_050001", "0badc0de", ".sql.zst.age"),
        ),
        (
            "20261129/globals_20261129_050001_0badc0de.sql",
            "",
            ("globals", "20261129_050001", "0badc0de", ".sql"),
        ),
        ("backups/20261129/backup_app_20261129_050001.dump.manifest.json", "backups", None),
        ("backups2/20261129/backup_app_20261129_050001.dump", "backups", None),  # sibling
        ("backups/app2/20261129/backup_app_20261129_050001.dump", "backups", None),  # deeper
        ("backups/.backupd/claims/x", "backups", None),
        ("backups/20261128/backup_app_20261129_050001.dump", "backups", None),  # wrong folder
        ("backups/20261129/notes.txt", "backups", None),
        ("backups/20261129/dump_app_20261129_050001.dump", "backups", None),
        ("backups/20261129/backup_app_20261129_050001.tar", "backups", None),
    ],
)
def test_parse_key(
    key: str, prefix: str, expected: tuple[str, str, str | None, str] | None
) -> None:
    parsed = parse_key(key, prefix)
    if expected is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert (parsed.stem, parsed.stamp, parsed.run_id, parsed.extension) == expected


@pytest.mark.parametrize("database", ["app", "q a", "q/a", "Zoë", "x_20200101_000000"])
def test_written_keys_parse_back(database: str) -> None:
    key = object_key("backups/t", database, ".sql.zst", NOW.astimezone(LOS_ANGELES), "12345678")
    parsed = parse_key(key, "backups/t")
    assert parsed is not None
    assert parsed.stem == stem_for(database)
    assert parsed.run_id == "12345678"


def test_metadata_is_ascii_even_for_unicode_names() -> None:
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    metadata = object_metadata("postgres", "Zoë db", when, "UTC")
    assert metadata["database"] == "Zo%C3%AB%20db"
    assert metadata["upload-timestamp"] == "2026-03-04T05:06:07+00:00"
    assert metadata["uploaded-by"].startswith("backupd/")
    assert all(value.isascii() for value in metadata.values())


def manifest(key: str, database: str = "app", started: datetime = NOW, **extra: object) -> Manifest:
    return Manifest(
        key=key,
        sha256="ab" * 32,
        size=10,
        started=started,
        finished=started + timedelta(seconds=3),
        duration_s=3.0,
        target="default",
        database=database,
        engine="postgres",
        run_id="0badc0de",
        properties={"encoding": "UTF8"},
        **extra,  # type: ignore[arg-type]
    )


def test_manifest_round_trips_and_keeps_unknown_fields() -> None:
    original = manifest("k", started=NOW.astimezone(LOS_ANGELES), extra={"future": [1, 2]})
    data = original.to_bytes()
    document = json.loads(data)
    assert document["format"] == 2
    assert document["future"] == [1, 2]
    assert document["started"] == "2026-11-28T21:00:01-08:00"
    again = Manifest.from_bytes(data, "k")
    assert again == original
    assert again.started == NOW  # the same instant, whatever the zone it was written in


def test_format_1_manifests_of_mysql_dumps_name_their_database() -> None:
    document = json.loads(manifest("k").to_bytes())
    document.update(format=1, engine="mariadb")
    del document["names_database"], document["properties"], document["run_id"]
    old = Manifest.from_bytes(json.dumps(document).encode(), "k")
    assert old.names_database is True
    assert old.properties == {}


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"key": "k"}', manifest("other").to_bytes()],
)
def test_a_malformed_manifest_is_an_error_naming_its_key(data: bytes) -> None:
    with pytest.raises(CatalogueError, match=r"k\.manifest\.json"):
        Manifest.from_bytes(data, "k")


def backup(key: str, database: str | None, started: datetime) -> Backup:
    parsed = parse_key(key, "backups")
    assert parsed is not None
    made = manifest(key, database, started) if database is not None else None
    return Backup(key, 10, started, parsed, made)


def at(hour: int) -> datetime:
    return datetime(2026, 11, 29, hour, tzinfo=UTC)


def key_for(database: str, hour: int) -> str:
    return object_key("backups", database, ".dump", at(hour), f"{hour:08x}")


BACKUPS = [
    backup(key_for("a", 3), "a", at(3)),
    backup(key_for("b", 4), "b", at(4)),  # newest overall, another database
    backup(key_for("a", 2), None, at(2)),  # incomplete
    backup(key_for("a", 1), "a", at(1)),
    backup(key_for("globals", 5), "globals", at(5)),
]


@pytest.mark.parametrize(
    ("database", "key", "moment", "force", "chosen"),
    [
        ("a", None, None, False, key_for("a", 3)),
        ("b", None, None, False, key_for("b", 4)),
        ("a", None, at(2), False, key_for("a", 1)),
        ("a", None, at(3), False, key_for("a", 3)),
        # An instant given in another zone is the same instant.
        ("a", None, at(2).astimezone(LOS_ANGELES), False, key_for("a", 1)),
        (None, key_for("a", 2), None, True, key_for("a", 2)),
        (None, key_for("b", 4), None, False, key_for("b", 4)),
    ],
)
def test_choose(
    database: str | None, key: str | None, moment: datetime | None, force: bool, chosen: str
) -> None:
    assert choose(BACKUPS, database=database, key=key, at=moment, force=force).key == chosen


@pytest.mark.parametrize(
    ("database", "key", "moment", "message"),
    [
        (None, key_for("a", 2), None, "no manifest"),
        (None, "nope", None, "no backup with key 'nope'"),
        ("a", None, at(0), "no complete backup of database 'a' at or before"),
        ("c", None, None, "no complete backup of database 'c'"),
        ("b", key_for("a", 3), None, "is a backup of database 'a', not 'b'"),
    ],
)
def test_choose_refuses_with_a_reason(
    database: str | None, key: str | None, moment: datetime | None, message: str
) -> None:
    with pytest.raises(ChoiceError, match=message):
        choose(BACKUPS, database=database, key=key, at=moment)


def test_only_backupd_keys_directly_under_the_prefix_are_backups() -> None:
    keys = [
        key_for("a", 1),
        manifest_key(key_for("a", 1)),
        "backups/.backupd/claims/default/backup/20261129T010000Z",
        "backups/.backupd-probe-1234",
        "backups/app2/20261129/backup_a_20261129_010000.dump",
        "backupsX/20261129/backup_a_20261129_010000.dump",
        "backups/20261129/README.txt",
    ]
    found, manifests = backups_among(
        (StoredObject(k, 1, at(1)) for k in itertools.chain(keys)), "backups"
    )
    assert [parsed.key for parsed, _ in found] == [key_for("a", 1)]
    assert manifests == {manifest_key(key_for("a", 1))}


@pytest.mark.parametrize(
    ("engine", "name", "refused"),
    [
        (Engine.POSTGRES, "x" * 63, False),
        (Engine.POSTGRES, "x" * 64, True),
        (Engine.POSTGRES, "é" * 32, True),  # 64 bytes
        (Engine.MARIADB, "é" * 64, False),
        (Engine.MARIADB, "x" * 65, True),
        (Engine.MYSQL, "a\nb", True),
    ],
)
def test_restore_refuses_a_name_the_server_would_truncate_or_refuse(
    engine: Engine, name: str, refused: bool
) -> None:
    assert (name_problem(engine, name) is not None) is refused


def test_an_empty_restore_name_is_named_as_empty() -> None:
    assert name_problem(Engine.POSTGRES, "") == (
        "--into is empty: give it the name of the database to restore into"
    )


def test_a_database_named_twice_is_a_config_error() -> None:
    env = {"DB_HOST": "h", "DB_USER": "u", "DB_DATABASE": "a, b, a", "STORAGE_BUCKET_NAME": "bkt"}
    with pytest.raises(ConfigError, match="DB_DATABASE: names a more than once"):
        load_target(env)


@pytest.mark.parametrize(
    ("text", "expected", "warned"),
    [
        ("2026-10-25T02:30", "2026-10-25T02:30:59.999999+02:00", True),  # the repeated hour
        ("2026-10-25T04:30", "2026-10-25T04:30:59.999999+01:00", False),
        ("2026-10-25T02:30+01:00", "2026-10-25T02:30:59.999999+01:00", False),
        # To the second, as `list` shows times: a backup started within that second counts.
        ("2026-11-30 00:07:43+0100", "2026-11-30T00:07:43.999999+01:00", False),
        ("2026-11-30T00:07:43.250", "2026-11-30T00:07:43.250000+01:00", False),
        ("2026-11-28", "2026-11-28T23:59:59.999999+01:00", False),
        ("2026-11-28T02", "2026-11-28T02:59:59.999999+01:00", False),
        ("20261128T0200Z", "2026-11-28T02:00:59.999999+00:00", False),
        ("2026-10-25", "2026-10-25T23:59:59.999999+01:00", False),  # a 25-hour day
        ("2026-11-28t02:00", "2026-11-28T02:00:59.999999+01:00", False),  # any separator
        ("2026-11-28_02:00:43Z", "2026-11-28T02:00:43.999999+00:00", False),
        ("2026-W48", "2026-11-29T23:59:59.999999+01:00", False),  # the whole ISO week
        ("2026-W48-6", "2026-11-28T23:59:59.999999+01:00", False),
    ],
)
def test_at_without_an_offset_is_read_in_timezone_and_ambiguity_is_said(
    text: str, expected: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"DB_HOST": "h", "DB_USER": "u", "DB_DATABASE": "a", "STORAGE_BUCKET_NAME": "bkt"}
    target = load_target({**env, "TIMEZONE": "Europe/Berlin"})
    assert parse_at(text, target).isoformat() == expected
    assert ("ambiguous" in caplog.text) is warned


def test_the_server_globals_object_and_a_database_named_globals_never_share_a_series() -> None:
    when = datetime(2026, 11, 29, 5, 0, 1, tzinfo=UTC)
    roles = object_key("b", "globals", ".sql.zst", when, "0badc0de", server_globals=True)
    database = object_key("b", "globals", ".dump", when, "0badc0de")
    # Before, a PostgreSQL database named globals was stored under the globals stem too.
    old_database = "b/20261129/globals_20261129_050001_0badc0de.dump.age"
    parsed = {key: parse_key(key, "b") for key in (roles, database, old_database)}

    assert roles == "b/20261129/globals_20261129_050001_0badc0de.sql.zst"
    assert database == "b/20261129/backup_globals_20261129_050001_0badc0de.dump"
    assert [p.is_globals for p in parsed.values() if p] == [True, False, False]
    assert [p.series for p in parsed.values() if p] == ["globals", *[stem_for("globals")] * 2]


def test_restoring_globals_means_the_database_of_that_name_where_there_is_one() -> None:
    when = datetime(2026, 11, 29, 5, 0, 1, tzinfo=UTC)

    def backup(key: str, engine: str, minutes: int) -> Backup:
        parsed = parse_key(key, "b")
        assert parsed is not None
        started = when + timedelta(minutes=minutes)
        manifest = Manifest(key, "0" * 64, 1, started, started, 1.0, "default", "globals", engine)
        return Backup(key, 1, started, parsed, manifest)

    roles = backup(
        object_key("b", "globals", ".sql", when, "00000001", server_globals=True), "postgres", 2
    )
    database = backup(object_key("b", "globals", ".dump", when, "00000002"), "postgres", 1)
    mysql_old = backup("b/20261129/globals_20261129_050001_00000003.sql", "mariadb", 3)

    assert choose([roles, database], database="globals") is database
    assert choose([roles], database="globals") is roles
    assert not mysql_old.is_globals and roles.is_globals and not database.is_globals
    assert choose([roles, mysql_old], database="globals") is mysql_old


def test_a_restore_chooses_among_its_own_engines_backups() -> None:
    when = datetime(2026, 11, 29, 5, 0, 1, tzinfo=UTC)

    def made(engine: str, minutes: int, run_id: str) -> Backup:
        started = when + timedelta(minutes=minutes)
        key = object_key("b", "shop", ".dump", started, run_id)
        parsed = parse_key(key, "b")
        assert parsed is not None
        manifest = Manifest(key, "0" * 64, 1, started, started, 1.0, "default", "shop", engine)
        return Backup(key, 1, started, parsed, manifest)

    postgres, mariadb, mysql = (
        made("postgres", 1, "00000001"),
        made("mariadb", 2, "00000002"),
        made("mysql", 3, "00000003"),
    )
    found = [postgres, mariadb, mysql]

    assert choose(found, database="shop", engine="postgres") is postgres
    assert choose(found, database="shop", engine="mariadb") is mysql  # one family
    assert choose([postgres, mariadb], database="shop", engine="mysql") is mariadb
    assert choose(found, database="shop") is mysql
    with pytest.raises(ChoiceError, match="no complete backup of database 'shop'"):
        choose([mariadb], database="shop", engine="postgres")


def test_list_shows_a_database_named_with_a_line_break_on_one_row() -> None:
    """``DB_DATABASE=*`` backs up every database, whatever its name: ``list``'s table keeps one
    row per backup, the name's control characters escaped as in logs and mail subjects."""
    env = {"DB_HOST": "h", "DB_USER": "u", "DB_DATABASE": "*", "STORAGE_BUCKET_NAME": "bkt"}
    target = load_target(env)
    odd = "line\nbreak\x1b[2J"
    backups = [backup(key_for(odd, 3), odd, at(3)), backup(key_for("shop", 2), "shop", at(2))]

    decided = PruneResult(
        "default",
        dry_run=True,
        decisions=[
            Decision(Candidate(b.key, b.database or "", b.taken), True, ()) for b in backups
        ],
    )

    lines = listing_lines(backups, target)
    pruned = decided.lines()

    assert len(lines) == 3
    assert "line\\nbreak\\x1b[2J  " in lines[1]
    assert "line\\nbreak\\x1b[2J  " in pruned[0]
    assert all(line.isprintable() for line in lines + pruned)
