"""Retention against the suite's S3 server: exact kept sets, what is never touched, leftovers,
Object Lock, and thousands of objects. Backups "of other dates" are written through the
catalogue's own API, or made by `backupd once` under a shifted clock (libfaketime)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from backupd import catalogue
from backupd.environment import load_target
from backupd.prune import prune
from backupd.storage.local import LocalStorage
from tests.conftest import backupd_command, child_env, pg_env, run_backupd, storage_env
from tests.integration.test_daemon import fetch, metric, start_daemon, stop
from tests.servers import FaultProxy, PostgresServer, free_port, recording_server, wait_until

BERLIN = ZoneInfo("Europe/Berlin")
FOLDER = "backups/app"
NOW = "2026-11-29 02:30:00"  # UTC, for libfaketime


def manifest_for(
    key: str, body: bytes, database: str, started: datetime, engine: str = "postgres"
) -> bytes:
    return catalogue.Manifest(
        key=key,
        sha256=hashlib.sha256(body).hexdigest(),
        size=len(body),
        started=started,
        finished=started + timedelta(seconds=1),
        duration_s=1.0,
        target="default",
        database=database,
        engine=engine,
        run_id=key.rsplit("_", 1)[-1].split(".")[0],
    ).to_bytes()


def put_backup(
    s3: Any,
    bucket: str,
    database: str,
    started: datetime,
    *,
    prefix: str = FOLDER,
    complete: bool = True,
    key: str | None = None,
    engine: str = "postgres",
    **extra: Any,
) -> str:
    """One backup as backupd writes it: the object, then its manifest."""
    extension = ".dump" if engine == "postgres" else ".sql.zst"
    key = key or catalogue.object_key(prefix, database, extension, started, catalogue.new_run_id())
    body = f"{database} {started.isoformat()}".encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
    if complete:
        manifest = manifest_for(key, body, database, started, engine)
        s3.put_object(Bucket=bucket, Key=catalogue.manifest_key(key), Body=manifest, **extra)
    return key


def put_roles(s3: Any, bucket: str, started: datetime) -> str:
    """The server globals object of ``DB_DATABASE=*``, as backupd writes it."""
    key = catalogue.object_key(
        FOLDER, "globals", ".sql", started, catalogue.new_run_id(), server_globals=True
    )
    return put_backup(s3, bucket, "globals", started, key=key)


def daily(first: datetime, days: int) -> list[datetime]:
    return [first + timedelta(days=n) for n in range(days)]  # wall-clock days in first's zone


def run_at(now: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``backupd`` with its clock (and its children's) at ``now`` UTC, or shifted by ``+2d``."""
    return subprocess.run(
        [
            "faketime",
            "-f",
            now if now.startswith(("+", "-")) else f"@{now}",
            *backupd_command(*args),
        ],
        env=child_env({**env, "TZ": "UTC"}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def keys_of(s3: Any, bucket: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def with_manifests(keys: list[str]) -> set[str]:
    return {*keys, *(catalogue.manifest_key(key) for key in keys)}


def policy_env(endpoint: str, bucket: str, **extra: str) -> dict[str, str]:
    return {
        "DB_HOST": "127.0.0.1",
        "DB_USER": "nobody",
        "DB_DATABASE": "*",
        "TIMEZONE": "Europe/Berlin",
        "STORAGE_DESTINATION_FOLDER": FOLDER,
        **storage_env(endpoint, bucket),
        **extra,
    }


def verdicts(output: str) -> dict[str, tuple[str, str]]:
    """key -> (KEEP/DELETE/ABORT, why) from the lines of ``backupd prune``."""
    found = {}
    for line in output.splitlines():
        fields = re.split(r"\s{2,}", line.strip())
        if len(fields) == 5 and fields[0] in {"KEEP", "DELETE", "ABORT"}:
            found[fields[3]] = (fields[0], fields[4])
    return found


def test_prune_keeps_exactly_the_policy_and_touches_nothing_else(
    moto_url: str, s3: Any, bucket: str
) -> None:
    october = daily(datetime(2026, 10, 1, 2, tzinfo=BERLIN), 60)  # to Sunday Nov 29
    with ThreadPoolExecutor(8) as pool:
        app = list(pool.map(lambda t: put_backup(s3, bucket, "app", t), october))
        roles = list(pool.map(lambda t: put_roles(s3, bucket, t), october[-10:]))
        # a database that stopped being backed up on Oct 23: it keeps everything
        quiet = list(pool.map(lambda t: put_backup(s3, bucket, "quiet", t), october[0:24:2]))
    old_form = f"{FOLDER}/20261002/backup_app_20261002_023000.dump"
    put_backup(s3, bucket, "app", datetime(2026, 10, 2, 2, 30, tzinfo=BERLIN), key=old_form)
    young = put_backup(s3, bucket, "app", october[0] + timedelta(hours=1), complete=False)
    foreign = [f"{FOLDER}/notes.txt", f"{FOLDER}/20261001/backup_app_20261001_020000_0123abcd.tmp"]
    for key in foreign:
        s3.put_object(Bucket=bucket, Key=key, Body=b"not a backup")
    elsewhere = [
        put_backup(s3, bucket, "app", t, prefix=prefix)
        for prefix in ("backups/app2", f"{FOLDER}/orders", "backups")
        for t in october[:3]
    ]
    stale = f"{FOLDER}/20261128/backup_app_20261128_020000_cafebabe.dump"
    sibling = "backups/app2/20261128/backup_app_20261128_020000_cafebabe.dump"
    for key in (stale, sibling):
        s3.create_multipart_upload(Bucket=bucket, Key=key)
    before = keys_of(s3, bucket)
    env = policy_env(
        moto_url,
        bucket,
        RETENTION_KEEP_DAILY="7",
        RETENTION_KEEP_WEEKLY="4",
        RETENTION_KEEP_MONTHLY="3",
    )

    dry = run_at(NOW, "prune", "--dry-run", env=env)

    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert keys_of(s3, bucket) == before
    seen = verdicts(dry.stdout)
    assert seen[app[-1]] == ("KEEP", "newest, daily 2026-11-29, weekly 2026-W48, monthly 2026-11")
    assert seen[app[-8]] == ("KEEP", "weekly 2026-W47")
    assert seen[app[30]] == ("KEEP", "monthly 2026-10")
    assert seen[app[0]] == ("DELETE", "no rule keeps it")
    assert seen[old_form] == ("DELETE", "no rule keeps it")
    assert seen[roles[0]] == ("DELETE", "no rule keeps it")
    assert seen[quiet[-1]][1].startswith("newest, daily 2026-10-23")
    assert seen[quiet[0]] == ("KEEP", "held: the newest backup is older than 1d")
    assert seen[young] == ("KEEP", "no manifest, newer than the cleanup age")
    assert seen[stale] == ("ABORT", "multipart upload, older than the cleanup age")
    assert not set(seen) & {*foreign, *elsewhere, sibling}
    assert "default: dry run: would delete 52 of 83 backup(s)" in dry.stdout

    real = run_at(NOW, "prune", env=env)

    assert real.returncode == 0, real.stdout + real.stderr
    kept = [app[-1 - n] for n in range(7)] + [app[-8], app[-15], app[-22], app[30]]
    kept += roles[-8:] + quiet
    untouched = {young, *foreign, *with_manifests(elsewhere)}
    assert keys_of(s3, bucket) == with_manifests(kept) | untouched
    uploads = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert uploads == [sibling]
    assert real.stdout.count("default: deleted 52 of 83 backup(s) and 1 leftover(s)") == 1
    assert real.stdout.rstrip().endswith("default: deleted 52 of 83 backup(s) and 1 leftover(s)")

    listed = run_at(NOW, "list", env=env)

    assert listed.returncode == 0, listed.stdout + listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[-2:] == ["KEY", "RETENTION"]
    column = {re.split(r"\s{2,}", line)[5]: re.split(r"\s{2,}", line)[-1] for line in lines[1:-1]}
    assert column[app[-1]] == "KEEP newest, daily 2026-11-29, weekly 2026-W48, monthly 2026-11"
    assert column[quiet[0]] == "KEEP held: the newest backup is older than 1d"
    assert column[young] == "-"
    # The time as `list` writes it: with the offset (an abbreviation such as CET can be
    # ambiguous), and the same in both.
    listed_at = {re.split(r"\s{2,}", line)[5]: re.split(r"\s{2,}", line)[0] for line in lines[1:-1]}
    pruned_at = {
        fields[3]: fields[1]
        for fields in (re.split(r"\s{2,}", line.strip()) for line in dry.stdout.splitlines())
        if len(fields) == 5 and fields[0] in {"KEEP", "DELETE"}
    }
    assert pruned_at[app[-1]] == listed_at[app[-1]] == "2026-11-29 02:00:00+0100"
    assert pruned_at[young] == listed_at[young]


def test_old_leftovers_are_removed_and_a_stalled_target_keeps_its_backups(
    moto_url: str, s3: Any, bucket: str
) -> None:
    week = daily(datetime(2026, 11, 20, 2, tzinfo=BERLIN), 10)
    backups = [put_backup(s3, bucket, "app", t) for t in week]
    leftover = put_backup(s3, bucket, "app", week[0] + timedelta(hours=1), complete=False)
    unreadable = put_backup(s3, bucket, "app", week[1] + timedelta(hours=1), complete=False)
    s3.put_object(Bucket=bucket, Key=catalogue.manifest_key(unreadable), Body=b"{not json")
    env = policy_env(moto_url, bucket, RETENTION_KEEP_LAST="2")

    # two days on (by the objects' own clock), with a policy whose only rule is a count
    result = run_at("+2d", "prune", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert keys_of(s3, bucket) == with_manifests([*backups[-2:], unreadable])
    seen = verdicts(result.stdout)
    assert seen[leftover] == ("DELETE", "no manifest, older than the cleanup age")
    assert seen[unreadable] == ("KEEP", "its manifest cannot be read; never deleted")

    # a daily rule, though, holds everything once the newest backup is more than a day old
    stalled = run_at("+2d", "prune", env={**env, "RETENTION_KEEP_DAILY": "1"})

    assert stalled.returncode == 0, stalled.stdout + stalled.stderr
    assert "deleted 0 of 2 backup(s)" in stalled.stdout
    assert keys_of(s3, bucket) == with_manifests([*backups[-2:], unreadable])


def test_leftovers_of_a_database_not_configured_stay_in_a_shared_folder(
    moto_url: str, s3: Any, bucket: str
) -> None:
    """DB_DATABASE=app beside another deployment backing up crm into the same folder: old
    leftovers of app go, crm's (an object without manifest, a manifest without object, an
    open multipart upload) stay, as crm's backups do."""
    old = datetime(2026, 11, 20, 2, tzinfo=BERLIN)
    mine = put_backup(s3, bucket, "app", old, complete=False)
    theirs = put_backup(s3, bucket, "crm", old, complete=False)
    lost = put_backup(s3, bucket, "crm", old + timedelta(hours=1))
    s3.delete_object(Bucket=bucket, Key=lost)
    upload_key = catalogue.object_key(FOLDER, "crm", ".dump", old, catalogue.new_run_id())
    s3.create_multipart_upload(Bucket=bucket, Key=upload_key)
    env = policy_env(moto_url, bucket, DB_DATABASE="app", RETENTION_KEEP_LAST="2")

    result = run_at("+2d", "prune", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    seen = verdicts(result.stdout)
    assert seen[mine][0] == "DELETE"
    assert theirs not in seen and catalogue.manifest_key(lost) not in seen
    assert upload_key not in seen
    assert keys_of(s3, bucket) == {theirs, catalogue.manifest_key(lost)}
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [upload_key]


def test_old_layout_leftovers_of_a_configured_database_are_removed(
    moto_url: str, s3: Any, bucket: str
) -> None:
    """Before a name's stem gained its hash, ``my db``'s keys read ``backup_my_db_...``: its
    old leftovers are found by the series its manifests name."""
    old = datetime(2026, 11, 20, 2, tzinfo=BERLIN)
    folder = f"{FOLDER}/20261120"
    kept = put_backup(s3, bucket, "my db", old, key=f"{folder}/backup_my_db_20261120_020000.dump")
    left = put_backup(
        s3, bucket, "my db", old, complete=False, key=f"{folder}/backup_my_db_20261120_030000.dump"
    )
    env = policy_env(moto_url, bucket, DB_DATABASE="my db", RETENTION_KEEP_LAST="5")

    result = run_at("+2d", "prune", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert verdicts(result.stdout)[left] == ("DELETE", "no manifest, older than the cleanup age")
    assert keys_of(s3, bucket) == with_manifests([kept])


def test_a_deployment_of_another_engine_sharing_the_folder_keeps_its_backups(
    moto_url: str, s3: Any, bucket: str
) -> None:
    """A PostgreSQL and a MariaDB deployment, each backing up a database named shop into one
    folder: each prunes, lists and verifies its own engine's backups alone."""
    days = daily(datetime(2026, 11, 20, 2, tzinfo=BERLIN), 4)
    theirs = [put_backup(s3, bucket, "shop", t, engine="mariadb") for t in days]
    mine = [put_backup(s3, bucket, "shop", t + timedelta(hours=1)) for t in days]
    other = put_backup(s3, bucket, "app", days[0])
    for database in ("shop", "*"):
        env = policy_env(moto_url, bucket, DB_DATABASE=database, RETENTION_KEEP_LAST="1")

        dry = run_at("+1h", "prune", "--dry-run", env=env)
        listed = run_at("+1h", "list", env=env)

        assert dry.returncode == 0 and listed.returncode == 0, dry.stdout + listed.stdout
        seen = verdicts(dry.stdout)
        assert not set(theirs) & set(seen), dry.stdout
        assert {seen[key][0] for key in mine[:-1]} == {"DELETE"} and seen[mine[-1]][0] == "KEEP"
        lines = {line.split()[-1]: line for line in listed.stdout.splitlines() if "DELETE" in line}
        assert not [key for key in theirs if any(key in line for line in lines.values())]
        assert (other in dry.stdout) is (database == "*")

    verified = run_at("+1h", "verify", env={**env, "DB_DATABASE": "shop"})
    assert f"verified {mine[-1]}" in verified.stdout, verified.stdout
    assert theirs[-1] not in verified.stdout

    pruned = run_at("+1h", "prune", env={**env, "DB_DATABASE": "shop"})

    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert keys_of(s3, bucket) == with_manifests([*theirs, mine[-1], other])


@pytest.fixture
def locked_bucket(s3: Any) -> str:
    name = f"l-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def test_object_lock_keeps_a_locked_backup_and_says_so(
    moto_url: str, s3: Any, locked_bucket: str
) -> None:
    week = daily(datetime(2026, 11, 20, 2, tzinfo=BERLIN), 10)
    until = datetime.now(UTC) + timedelta(days=1)
    lock = {
        "ObjectLockMode": "GOVERNANCE",
        "ObjectLockRetainUntilDate": until,
        "ChecksumAlgorithm": "CRC32",
    }
    backups = [
        put_backup(s3, locked_bucket, "app", t, **(lock if n == 1 else {}))
        for n, t in enumerate(week)
    ]
    env = policy_env(moto_url, locked_bucket, RETENTION_KEEP_LAST="2")

    result = run_at(NOW, "prune", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    kept = [backups[1], *backups[-2:]]
    assert keys_of(s3, locked_bucket) == with_manifests(kept)
    verdict, why = verdicts(result.stdout)[backups[1]]
    assert verdict == "KEEP" and why.startswith("locked until ")
    assert "1 backup(s) past retention stay under Object Lock" in result.stdout
    assert "ERROR" not in result.stdout + result.stderr
    # the versions themselves are gone, not hidden behind delete markers
    versions = s3.list_object_versions(Bucket=locked_bucket)
    assert versions.get("DeleteMarkers", []) == []
    assert {v["Key"] for v in versions["Versions"]} == with_manifests(kept)


def test_thousands_of_objects_are_listed_in_pages_and_deleted_in_batches(
    proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    hours = [datetime(2026, 10, 1, tzinfo=UTC) + timedelta(hours=n) for n in range(1_020)]
    with ThreadPoolExecutor(8) as pool:
        # 520 complete backups, and 500 objects whose manifest never came
        keys = list(pool.map(lambda t: put_backup(s3, bucket, "app", t), hours[500:]))
        orphans = list(
            pool.map(lambda t: put_backup(s3, bucket, "app", t, complete=False), hours[:500])
        )
    env = policy_env(proxy.url, bucket, RETENTION_KEEP_LAST="10")

    result = run_at("+2d", "prune", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert keys_of(s3, bucket) == with_manifests(keys[-10:])
    assert f"deleted 510 of 520 backup(s) and {len(orphans)} leftover(s)" in result.stdout
    listings = [t for m, t, _ in proxy.requests if m == "GET" and "list-type=2" in t]
    deletes = [t for m, t, _ in proxy.requests if m == "POST" and "delete" in t]
    assert len(listings) == 2  # 1,540 objects, 1,000 a page
    assert len(deletes) == 3  # 1,010 objects (510 + 500 leftovers), then 510 manifests


def test_backupd_once_prunes_after_a_successful_run_only(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = f"ret_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t AS SELECT 1 AS n;")
    earlier = [
        put_backup(s3, bucket, database, datetime(2026, 11, day, 2, tzinfo=UTC), prefix="backups")
        for day in (26, 27)
    ]
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket), "RETENTION_KEEP_DAILY": "2"}

    done = run_at("2026-11-28 02:00:00", "once", env=env)

    assert done.returncode == 0, done.stdout + done.stderr
    dumps = sorted(k for k in keys_of(s3, bucket) if k.endswith(".dump"))
    assert dumps[0] == earlier[1]
    assert [k.split("/")[1] for k in dumps] == ["20261127", "20261128"]

    failing = {**env, "DB_DATABASE": f"{database},no_such_database", "RETENTION_KEEP_LAST": "1"}
    failed = run_at("2026-11-29 02:00:00", "once", env=failing)

    assert failed.returncode == 1, failed.stdout + failed.stderr
    dumps = sorted(k for k in keys_of(s3, bucket) if k.endswith(".dump"))
    assert [k.split("/")[1] for k in dumps] == ["20261127", "20261128", "20261129"]
    assert "default: deleted" not in failed.stdout + failed.stderr


async def test_prune_in_a_folder(tmp_path: Path) -> None:
    target = load_target(
        {
            "DB_HOST": "h",
            "DB_USER": "u",
            "DB_DATABASE": "app",
            "STORAGE_TYPE": "local",
            "STORAGE_LOCAL_PATH": str(tmp_path),
            "RETENTION_KEEP_LAST": "1",
        }
    )
    storage = LocalStorage(target.storage)  # type: ignore[arg-type]
    now = datetime(2026, 11, 29, 3, tzinfo=UTC)
    keys = []
    for started in (now - timedelta(days=2), now - timedelta(days=1)):
        key = catalogue.object_key("backups", "app", ".dump", started, catalogue.new_run_id())
        await storage.put_bytes(key, b"dump", "application/octet-stream")
        manifest = manifest_for(key, b"dump", "app", started)
        await storage.put_bytes(catalogue.manifest_key(key), manifest, "application/json")
        keys.append(key)
    partial = (
        tmp_path / Path(keys[1]).parent / ".backup_app_20261128_030000_0a1b2c3d.dump.1234.partial"
    )
    partial.write_bytes(b"half")
    old = (now - timedelta(days=3)).timestamp()
    os.utime(partial, (old, old))

    result = await prune(storage, target, now=now)

    assert result.deleted == [keys[0]]
    assert not await asyncio.to_thread(partial.exists)
    assert {o.key async for o in storage.list_objects("")} == with_manifests([keys[1]])


@pytest.fixture
def services() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_the_service_prunes_after_each_run_and_counts_it(
    pg: PostgresServer,
    moto_url: str,
    s3: Any,
    bucket: str,
    services: list[subprocess.Popen[str]],
) -> None:
    database = f"svc_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t AS SELECT 1 AS n;")
    earlier = datetime.now(UTC) - timedelta(days=3)
    for hour in range(3):
        put_backup(s3, bucket, database, earlier + timedelta(hours=hour), prefix="backups")
    port = free_port()
    env = {
        **pg_env(pg, database),
        **storage_env(moto_url, bucket),
        "CRON_SCHEDULE": "0 0 1 1 *",  # the run at start-up only
        "RETENTION_KEEP_LAST": "2",
        # The earlier backups are 40-byte stand-ins: the real dump is no anomaly to hold the
        # prune back for.
        "ANOMALY_GROWTH": "1000",
        "HTTP_PORT": str(port),
        "HTTP_HOST": "127.0.0.1",
    }
    process = start_daemon(env, services)

    def pruned_twice() -> bool:
        _, text = fetch(port, "/metrics")
        return metric(text, "backupd_pruned_backups_total", target="default") >= 2

    wait_until(pruned_twice, 60, "two backups pruned after the start-up run")
    _, text = fetch(port, "/metrics")
    output = stop(process)

    assert process.returncode == 0, output
    assert metric(text, "backupd_stored_backups", target="default") == 2
    assert metric(text, "backupd_stored_bytes", target="default") > 0
    assert metric(text, "backupd_prune_runs_total", target="default", result="success") == 1
    assert metric(text, "backupd_prune_runs_total", target="default", result="failure") == 0
    assert metric(text, "backupd_last_prune_success_timestamp_seconds", target="default") > 0
    assert metric(text, "backupd_last_prune_failure_timestamp_seconds", target="default") == 0
    assert len([k for k in keys_of(s3, bucket) if k.endswith(".dump")]) == 2
    assert "Traceback" not in output


@pytest.mark.parametrize("refusal", ["request", "each key"])
def test_a_failed_prune_of_the_service_is_counted_for_alerts_and_told(
    pg: PostgresServer,
    proxy: FaultProxy,
    s3: Any,
    bucket: str,
    services: list[subprocess.Popen[str]],
    refusal: str,
) -> None:
    """Deletes refused (a policy without s3:DeleteObject), the whole request or, as AWS S3
    answers, key by key in a 200 answer: the backup succeeds, the prune fails,
    backupd_prune_runs_total{result="failure"} and backupd_last_prune_failure_timestamp_seconds
    say so (BackupdPruneFailed) and the webhook is told. Refused key by key, it counted as a
    success and nobody was told."""
    database = f"svc_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t AS SELECT 1 AS n;")
    earlier = datetime.now(UTC) - timedelta(days=3)
    for hour in range(3):
        put_backup(s3, bucket, database, earlier + timedelta(hours=hour), prefix="backups")
    if refusal == "request":
        proxy.access_denied = lambda method, target: method == "POST" and "?delete" in target
    else:
        proxy.refuse_each_delete = True
    port = free_port()
    with recording_server() as (hook_url, seen):
        env = {
            **pg_env(pg, database),
            **storage_env(proxy.url, bucket),
            "CRON_SCHEDULE": "0 0 1 1 *",  # the run at start-up only
            "RETENTION_KEEP_LAST": "2",
            "ANOMALY_GROWTH": "1000",  # 40-byte stand-ins before the real dump
            "HTTP_PORT": str(port),
            "HTTP_HOST": "127.0.0.1",
            "NOTIFY_WEBHOOK_URL": f"{hook_url}/hook",
        }
        process = start_daemon(env, services)

        def prune_failed() -> bool:
            _, text = fetch(port, "/metrics")
            counted = metric(text, "backupd_prune_runs_total", target="default", result="failure")
            return counted >= 1 and len(seen) >= 2

        wait_until(prune_failed, 60, "the failed prune counted and told")
        _, text = fetch(port, "/metrics")
        output = stop(process)

    assert process.returncode == 0, output
    assert metric(text, "backupd_runs_total", target="default", result="success") == 1
    assert metric(text, "backupd_prune_runs_total", target="default", result="success") == 0
    assert metric(text, "backupd_last_prune_failure_timestamp_seconds", target="default") > 0
    assert metric(text, "backupd_last_prune_success_timestamp_seconds", target="default") == 0
    assert "pruning FAILED" in output
    assert len([k for k in keys_of(s3, bucket) if k.endswith(".dump")]) == 4
    posted = [json.loads(r.body) for r in seen]
    assert sorted((p["kind"], p["result"]) for p in posted) == [
        ("backup", "succeeded"),
        ("prune", "failed"),
    ]


def test_prune_without_a_policy_is_a_usage_error(moto_url: str, bucket: str) -> None:
    env = policy_env(moto_url, bucket)
    result = subprocess.run(
        backupd_command("prune", "--dry-run"),
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "backupd: no target has a retention policy; set RETENTION_KEEP_* first"
    )


def test_a_database_named_globals_is_pruned_apart_from_the_server_globals(
    moto_url: str, s3: Any, bucket: str
) -> None:
    """The server globals object of ``*`` and a database really named ``globals`` are two
    series: each keeps its own newest backup, also where the database's older keys still use
    the globals stem (as ``.dump``, the form written before they were told apart)."""
    days = daily(datetime(2026, 11, 20, 2, tzinfo=BERLIN), 5)
    roles = [put_roles(s3, bucket, t) for t in days[:2]]
    old_form = [
        put_backup(
            s3,
            bucket,
            "globals",
            t,
            key=f"{FOLDER}/{t:%Y%m%d}/globals_{t:%Y%m%d_%H%M%S}_{catalogue.new_run_id()}.dump",
        )
        for t in days[2:4]
    ]
    database = put_backup(s3, bucket, "globals", days[4])
    assert "/backup_globals_" in database

    result = run_at(NOW, "prune", env=policy_env(moto_url, bucket, RETENTION_KEEP_LAST="1"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert keys_of(s3, bucket) == with_manifests([roles[-1], database])
    assert old_form  # deleted: the database's older backups


def test_an_interrupted_prune_leaves_no_manifest_without_its_object(
    proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """Manifests go first: a prune cut off between its two DeleteObjects requests leaves
    incomplete objects, which the next prune removes, never a manifest whose object is gone
    (no listing would show it)."""
    days = daily(datetime(2026, 11, 20, 2, tzinfo=BERLIN), 10)
    backups = [put_backup(s3, bucket, "app", t) for t in days]
    env = policy_env(proxy.url, bucket, RETENTION_KEEP_LAST="3")
    proxy.deletes_allowed = 1  # the manifests' request goes through, the objects' does not

    cut = run_at(NOW, "prune", env=env)

    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert keys_of(s3, bucket) == with_manifests(backups[-3:]) | set(backups[:-3])
    listed = run_at(NOW, "list", env=env)
    assert listed.stdout.count("INCOMPLETE") == 7, listed.stdout

    proxy.deletes_allowed = None
    # Pruned backups are old: their objects are past RETENTION_ABORT_UPLOADS_AFTER (24h).
    again = run_at("+2d", "prune", env=env)

    assert again.returncode == 0, again.stdout + again.stderr
    assert keys_of(s3, bucket) == with_manifests(backups[-3:])


def test_a_manifest_whose_object_is_gone_is_removed_once_old_enough(
    moto_url: str, s3: Any, bucket: str
) -> None:
    """A manifest left without its object (deleted by hand, or by an older release's
    interrupted prune) is a leftover: kept while young, removed once past the cleanup age."""
    days = daily(datetime(2026, 11, 20, 2, tzinfo=BERLIN), 4)
    backups = [put_backup(s3, bucket, "app", t) for t in days]
    s3.delete_object(Bucket=bucket, Key=backups[0])
    lost = catalogue.manifest_key(backups[0])
    env = policy_env(moto_url, bucket, RETENTION_KEEP_LAST="3")

    young = run_at(NOW, "prune", env=env)
    assert young.returncode == 0, young.stdout + young.stderr
    assert verdicts(young.stdout)[lost][0] == "KEEP"
    assert lost in keys_of(s3, bucket)

    old = run_at("+2d", "prune", "--dry-run", env=env)
    assert verdicts(old.stdout)[lost] == (
        "DELETE",
        "a manifest whose object is gone, older than the cleanup age",
    )
    assert run_at("+2d", "prune", env=env).returncode == 0
    assert keys_of(s3, bucket) == with_manifests(backups[1:])


def test_prune_judges_only_the_databases_the_target_backs_up(
    moto_url: str, s3: Any, bucket: str
) -> None:
    """Two deployments sharing a folder never prune each other's databases, and a database
    dropped from DB_DATABASE keeps what it has."""
    days = daily(datetime(2026, 11, 20, 2, tzinfo=BERLIN), 3)
    app = [put_backup(s3, bucket, "app", t) for t in days]
    crm = [put_backup(s3, bucket, "crm", t) for t in days]
    env = policy_env(moto_url, bucket, DB_DATABASE="app", RETENTION_KEEP_LAST="1")

    result = run_at(NOW, "prune", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert keys_of(s3, bucket) == with_manifests([app[-1], *crm])
    asked = run_at(NOW, "prune", "--database", "crm", env=env)
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert keys_of(s3, bucket) == with_manifests([app[-1], crm[-1]])


def test_prune_database_globals_means_the_database_where_there_is_one(
    moto_url: str, s3: Any, bucket: str
) -> None:
    days = daily(datetime(2026, 11, 20, 2, tzinfo=BERLIN), 4)
    roles = [put_roles(s3, bucket, t) for t in days[:2]]
    database = [put_backup(s3, bucket, "globals", t) for t in days[2:]]
    env = policy_env(moto_url, bucket, RETENTION_KEEP_LAST="1")

    result = run_at(NOW, "prune", "--database", "globals", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert keys_of(s3, bucket) == with_manifests([*roles, database[-1]])


def test_an_upload_still_sending_parts_is_kept_however_long_ago_it_started(
    moto_url: str, s3: Any, bucket: str
) -> None:
    """A dump that runs longer than the cleanup age (another replica's, a ``backupd once``
    beside the service) keeps its upload: what counts is its newest part, not its start. moto
    reports every upload as started in 2010, so both uploads here started "long ago"."""
    now = datetime.now(UTC)
    running = catalogue.object_key(FOLDER, "app", ".dump", now, catalogue.new_run_id())
    abandoned = catalogue.object_key(
        FOLDER, "app", ".dump", now - timedelta(days=2), catalogue.new_run_id()
    )
    started = {
        key: s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        for key in (running, abandoned)
    }
    s3.upload_part(
        Bucket=bucket, Key=running, UploadId=started[running], PartNumber=1, Body=b"x" * 1024
    )
    put_backup(s3, bucket, "app", now - timedelta(hours=3))
    env = policy_env(moto_url, bucket, RETENTION_KEEP_LAST="1", RETENTION_ABORT_UPLOADS_AFTER="1h")

    result = run_backupd("prune", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    seen = verdicts(result.stdout)
    assert seen[running] == ("KEEP", "multipart upload, newer than the cleanup age")
    assert seen[abandoned] == ("ABORT", "multipart upload, older than the cleanup age")
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [running]


def test_an_upload_whose_parts_cannot_be_listed_is_kept_with_a_warning(
    proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """A policy without s3:ListMultipartUploadParts: the prune cannot tell whether the upload
    is still being written, so it keeps it (and says why) and goes on with the rest."""
    now = datetime.now(UTC)
    upload = catalogue.object_key(FOLDER, "app", ".dump", now, catalogue.new_run_id())
    s3.create_multipart_upload(Bucket=bucket, Key=upload)  # started "in 2010", as moto says
    old = put_backup(s3, bucket, "app", now - timedelta(days=3))
    put_backup(s3, bucket, "app", now - timedelta(hours=3))
    proxy.access_denied = lambda method, target: method == "GET" and "uploadId=" in target
    env = policy_env(proxy.url, bucket, RETENTION_KEEP_LAST="1")

    result = run_backupd("prune", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    seen = verdicts(result.stdout)
    assert seen[upload] == (
        "KEEP",
        "multipart upload whose parts cannot be listed (s3:ListMultipartUploadParts); kept, "
        "as it may still be written",
    )
    assert seen[old] == ("DELETE", "no rule keeps it")
    assert f"list the parts of {upload}" in result.stdout + result.stderr
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [upload]
    assert old not in keys_of(s3, bucket)
