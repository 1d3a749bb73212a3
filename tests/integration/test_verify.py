"""``backupd verify``: read-back against the manifest, and restore drills on real servers."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from backupd.catalogue import Manifest, manifest_key
from backupd.config import DatabaseConfig
from backupd.sources.postgres import PostgresSource
from tests.conftest import (
    as_target,
    backupd_command,
    bucket_state,
    child_env,
    mariadb_env,
    pg_env,
    run_backupd,
    storage_env,
    unique,
)
from tests.integration import test_notify
from tests.integration.test_daemon import fetch, metric
from tests.integration.test_failures import finish, start_backupd
from tests.integration.test_notify import Received
from tests.servers import MariaDBServer, PostgresServer, free_port, wait_until

DATA = Path(__file__).parent.parent / "data"
receiver = test_notify.receiver  # a local HTTP server recording the webhook's POSTs


def backup(env: dict[str, str]) -> None:
    result = run_backupd("once", env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def the_key(s3: Any, bucket: str) -> str:
    (key,) = [k for k in bucket_state(s3, bucket)[0] if not k.endswith(".manifest.json")]
    return key


def manifest_of(s3: Any, bucket: str, key: str) -> Manifest:
    body = s3.get_object(Bucket=bucket, Key=manifest_key(key))["Body"].read()
    return Manifest.from_bytes(body, key)


def pg_scratch(pg: PostgresServer, prefix: str) -> list[str]:
    rows = pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%'")
    return rows.split()


def maria_scratch(mariadb: MariaDBServer, prefix: str) -> list[str]:
    rows = mariadb.root_sql(
        f"SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE '{prefix}%'"
    )
    return rows.split()


def test_postgres_manifest_records_exact_row_counts_and_a_drill_passes(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("shop")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())
    pg.psql(
        'CREATE SCHEMA "odd ""schema"""; CREATE TABLE "odd ""schema"""."t\tab"'
        " AS SELECT g FROM generate_series(1, 7) g",
        database,
    )
    prefix = unique("drill").lower() + "_"
    env = {
        **pg_env(pg, database),
        **storage_env(moto_url, bucket),
        "VERIFY_DRILL_DATABASE_PREFIX": prefix,
    }
    backup(env)
    key = the_key(s3, bucket)

    manifest = manifest_of(s3, bucket, key)
    result = run_backupd("verify", "--drill", env=env)
    elsewhere = run_backupd(
        "verify",
        "--drill",
        env={**env, "VERIFY_DB_USER": "drill_nobody", "VERIFY_DB_PASSWORD": "drill-Secret-77"},
    )

    assert manifest.row_counts == "dump snapshot"
    counts = {(t["schema"], t["name"]): t["rows"] for t in manifest.tables or []}
    assert counts[("public", "customers")] == int(
        pg.psql("SELECT count(*) FROM customers", database)
    )
    assert counts[('odd "schema"', "t\tab")] == 7
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"verified {key}" in result.stdout
    assert "drill restored it in" in result.stdout
    assert pg_scratch(pg, prefix) == []
    # The drill logs in as VERIFY_DB_USER, and says so when it cannot; the bytes still verify.
    assert elsewhere.returncode == 1
    assert "the restore failed: cannot log in to PostgreSQL at 127.0.0.1" in elsewhere.stdout
    assert "as drill_nobody" in elsewhere.stdout
    assert not re.search(r"\bDB_PASSWORD", elsewhere.stdout)  # not the backups' own login
    assert "drill-Secret-77" not in elsewhere.stdout + elsewhere.stderr


def test_a_tampered_object_and_a_missing_manifest_fail_naming_the_key(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("tamper")
    pg.create_database(database, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    backup(env)
    key = the_key(s3, bucket)
    intact = run_backupd("verify", "--all", env=env)
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))

    tampered = run_backupd("verify", "--key", key, env=env)
    s3.delete_object(Bucket=bucket, Key=manifest_key(key))
    unlisted = run_backupd("verify", env=env)

    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert f"verified {key}" in intact.stdout
    assert tampered.returncode == 1
    assert f"VERIFY FAILED: {key}: read back" in tampered.stdout
    assert "damaged or was altered" in tampered.stdout
    assert unlisted.returncode == 1
    assert f"VERIFY FAILED: {key}: it has no manifest" in unlisted.stdout
    assert "Traceback" not in tampered.stdout + tampered.stderr + unlisted.stderr


def test_a_drill_refused_its_login_is_one_error_and_drops_nothing(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    """A login the drill's server refuses creates no scratch database: the drill fails with
    that one line, not also with a failed clean-up of a database that never existed."""
    database = unique("shop")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    backup(env)
    key = the_key(s3, bucket)

    result = run_backupd(
        "verify",
        "--drill",
        env={**env, "VERIFY_DB_USER": "drill_nobody", "VERIFY_DB_PASSWORD": "drill-Secret-78"},
    )

    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stdout
    assert f"VERIFY FAILED: drill of {key}: the restore failed: cannot log in" in errors[0]
    assert "drop" not in result.stdout
    assert "drill-Secret-78" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("target", ["orders", None])
@pytest.mark.parametrize("engine", ["postgres", "mariadb"])
def test_a_drill_refused_its_own_login_names_the_targets_verify_db_variables(
    request: pytest.FixtureRequest,
    engine: str,
    target: str | None,
    moto_url: str,
    s3: Any,
    bucket: str,
) -> None:
    server = request.getfixturevalue("pg" if engine == "postgres" else "mariadb")
    make_env = pg_env if engine == "postgres" else mariadb_env
    database = unique("shop")
    server.create_database(
        database, "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1);"
    )
    env = as_target(target, {**make_env(server, database), **storage_env(moto_url, bucket)})
    backup(env)
    own = f"{target.upper()}_" if target else ""
    login = {f"{own}VERIFY_DB_USER": "drill_nobody", f"{own}VERIFY_DB_PASSWORD": "drill-Secret-79"}

    result = run_backupd("verify", "--drill", env={**env, **login})

    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if "VERIFY FAILED" in line]
    assert len(failed) == 1, result.stdout
    assert "the restore failed: cannot log in to" in failed[0]
    assert failed[0].endswith(f" ({own}VERIFY_DB_USER, {own}VERIFY_DB_PASSWORD)"), failed
    assert "drill-Secret-79" not in result.stdout + result.stderr
    assert server.password not in result.stdout + result.stderr


def test_mariadb_drill_passes_with_its_own_snapshot_counts(
    mariadb: MariaDBServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("shop")
    mariadb.create_database(database, (DATA / "mariadb_sample.sql").read_text())
    prefix = unique("drill").lower() + "_"
    env = {
        **mariadb_env(mariadb, database),
        **storage_env(moto_url, bucket),
        "VERIFY_DRILL_DATABASE_PREFIX": prefix,
    }
    backup(env)
    key = the_key(s3, bucket)

    manifest = manifest_of(s3, bucket, key)
    result = run_backupd("verify", "--drill", "--database", database, env=env)

    assert manifest.row_counts == "own snapshot"
    counts = {t["name"]: t["rows"] for t in manifest.tables or []}
    assert counts["customers"] == int(
        mariadb.root_sql(f"SELECT COUNT(*) FROM `{database}`.customers")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "drill restored it in" in result.stdout
    assert maria_scratch(mariadb, prefix) == []


def test_a_drill_fails_when_a_recorded_table_is_missing_and_drops_its_database(
    pg: PostgresServer, mariadb: MariaDBServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("shop")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())
    prefix = unique("drill").lower() + "_"
    env = {
        **pg_env(pg, database),
        **storage_env(moto_url, bucket),
        "VERIFY_DRILL_DATABASE_PREFIX": prefix,
    }
    backup(env)
    key = the_key(s3, bucket)
    manifest = manifest_of(s3, bucket, key)
    # A stand-in manifest: the object is intact, but it records a table the dump lacks.
    tables = [*(manifest.tables or []), {"schema": "public", "name": "ghost", "rows": 5}]
    stand_in = Manifest(**{**manifest.__dict__, "tables": tables})
    s3.put_object(Bucket=bucket, Key=manifest_key(key), Body=stand_in.to_bytes())

    result = run_backupd("verify", "--drill", env=env)

    assert result.returncode == 1
    assert f"VERIFY FAILED: drill of {key}: table public.ghost is missing" in result.stdout
    assert pg_scratch(pg, prefix) == []


def test_sigterm_during_a_drill_drops_the_scratch_database(
    pg: PostgresServer, big_pg_database: str, moto_url: str, s3: Any, bucket: str
) -> None:
    prefix = unique("drill").lower() + "_"
    env = {
        **pg_env(pg, big_pg_database),
        **storage_env(moto_url, bucket),
        "VERIFY_DRILL_DATABASE_PREFIX": prefix,
    }
    backup(env)
    process = subprocess.Popen(
        backupd_command("verify", "--drill"),
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: bool(pg_scratch(pg, prefix)), 60, "the scratch database")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 1, output
    assert "interrupted" in output
    assert pg_scratch(pg, prefix) == []
    assert "Traceback" not in output


def test_run_verifies_and_drills_on_verify_schedule_and_exports_the_metrics(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("sched")
    pg.create_database(database, "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
    prefix = unique("drill").lower() + "_"
    port = free_port()
    env = {
        **pg_env(pg, database),
        **storage_env(moto_url, bucket),
        "CRON_SCHEDULE": "0 0 1 1 *",  # the start-up backup only
        "VERIFY_SCHEDULE": "*/2 * * * * *",
        "VERIFY_DRILL": "true",
        "VERIFY_DRILL_DATABASE_PREFIX": prefix,
        "HTTP_PORT": str(port),
        "HTTP_HOST": "127.0.0.1",
        "MAX_CONCURRENT_BACKUPS": "1",
    }
    process = subprocess.Popen(
        backupd_command("run"),
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def verified_twice() -> bool:
            _, text = fetch(port, "/metrics")
            return metric(text, "backupd_verify_runs_total", result="success") >= 2

        wait_until(verified_twice, 60, "two verify runs")
        _, text = fetch(port, "/metrics")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    # The first verify waited for the start-up backup instead of finding nothing.
    assert metric(text, "backupd_verify_runs_total", result="failure") == 0, output
    labels = {"target": "default", "database": database}
    assert metric(text, "backupd_last_verify_success_timestamp_seconds", **labels) > 0
    assert metric(text, "backupd_last_drill_restore_seconds", **labels) > 0
    assert metric(text, "backupd_runs_total", result="success") == 1
    assert "drill restored it in" in output
    assert pg_scratch(pg, prefix) == []


def age_key(folder: Path) -> tuple[Path, str]:
    """A new age identity file in ``folder``, and its recipient (public key)."""
    identity = folder / "key.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return identity, recipient


def test_an_encrypted_backup_verifies_without_identity_and_drills_with_one(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, tmp_path: Path
) -> None:
    identity, recipient = age_key(tmp_path)
    database = unique("vault")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())
    prefix = unique("drill").lower() + "_"
    env = {
        **pg_env(pg, database),
        **storage_env(moto_url, bucket),
        "ENCRYPTION_RECIPIENTS": recipient,
        "VERIFY_DRILL_DATABASE_PREFIX": prefix,
    }
    backup(env)
    key = the_key(s3, bucket)

    without = run_backupd("verify", "--drill", env=env)
    drilled = run_backupd(
        "verify", "--drill", env={**env, "ENCRYPTION_IDENTITY_FILE": str(identity)}
    )
    stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=stored[:-1] + bytes([stored[-1] ^ 1]))
    damaged = run_backupd("verify", env=env)

    assert key.endswith(".age") and stored.startswith(b"age-encryption.org/v1")
    assert manifest_of(s3, bucket, key).tables, "counts are recorded for encrypted backups too"
    assert without.returncode == 0, without.stdout + without.stderr
    assert f"verified {key}: {len(stored):,} bytes" in without.stdout
    assert "skipped: it is encrypted and ENCRYPTION_IDENTITY_FILE is not set" in without.stdout
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    assert "drill restored it in" in drilled.stdout
    assert damaged.returncode == 1
    assert f"VERIFY FAILED: {key}: read back" in damaged.stdout
    assert pg_scratch(pg, prefix) == []


def test_a_skipped_drill_is_said_in_the_report_not_only_in_the_log(
    pg: PostgresServer,
    moto_url: str,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    receiver: tuple[str, list[Received]],
) -> None:
    """A drill asked for but skipped (an encrypted backup, no ENCRYPTION_IDENTITY_FILE) is
    in the report's note, which mail and webhooks carry: "verified" alone reads as if the
    restore had been proven."""
    url, seen = receiver
    _, recipient = age_key(tmp_path)
    database = unique("vault")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())
    env = {
        **pg_env(pg, database),
        **storage_env(moto_url, bucket),
        "ENCRYPTION_RECIPIENTS": recipient,
        "NOTIFY_WEBHOOK_URL": f"{url}/hook",
    }
    backup(env)
    key = the_key(s3, bucket)

    result = run_backupd("verify", "--drill", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    (hook,) = [json.loads(r.body) for r in seen if r.path == "/hook" and b'"verify"' in r.body]
    assert hook["kind"] == "verify" and hook["result"] == "succeeded"
    skipped = "drill skipped: it is encrypted and ENCRYPTION_IDENTITY_FILE is not set"
    assert hook["note"].startswith(f"verified {key}: ") and hook["note"].endswith(skipped)
    assert f"{skipped}" in result.stdout
    assert "drill restored it" not in result.stdout


def test_postgres_counts_are_the_dumps_own_rows_while_writes_go_on(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("busy")
    pg.create_database(
        database,
        "CREATE TABLE t AS SELECT g, md5(g::text) AS m FROM generate_series(1, 20000) g;"
        " CREATE TABLE stop (n int);",
    )
    prefix = unique("drill").lower() + "_"
    env = {
        **pg_env(pg, database),
        **storage_env(moto_url, bucket),
        "VERIFY_DRILL_DATABASE_PREFIX": prefix,
    }
    # Hundreds of small commits a second until told to stop: without a shared snapshot, rows
    # committed between the count and the dump's own snapshot would make them differ.
    writer = subprocess.Popen(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", WRITE_UNTIL_STOPPED],
        env={**child_env({}), **pg.env(database)},
    )
    try:
        wait_until(lambda: int(pg.psql("SELECT count(*) FROM t", database)) > 20000, 10, "writes")
        backup(env)
    finally:
        pg.psql("INSERT INTO stop VALUES (1)", database)
        writer.wait(timeout=30)
    drill = run_backupd("verify", "--drill", env=env)

    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "1 recorded table(s) with their rows" not in drill.stdout  # t and stop
    assert "2 recorded table(s) with their rows" in drill.stdout
    assert pg_scratch(pg, prefix) == []


WRITE_UNTIL_STOPPED = """DO $$ BEGIN
    WHILE NOT EXISTS (SELECT 1 FROM stop) AND clock_timestamp() < now() + interval '60 s' LOOP
        INSERT INTO t SELECT g, 'x' FROM generate_series(1, 10) g;
        COMMIT;
        PERFORM pg_sleep(0.001);
    END LOOP;
END $$"""


def test_with_coordination_each_verify_slot_is_claimed_and_run_once(
    pg: PostgresServer, atomic_moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("claimed")
    pg.create_database(database, "CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g")
    port = free_port()
    env = {
        **pg_env(pg, database),
        **storage_env(atomic_moto_url, bucket),
        "CRON_SCHEDULE": "0 0 1 1 *",
        "VERIFY_SCHEDULE": "*/2 * * * * *",
        "COORDINATION": "storage",
        "REPLICA_ID": "r1",
        "HTTP_PORT": str(port),
        "HTTP_HOST": "127.0.0.1",
    }
    process = subprocess.Popen(
        backupd_command("run"),
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def verified() -> bool:
            _, text = fetch(port, "/metrics")
            return metric(text, "backupd_verify_runs_total", result="success") >= 1

        wait_until(verified, 60, "a verify run")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    keys, _ = bucket_state(s3, bucket)
    verify_claims = [
        k for k in keys if re.search(r"/\.backupd/claims/default\.[0-9a-f]{8}/verify/", k)
    ]
    assert process.returncode == 0, output
    assert verify_claims, keys
    states = {
        json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read())["state"]
        for k in verify_claims
    }
    assert "done" in states, states


def test_with_row_counts_off_a_backup_records_none_and_a_drill_checks_the_restore(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("uncounted")
    pg.create_database(database, "CREATE TABLE t AS SELECT g FROM generate_series(1, 500) g")
    prefix = unique("drill").lower() + "_"
    env = {
        **pg_env(pg, database),
        **storage_env(moto_url, bucket),
        "VERIFY_ROW_COUNTS": "off",
        "VERIFY_DRILL_DATABASE_PREFIX": prefix,
    }
    backup(env)
    key = the_key(s3, bucket)

    manifest = manifest_of(s3, bucket, key)
    drilled = run_backupd("verify", "--drill", env=env)

    assert manifest.tables is None
    assert manifest.row_counts is None
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    assert "records no tables: the drill checked the restore only" in drilled.stdout
    assert pg_scratch(pg, prefix) == []


def test_a_backup_whose_object_is_gone_but_manifest_remains_fails_naming_it(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    """A missing object is a failure, also when only its manifest is left to tell of it:
    plain verify must not quietly check the older backup instead."""
    database = unique("lost")
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    backup(env)
    older = the_key(s3, bucket)
    backup(env)
    (newest,) = [k for k in bucket_state(s3, bucket)[0] if k != older and "manifest" not in k]
    s3.delete_object(Bucket=bucket, Key=newest)

    for args in ((), ("--all",), ("--key", newest)):
        result = run_backupd("verify", *args, env=env)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"{newest}: its object is missing (its manifest remains)" in result.stdout
        assert "Traceback" not in result.stdout + result.stderr
    assert run_backupd("verify", "--key", older, env=env).returncode == 0


def test_a_counting_session_ended_by_the_server_is_a_warning_and_the_dump_goes_on(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    """psql's "connection to server was lost" read as a failed login, which the dump would
    report: a session the server ended after its login (an administrator, a timeout) lost the
    backup's row counts with a debug line only."""
    database = unique("ended")
    pg.create_database(database, "CREATE TABLE t AS SELECT g FROM generate_series(1, 10) g")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    locker = subprocess.Popen(
        ["psql", "-X", "-q", "-c", "BEGIN; LOCK TABLE t; SELECT pg_sleep(60); COMMIT"],
        env={**child_env({}), **pg.env(database), "PGAPPNAME": "locker"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    waiting = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE %'"
    )
    try:
        wait_until(
            lambda: (
                pg.psql(
                    "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted",
                    database,
                ).strip()
                != "0"
            ),
            10,
            "the lock",
        )
        process = start_backupd(env)
        wait_until(lambda: pg.psql(waiting, database).strip() != "", 30, "the session's wait")
        pg.psql(f"SELECT pg_terminate_backend(pid) FROM ({waiting}) w", database)
    finally:
        ended = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        pg.psql(f"{ended} WHERE application_name = 'locker'", database)
        locker.wait(timeout=30)
    result = finish(process)

    assert result.returncode == 0, result.stdout + result.stderr
    said = result.stdout.splitlines()
    (line,) = [each for each in said if "row counts are not recorded" in each]
    assert "WARNING" in line and "connection to server was lost" in line
    (key,) = [k for k in bucket_state(s3, bucket)[0] if not k.endswith(".manifest.json")]
    assert manifest_of(s3, bucket, key).row_counts is None


def test_postgres_counts_ignore_the_databases_statement_and_idle_timeouts(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    # Production databases set these. statement_timeout cancelled the counting session's count
    # (here its lock wait on a table another session holds a moment): no counts were recorded
    # and no drill could check the rows. idle_in_transaction_session_timeout ended the session
    # while it waited idle for pg_dump to import its snapshot: the backup failed with
    # "invalid snapshot identifier". pg_dump turns both off for itself; the session must too.
    database = unique("limits")
    pg.create_database(database, "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
    pg.psql(f"ALTER DATABASE {database} SET statement_timeout = '500ms'")
    pg.psql(f"ALTER DATABASE {database} SET idle_in_transaction_session_timeout = '5ms'")
    env = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    locker = subprocess.Popen(
        [
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-c", "SET statement_timeout = 0",
            "-c", "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(2); COMMIT",
        ],
        env={**child_env({}), **pg.env(database)},
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        held = "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted"
        wait_until(lambda: pg.psql(held, database).strip() != "0", 10, "the lock")
        result = run_backupd("once", env=env)
    finally:
        locker.wait(timeout=30)

    unlocked = run_backupd("once", env=env)  # the count is done long before pg_dump starts

    for said in (result, unlocked):
        assert said.returncode == 0, said.stdout + said.stderr
        assert "row counts are not recorded" not in said.stdout + said.stderr
    keys = [k for k in bucket_state(s3, bucket)[0] if not k.endswith(".manifest.json")]
    assert len(keys) == 2
    for key in keys:
        manifest = manifest_of(s3, bucket, key)
        assert manifest.row_counts == "dump snapshot"
        assert manifest.tables == [{"schema": "public", "name": "t", "rows": 100}]


async def test_postgres_counting_session_keeps_the_tables_locks_but_not_their_indexes(
    pg: PostgresServer,
) -> None:
    # The session holding the dump's snapshot kept every lock its counts took to the end of
    # the dump: planning a count locks the table's indexes as well. With pg_dump's own locks
    # beside them, a database of 6,000 tables with a primary key each (which pg_dump alone
    # dumps under the default max_locks_per_transaction) failed every backup: "out of shared
    # memory". The tables stay locked, as pg_dump locks them; their indexes must not.
    database = unique("locks")
    pg.create_database(
        database,
        "CREATE TABLE t (id int PRIMARY KEY, a int UNIQUE, b int);"
        " CREATE INDEX ON t (b); CREATE TABLE u (id int PRIMARY KEY);"
        " INSERT INTO t SELECT g, g, g FROM generate_series(1, 50) g;",
    )
    config = DatabaseConfig.model_validate(
        {
            "DB_TYPE": "postgres",
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(pg.port),
            "DB_USER": pg.user,
            "DB_PASSWORD": pg.password,
            "DB_DATABASE": database,
        }
    )
    held = (
        "SELECT string_agg(format('%s:%s', c.relname, c.relkind), ',' ORDER BY c.relname)"
        " FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
        " JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE a.application_name = 'backupd' AND a.datname = current_database()"
        " AND c.relnamespace = 'public'::regnamespace"
    )
    async with PostgresSource(config).dump_session(database) as session:
        assert session.snapshot is not None
        tables = await session.count()
        locks = pg.psql(held, database).strip()

    assert tables == [
        {"schema": "public", "name": "t", "rows": 50},
        {"schema": "public", "name": "u", "rows": 0},
    ]
    assert locks == "t:r,u:r"
