"""``backupd list`` and ``backupd restore`` against real servers and moto."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backupd.catalogue import Manifest, manifest_key, object_key
from tests.conftest import (
    backupd_command,
    bucket_state,
    child_env,
    mariadb_env,
    pg_env,
    run_backupd,
    storage_env,
    unique,
)
from tests.integration.test_secrets import ProcessWatcher
from tests.servers import FaultProxy, MariaDBServer, PostgresServer, wait_until

DATA = Path(__file__).parent.parent / "data"


def backup(env: dict[str, str]) -> None:
    result = run_backupd("once", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    ended = int(time.time())
    wait_until(lambda: int(time.time()) > ended, 2, "the next second")  # keys carry the second


def keys_of(s3: Any, bucket: str) -> list[str]:
    return sorted(k for k in bucket_state(s3, bucket)[0] if not k.endswith(".manifest.json"))


def test_postgres_round_trip_through_list_and_restore(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("shop")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    backup(env)

    listing = run_backupd("list", "--json", env=env)
    restored = unique("restored")
    result = run_backupd("restore", "--into", restored, env=env)

    assert listing.returncode == 0, listing.stderr
    (entry,) = json.loads(listing.stdout)
    assert entry["complete"] is True
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checksum verified" in result.stdout
    assert pg.plain_dump(restored) == pg.plain_dump(database)


def test_mariadb_round_trip_renames_the_database(
    mariadb: MariaDBServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("shop")
    mariadb.create_database(database, (DATA / "mariadb_sample.sql").read_text())
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    backup(env)
    restored = unique("restored")

    result = run_backupd("restore", "--into", restored, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert mariadb.plain_dump(restored) == mariadb.plain_dump(database)
    assert mariadb.root_sql(f"SELECT COUNT(*) FROM `{database}`.customers") == mariadb.root_sql(
        f"SELECT COUNT(*) FROM `{restored}`.customers"
    )


def test_at_picks_the_newest_backup_at_or_before_the_time(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("timeline")
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    for n in (1, 2, 3):
        if n > 1:
            pg.psql(f"INSERT INTO t VALUES ({n})", database)
            time.sleep(1.05 - time.time() % 1)  # each backup in a second of its own
        backup(env)
    listing = json.loads(run_backupd("list", "--json", env=env).stdout)
    second = sorted(listing, key=lambda entry: entry["taken"])[1]

    restored = unique("restored")
    result = run_backupd("restore", "--at", second["taken"], "--into", restored, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert pg.psql("SELECT count(*) FROM t", restored).strip() == "2"
    # The time as `list` shows it, to the second: that backup, not the one before it.
    (row,) = [
        line for line in run_backupd("list", env=env).stdout.splitlines() if second["key"] in line
    ]
    shown = " ".join(row.split()[:2])
    again = unique("restored")
    result = run_backupd("restore", "--at", shown, "--into", again, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert pg.psql("SELECT count(*) FROM t", again).strip() == "2"
    too_early = run_backupd(
        "restore", "--at", "2001-01-01T00:00", "--into", unique("none"), env=env
    )
    assert too_early.returncode == 1
    assert (
        f"no complete backup of database '{database}' at or before 2001-01-01" in too_early.stdout
    )


def test_a_tampered_object_fails_on_its_checksum_and_leaves_no_database(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("tamper")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    backup(env)
    (key,) = keys_of(s3, bucket)
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))

    restored = unique("restored")
    result = run_backupd("restore", "--into", restored, env=env)
    to_file = run_backupd("restore", "--to-file", "copy.dump", env=env)

    assert result.returncode == 1
    assert "checksum mismatch" in result.stdout
    assert "restore FAILED" in result.stdout
    assert pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{restored}'").strip() == "0"
    assert to_file.returncode == 1
    assert "checksum mismatch" in to_file.stdout
    assert not Path("copy.dump").exists()


@pytest.mark.parametrize("damage", ["appended", "near the end"])
def test_damage_after_the_archive_or_in_its_last_bytes_commits_nothing(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, damage: str
) -> None:
    """pg_restore knows where its archive ends and commits there, before its input ends: an
    existing empty database gets nothing of an object with bytes appended (refused by its
    size, before anything) or damaged in its last bytes (the last piece is held back until
    the checksum is known)."""
    database = unique("tail")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket), "COMPRESSION": "none"}
    backup(env)
    (key,) = keys_of(s3, bucket)
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    if damage == "appended":
        body += bytes(8 * 1024 * 1024)
    else:
        # The last character of the last row of the last table, in -Z0's plain COPY text:
        # row\n, then a data block of its own (a sign byte and a 4-byte length) holding \.
        last = body.rindex(b"\\.\n") - 7
        assert chr(body[last]).isdigit()
        body[last] = ord("1") if body[last] != ord("1") else ord("2")
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    empty = unique("empty")
    pg.create_database(empty)

    result = run_backupd("restore", "--into", empty, env=env)

    assert result.returncode == 1, result.stdout
    assert "checksum mismatch" in result.stdout
    tables = "SELECT count(*) FROM pg_class WHERE relnamespace <> 'pg_catalog'::regnamespace"
    tables += " AND relnamespace <> 'information_schema'::regnamespace AND relkind = 'r'"
    assert pg.psql(tables, empty).strip() == "0"


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_truncated_compressed_object_restored_with_force_fails(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, tmp_path: Path, compression: str
) -> None:
    """Without a manifest there is no checksum: the end of the compressed stream is what
    tells a truncated object, and ``--force`` still refuses to call it restored."""
    database = unique("cut")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket), "COMPRESSION": compression}
    backup(env)
    (key,) = keys_of(s3, bucket)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 2])
    s3.delete_object(Bucket=bucket, Key=manifest_key(key))
    whole = tmp_path / "whole.dump"

    cut = run_backupd(
        "restore", "--key", key, "--force", "--to-file", str(tmp_path / "cut.dump"), env=env
    )
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    intact = run_backupd("restore", "--key", key, "--force", "--to-file", str(whole), env=env)

    assert cut.returncode == 1, cut.stdout
    assert f"{key} ends before its compressed stream does: the object is truncated" in cut.stdout
    assert not (tmp_path / "cut.dump").exists()
    assert intact.returncode == 0, intact.stdout
    assert whole.stat().st_size > 0


def test_a_clean_restore_stopped_after_the_drop_says_the_database_is_gone(
    pg: PostgresServer, proxy: FaultProxy, moto_url: str, s3: Any, bucket: str
) -> None:
    """--clean drops the database it replaces before restoring; a restore stopped after that
    says so, instead of only that what it created was removed."""
    database = unique("kept")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())
    env = {**pg_env(pg, database), **storage_env(proxy.url, bucket)}
    backup({**env, **storage_env(moto_url, bucket)})
    (key,) = keys_of(s3, bucket)
    victim = unique("victim")
    pg.create_database(victim, "CREATE TABLE precious (x int); INSERT INTO precious VALUES (42);")
    gets: list[str] = []

    def second_download(method: str, target: str) -> bool:
        if method == "GET" and target.split("?", 1)[0].endswith(key):
            gets.append(target)
            return len(gets) == 2  # the first reads it back against its manifest
        return False

    proxy.hold = second_download
    process = subprocess.Popen(
        backupd_command("restore", "--into", victim, "--clean"),
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(proxy.holding.is_set, 60, "the restore's download")
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    finally:
        proxy.release.set()

    assert process.returncode == 1, output
    assert f"the database {victim} that --clean replaced was dropped before the restore" in output
    assert "what it had created (a database, a file) was removed" in output
    assert pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{victim}'").strip() == "0"


def test_an_object_without_manifest_needs_its_key_and_force(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("partial")
    pg.create_database(database, "CREATE TABLE t AS SELECT 1 AS n;")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    backup(env)
    (key,) = keys_of(s3, bucket)
    s3.delete_object(Bucket=bucket, Key=f"{key}.manifest.json")

    latest = run_backupd("restore", "--into", unique("a"), env=env)
    by_key = run_backupd("restore", "--key", key, "--into", unique("b"), env=env)
    restored = unique("c")
    forced = run_backupd("restore", "--key", key, "--force", "--into", restored, env=env)

    assert latest.returncode == 1
    assert "no complete backup" in latest.stdout
    assert by_key.returncode == 1
    assert "has no manifest" in by_key.stdout
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "without checksum verification" in forced.stdout
    assert pg.psql("SELECT n FROM t", restored).strip() == "1"


def test_a_non_empty_database_is_replaced_only_with_clean(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("source")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    backup(env)
    occupied = unique("occupied")
    pg.create_database(occupied, "CREATE TABLE precious (x int); INSERT INTO precious VALUES (42);")

    refused = run_backupd("restore", "--into", occupied, env=env)
    original = run_backupd("restore", "--into", database, env=env)
    replaced = run_backupd("restore", "--into", occupied, "--clean", env=env)

    assert refused.returncode == 1
    assert "is not empty; add --clean" in refused.stdout
    assert original.returncode == 1
    assert "is the backed-up database itself; add --clean" in original.stdout
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert pg.plain_dump(occupied) == pg.plain_dump(database)


def test_a_dropped_database_is_restored_under_its_own_name_without_clean(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """--clean guards the backed-up database itself: once it is gone, nothing is overwritten."""
    database = unique("gone")
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (8);")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    backup(env)
    pg.psql(f"DROP DATABASE {database}")

    result = run_backupd("restore", "--into", database, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert pg.psql("SELECT n FROM t", database) == "8\n"


def test_a_database_holding_only_a_schema_routines_or_types_is_in_use(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """A database without tables is not empty when it holds what a restore would collide with
    or be mixed with; an extension alone (pg_dump creates it IF NOT EXISTS) is no such thing."""
    database = unique("source")
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    backup(env)
    occupied = {
        "schema": "CREATE SCHEMA app;",
        "function": "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
        "type": "CREATE TYPE mood AS ENUM ('ok');",
        "large object": "SELECT lo_from_bytea(0, 'x');",
    }
    for what, sql in occupied.items():
        name = unique("occupied")
        pg.create_database(name, sql)

        refused = run_backupd("restore", "--into", name, env=env)

        assert refused.returncode == 1, what
        assert "is not empty; add --clean" in refused.stdout, what
        assert pg.psql("SELECT count(*) FROM pg_class WHERE relname = 't'", name) == "0\n"
    with_extension = unique("extension")
    pg.create_database(with_extension, "CREATE EXTENSION citext;")

    ok = run_backupd("restore", "--into", with_extension, env=env)

    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert pg.psql("SELECT n FROM t", with_extension) == "1\n"


def test_to_file_writes_a_dump_the_stock_tools_accept(
    mariadb: MariaDBServer, moto_url: str, s3: Any, bucket: str, tmp_path: Path
) -> None:
    database = unique("export")
    mariadb.create_database(database, (DATA / "mariadb_sample.sql").read_text())
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    backup(env)
    target = tmp_path / "export.sql"

    result = run_backupd("restore", "--to-file", str(target), env=env)
    again = run_backupd("restore", "--to-file", str(target), env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert target.read_bytes().startswith(b"/*") or b"-- MariaDB dump" in target.read_bytes()[:200]
    assert again.returncode == 1
    assert "already exists" in again.stdout
    restored = unique("restored")
    mariadb.restore(target.read_bytes(), restored)
    assert mariadb.plain_dump(restored) == mariadb.plain_dump(database)


def test_list_reads_past_the_first_thousand_objects(moto_url: str, s3: Any, bucket: str) -> None:
    for n in range(1_050):
        started = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n)
        key = object_key("backups", "app", ".dump", started, f"{n:08x}")
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
        if n % 2 == 0:
            manifest = Manifest(key, "00", 1, started, started, 0.0, "default", "app", "postgres")
            s3.put_object(Bucket=bucket, Key=manifest_key(key), Body=manifest.to_bytes())
    env = {
        **storage_env(moto_url, bucket),
        "DB_HOST": "unused",
        "DB_USER": "u",
        "DB_DATABASE": "app",
    }

    listing = run_backupd("list", "--json", env=env)
    table = run_backupd("list", env=env)

    assert listing.returncode == 0, listing.stderr
    entries = json.loads(listing.stdout)
    assert len(entries) == 1_050
    assert sum(entry["complete"] for entry in entries) == 525
    complete = [entry["key"] for entry in entries if entry["complete"]]
    assert complete[0].endswith("_001728_00000418.dump")  # newest first
    assert table.stdout.splitlines()[-1] == "1050 backup(s), 525 complete"
    assert "INCOMPLETE" in table.stdout


def test_restore_needs_a_target_when_several_exist(moto_url: str, bucket: str) -> None:
    env = {
        **storage_env(moto_url, bucket),
        "BACKUPD_TARGETS": "a,b",
        "DB_HOST": "unused",
        "DB_USER": "u",
        "DB_DATABASE": "app",
    }

    result = run_backupd("restore", "--into", "x", env=env)

    assert result.returncode == 2
    assert "several targets are configured (a, b): name one with --target" in result.stderr


def test_a_new_database_is_restored_without_one_transaction_an_existing_one_within(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """One transaction holds a lock per table to its end, and a few thousand tables exhaust
    the server's lock slots: a database the restore creates (and drops again on failure) is
    loaded without one; an existing database, which a failure must leave as it was, within."""
    database = unique("locks")
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    backup(env)
    existing = unique("existing")
    pg.create_database(existing)

    tools = {}
    for into in (unique("new"), existing):
        with ProcessWatcher() as watcher:
            result = watcher.run("restore", "--into", into, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert pg.psql("SELECT n FROM t", into) == "1\n"
        (tools[into],) = {a for a in watcher.argvs() if a and Path(a[0]).name == "pg_restore"}

    assert [("--single-transaction" in argv) for argv in tools.values()] == [False, True]


def test_a_newer_backup_whose_manifest_is_damaged_is_named_when_an_older_one_is_restored(
    mariadb: MariaDBServer, moto_url: str, s3: Any, bucket: str
) -> None:
    """The newest backup's manifest cut short: it counts as incomplete, and the restore
    silently brought back the backup before it, older data, with exit 0 and not a word."""
    database = unique("shop")
    mariadb.create_database(database, "CREATE TABLE t (n INT); INSERT INTO t VALUES (1);")
    env = {**mariadb_env(mariadb, database), **storage_env(moto_url, bucket)}
    backup(env)
    time.sleep(1.1)  # another second in the key
    mariadb.root_sql("UPDATE t SET n = 2", database)
    backup(env)
    older, newest = sorted(keys_of(s3, bucket))
    document = s3.get_object(Bucket=bucket, Key=manifest_key(newest))["Body"].read()
    s3.put_object(Bucket=bucket, Key=manifest_key(newest), Body=document[:-20])
    restored = unique("restored")

    result = run_backupd("restore", "--into", restored, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert mariadb.root_sql("SELECT n FROM t", restored).strip() == "1"
    warning = next(line for line in result.stdout.splitlines() if "WARNING" in line)
    assert f"{newest} is a newer backup of {database} that is not complete" in warning
    assert "is not a backupd manifest" in warning and f"restoring the older {older}" in warning


def test_to_file_where_no_file_can_be_made_is_one_line(pg: PostgresServer, tmp_path: Path) -> None:
    database = unique("export")
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    env = {**pg_env(pg, database), "STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(tmp_path)}
    backup(env)
    (tmp_path / "a_file").write_text("in the way\n")

    result = run_backupd("restore", "--to-file", str(tmp_path / "a_file" / "x.dump"), env=env)

    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-800:]
    assert f"cannot write {tmp_path / 'a_file' / 'x.dump'} (--to-file): Not a directory" in (
        result.stdout
    )
