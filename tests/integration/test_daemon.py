"""``backupd run`` as a real process: schedules, isolation, overlap, metrics and shutdown."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.conftest import (
    backupd_command,
    bucket_state,
    child_env,
    mariadb_env,
    pg_env,
    postgres_server,
    run_backupd,
    storage_env,
)
from tests.integration.test_failures import assert_told_cut_short
from tests.procs import dump_processes
from tests.servers import (
    FaultProxy,
    MariaDBServer,
    PostgresServer,
    Received,
    free_port,
    recording_server,
    wait_until,
)

EVERY_TWO_SECONDS = "*/2 * * * * *"
SLOW_ANSWER = 3.0  # seconds a slow webhook or ping service takes to answer


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text, 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def fetch(port: int, path: str) -> tuple[int, str]:
    """GET a path of the daemon's HTTP endpoint: (status, body), (0, "") while it is not up."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    except OSError:
        return 0, ""
    finally:
        connection.close()


@pytest.fixture
def daemon_process() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture
def slow_receiver() -> Iterator[tuple[str, list[Received]]]:
    """A local HTTP server that records each request as it arrives and answers it
    ``SLOW_ANSWER`` seconds later: a slow webhook or ping service."""
    with recording_server(SLOW_ANSWER) as (url, seen):
        yield url, seen


def start_daemon(
    env: dict[str, str], started: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        backupd_command("run"),
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started.append(process)
    return process


def stop(process: subprocess.Popen[str], timeout: float = 60) -> str:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=timeout)
    return output


def test_targets_run_on_schedule_and_a_broken_one_hurts_no_other(
    pg: PostgresServer,
    mariadb: MariaDBServer,
    moto_url: str,
    s3: Any,
    bucket: str,
    daemon_process: list[subprocess.Popen[str]],
) -> None:
    pg.create_database("orders_db", "CREATE TABLE o AS SELECT g FROM generate_series(1, 100) g;")
    pg.create_database("billing_db", "CREATE TABLE b AS SELECT g FROM generate_series(1, 100) g;")
    mariadb.create_database(
        "legacy_db", "CREATE TABLE l (id INT PRIMARY KEY); INSERT INTO l VALUES (1);"
    )
    legacy = mariadb_env(mariadb, "legacy_db")
    port = free_port()
    env = {
        **pg_env(pg, "unused"),
        **storage_env(moto_url, bucket),
        "BACKUPD_TARGETS": "orders,billing,legacy,broken",
        "ORDERS_DB_DATABASE": "orders_db",
        "BILLING_DB_DATABASE": "billing_db",
        **{f"LEGACY_{name}": value for name, value in legacy.items()},
        "BROKEN_DB_DATABASE": "orders_db",
        "BROKEN_DB_PASSWORD": "wrong-password",
        "BROKEN_CRON_SCHEDULE": "0 0 1 1 *",  # its start-up run only: long over when read below
        "CRON_SCHEDULE": EVERY_TWO_SECONDS,
        "HTTP_PORT": str(port),
        "HTTP_HOST": "127.0.0.1",
    }
    process = start_daemon(env, daemon_process)
    good = ("orders", "billing", "legacy")

    def every_good_target_ran_three_times() -> bool:
        _, text = fetch(port, "/metrics")
        return all(
            metric(text, "backupd_runs_total", target=t, result="success") >= 3 for t in good
        )

    wait_until(every_good_target_ran_three_times, 60, "three successful runs of every good target")
    health, _ = fetch(port, "/healthz")
    _, text = fetch(port, "/metrics")
    output = stop(process)

    assert process.returncode == 0, output
    assert health == 200
    assert metric(text, "backupd_runs_total", target="broken", result="failure") == 1
    assert metric(text, "backupd_runs_total", target="broken", result="success") == 0
    assert metric(text, "backupd_last_success_timestamp_seconds", target="orders") > 0
    assert metric(text, "backupd_last_run_bytes", target="legacy") > 0
    assert metric(text, "backupd_runs_in_progress", target="broken") == 0
    keys, uploads = bucket_state(s3, bucket)
    assert uploads == []
    for target in good:
        manifests = [
            k for k in keys if k.startswith(f"backups/{target}/") and k.endswith(".manifest.json")
        ]
        assert len(manifests) >= 3, (target, keys)
    assert not [k for k in keys if k.startswith("backups/broken/")]
    assert re.search(
        r"backup of broken orders_db FAILED at connect: cannot log in to PostgreSQL", output
    )
    assert pg.password not in output
    assert "Traceback" not in output


def test_a_failed_run_and_a_later_success_stamp_when_they_ended_for_the_alerts(
    pg: PostgresServer,
    moto_url: str,
    s3: Any,
    bucket: str,
    daemon_process: list[subprocess.Popen[str]],
) -> None:
    """BackupdBackupFailed and BackupdVerifyFailed fire while a target's newest failure is
    newer than its newest success. Runs of a database not created yet fail, and so do its
    verifies (no backup of it, under ``*``); once it exists, a run and a verify succeed later
    than any failure."""
    database = f"late_{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **pg_env(pg, database),
        **storage_env(moto_url, bucket),
        "CRON_SCHEDULE": EVERY_TWO_SECONDS,
        "VERIFY_SCHEDULE": EVERY_TWO_SECONDS,
        "HTTP_PORT": str(port),
        "HTTP_HOST": "127.0.0.1",
    }
    process = start_daemon(env, daemon_process)

    def counted(result: str) -> bool:
        _, text = fetch(port, "/metrics")
        return (
            metric(text, "backupd_runs_total", result=result) >= 1
            and metric(text, "backupd_verify_runs_total", result=result) >= 1
        )

    wait_until(lambda: counted("failure"), 60, "a failed backup and a failed verify")
    _, failing = fetch(port, "/metrics")
    pg.create_database(database, "CREATE TABLE t AS SELECT 1 AS n;")
    wait_until(lambda: counted("success"), 60, "a backup and a verify that succeed")
    _, passing = fetch(port, "/metrics")
    output = stop(process)

    assert process.returncode == 0, output
    target = {"target": "default"}
    failed = metric(failing, "backupd_last_failure_timestamp_seconds", **target)
    assert failed > 0
    assert metric(failing, "backupd_last_success_timestamp_seconds", **target) == 0
    last_failed = metric(passing, "backupd_last_failure_timestamp_seconds", **target)
    assert metric(passing, "backupd_last_success_timestamp_seconds", **target) > last_failed
    assert last_failed >= failed
    whole = {"target": "default", "database": "*"}
    assert metric(failing, "backupd_last_verify_failure_timestamp_seconds", **whole) > 0
    assert metric(failing, "backupd_last_verify_success_timestamp_seconds", **whole) == 0
    assert metric(passing, "backupd_last_verify_success_timestamp_seconds", **whole) > metric(
        passing, "backupd_last_verify_failure_timestamp_seconds", **whole
    )
    one = {"target": "default", "database": database}
    assert metric(passing, "backupd_last_verify_success_timestamp_seconds", **one) > 0
    assert metric(passing, "backupd_last_verify_failure_timestamp_seconds", **one) == 0
    assert "Traceback" not in output


def test_long_run_skips_overlapping_slots_and_sigterm_cancels_it_cleanly(
    pg: PostgresServer,
    big_pg_database: str,
    proxy: FaultProxy,
    s3: Any,
    bucket: str,
    daemon_process: list[subprocess.Popen[str]],
) -> None:
    proxy.part_delay = 2.0  # five parts: a run that outlasts several one-second slots
    port = free_port()
    env = {
        **pg_env(pg, big_pg_database),
        **storage_env(proxy.url, bucket),
        "COMPRESSION": "none",
        "STORAGE_PART_SIZE": "5MiB",
        "STORAGE_UPLOAD_CONCURRENCY": "1",
        "CRON_SCHEDULE": "* * * * * *",
        "SHUTDOWN_TIMEOUT": "1",
        "HTTP_PORT": str(port),
        "HTTP_HOST": "127.0.0.1",
    }
    process = start_daemon(env, daemon_process)

    def skipped_twice_while_uploading() -> bool:
        _, text = fetch(port, "/metrics")
        skipped = metric(text, "backupd_runs_total", target="default", result="skipped")
        return skipped >= 2 and bool(proxy.part_sizes())

    wait_until(skipped_twice_while_uploading, 30, "two skipped slots while the run uploads")
    _, text = fetch(port, "/metrics")
    assert metric(text, "backupd_runs_in_progress", target="default") == 1
    assert dump_processes(big_pg_database)
    output = stop(process)

    assert process.returncode == 0, output
    assert "skipping this slot" in output
    assert "cancelling 1 running backup(s)" in output
    assert bucket_state(s3, bucket) == ([], [])
    assert dump_processes(big_pg_database) == []


def test_a_backup_cut_short_by_sigterm_is_reported_as_failed_with_what_it_had_finished(
    pg: PostgresServer,
    big_pg_database: str,
    proxy: FaultProxy,
    s3: Any,
    bucket: str,
    daemon_process: list[subprocess.Popen[str]],
) -> None:
    """The first database is stored, the second is being uploaded at SIGTERM, the third never
    starts: the stored one is told as such, the two others as failed at the shutdown (webhook,
    /fail ping, metrics), and nothing is left in the bucket but the stored one."""
    pg.create_database("cut_first", "CREATE TABLE t AS SELECT 1 AS x;")
    pg.create_database("cut_last", "CREATE TABLE t AS SELECT 1 AS x;")
    proxy.part_delay = 2.0
    port = free_port()
    with recording_server() as (url, seen):
        env = {
            **pg_env(pg, f"cut_first,{big_pg_database},cut_last"),
            **storage_env(proxy.url, bucket),
            "COMPRESSION": "none",
            "STORAGE_PART_SIZE": "5MiB",
            "STORAGE_UPLOAD_CONCURRENCY": "1",
            "CRON_SCHEDULE": "0 2 * * *",
            "SHUTDOWN_TIMEOUT": "1",
            "NOTIFY_WEBHOOK_URL": f"{url}/hook",
            "HEALTHCHECK_PING_URL": f"{url}/ping",
            "HTTP_PORT": str(port),
            "HTTP_HOST": "127.0.0.1",
        }
        process = start_daemon(env, daemon_process)
        wait_until(lambda: len(proxy.part_sizes()) > 0, 30, "the big database's first part")
        output = stop(process)

    assert process.returncode == 0, output
    databases = ["cut_first", big_pg_database, "cut_last"]
    assert_told_cut_short(seen, s3, bucket, databases, "SHUTDOWN_TIMEOUT")
    assert f"backup of default {big_pg_database} FAILED at shutdown" in output
    assert dump_processes(big_pg_database) == []


def test_star_backs_up_every_database_and_the_postgres_globals(
    moto_url: str, s3: Any, bucket: str
) -> None:
    with postgres_server() as server:  # a server of its own: it holds exactly these databases
        server.create_database("alpha", "CREATE TABLE a (x int);")
        server.create_database("beta", "CREATE TABLE b (x int);")
        server.psql("CREATE ROLE reporting LOGIN")

        result = run_backupd("once", env={**pg_env(server, "*"), **storage_env(moto_url, bucket)})

    assert result.returncode == 0, result.stdout + result.stderr
    keys, _ = bucket_state(s3, bucket)
    names = sorted(
        re.sub(r"_\d{8}_\d{6}_[0-9a-f]{8}", "", k.rsplit("/", 1)[1])
        for k in keys
        if not k.endswith(".json")
    )
    assert names == [
        "backup_alpha.dump",
        "backup_beta.dump",
        "backup_postgres.dump",
        "globals.sql.zst",
    ]
    (globals_key,) = [k for k in keys if "/globals_" in k and k.endswith(".sql.zst")]
    compressed = s3.get_object(Bucket=bucket, Key=globals_key)["Body"].read()
    assert b"CREATE ROLE reporting" in zstandard.ZstdDecompressor().decompressobj().decompress(
        compressed
    )


def test_a_list_of_databases_gives_one_object_each(
    mariadb: MariaDBServer, moto_url: str, s3: Any, bucket: str
) -> None:
    mariadb.create_database("list_one", "CREATE TABLE t (x INT);")
    mariadb.create_database("list_two", "CREATE TABLE t (x INT);")

    result = run_backupd(
        "once",
        env={
            **mariadb_env(mariadb, "list_one, list_two, list_missing"),
            **storage_env(moto_url, bucket),
        },
    )

    assert result.returncode == 1
    assert "backup of default list_missing FAILED at dump" in result.stdout
    keys, uploads = bucket_state(s3, bucket)
    assert uploads == []
    stored = sorted(k.rsplit("/", 1)[1].split("_2")[0] for k in keys if k.endswith(".sql.zst"))
    assert stored == ["backup_list_one", "backup_list_two"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])
def test_healthcheck_command_follows_the_daemon(
    pg: PostgresServer, tmp_path: Path, daemon_process: list[subprocess.Popen[str]], host: str
) -> None:
    """``healthcheck`` asks where the service listens (HTTP_HOST), not always 127.0.0.1."""
    port = free_port()
    env = {
        **pg_env(pg, "postgres"),
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(tmp_path / "store"),
        "RUN_ON_STARTUP": "false",
        "HTTP_PORT": str(port),
        "HTTP_HOST": host,
    }
    process = start_daemon(env, daemon_process)

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex((host, port)) == 0

    wait_until(listening, 30, "the daemon to listen")

    alive = run_backupd("healthcheck", env=env)
    output = stop(process)
    gone = run_backupd("healthcheck", env=env)

    assert process.returncode == 0, output
    assert alive.returncode == 0, alive.stderr
    assert gone.returncode == 1
    assert "did not answer" in gone.stderr


def test_slow_notifications_hold_no_dump_slot_and_are_sent_before_exit(
    pg: PostgresServer,
    tmp_path: Path,
    slow_receiver: tuple[str, list[Received]],
    daemon_process: list[subprocess.Popen[str]],
) -> None:
    """A's webhook and pings take seconds to answer; A and B share one dump slot. Both still
    run at every slot, and A's last notifications go out before the daemon exits."""
    url, seen = slow_receiver
    pg.create_database("notified_db", "CREATE TABLE t AS SELECT 1 AS x;")
    port = free_port()
    env = {
        **pg_env(pg, "notified_db"),
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(tmp_path / "store"),
        "BACKUPD_TARGETS": "a,b",
        "A_NOTIFY_WEBHOOK_URL": f"{url}/hook",
        "A_HEALTHCHECK_PING_URL": f"{url}/ping",
        "MAX_CONCURRENT_BACKUPS": "1",
        "CRON_SCHEDULE": EVERY_TWO_SECONDS,
        "HTTP_PORT": str(port),
        "HTTP_HOST": "127.0.0.1",
    }
    process = start_daemon(env, daemon_process)

    def both_ran_three_times() -> bool:
        _, text = fetch(port, "/metrics")
        return all(
            metric(text, "backupd_runs_total", target=t, result="success") >= 3 for t in "ab"
        )

    # Holding the slot through each notification (3 s each way), A alone would need 20 s.
    wait_until(both_ran_three_times, 12, "three successful runs of each target")
    output = stop(process)

    assert process.returncode == 0, output
    assert "cancelling" not in output
    runs = len(re.findall(r"backup of a notified_db succeeded", output))
    lines = [r.line for r in seen]
    assert lines.count("POST /hook") == runs
    assert lines.count("GET /ping/start") == lines.count("GET /ping") == runs


def test_a_run_queued_for_a_dump_slot_does_not_start_after_sigterm(
    pg: PostgresServer, tmp_path: Path, daemon_process: list[subprocess.Popen[str]]
) -> None:
    """A and B share one dump slot; A's dump waits on a table lock. SIGTERM while B is queued:
    A finishes, B never starts."""
    pg.create_database("locked_db", "CREATE TABLE t AS SELECT 1 AS x;")
    pg.create_database("queued_db", "CREATE TABLE t AS SELECT 1 AS x;")
    # Held until A is seen under way, however long the daemon takes to start (held a fixed
    # few seconds, the lock could be gone, and A's short dump come and go unseen).
    holder = subprocess.Popen(
        ["psql", "-X", "-c", "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120)"],
        env={**os.environ, **pg.env("locked_db")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    held = "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted"
    wait_until(lambda: pg.psql(held).strip() != "0", 10, "the lock on locked_db")
    port = free_port()
    env = {
        **pg_env(pg, "locked_db"),
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(tmp_path / "store"),
        "BACKUPD_TARGETS": "a,b",
        "B_DB_DATABASE": "queued_db",
        "MAX_CONCURRENT_BACKUPS": "1",
        "CRON_SCHEDULE": "0 0 1 1 *",  # the start-up runs only
        "HTTP_PORT": str(port),
        "HTTP_HOST": "127.0.0.1",
    }

    def a_under_way() -> bool:
        _, text = fetch(port, "/metrics")
        return metric(text, "backupd_runs_in_progress", target="a") == 1

    try:
        process = start_daemon(env, daemon_process)
        wait_until(a_under_way, 60, "A under way, waiting on the lock")
        release = "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
        release += " WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()"
        released = threading.Timer(1.0, pg.psql, args=(release,))
        released.start()  # after the SIGTERM below: A is still under way when it comes
        output = stop(process)
        released.join()
    finally:
        holder.kill()
        holder.wait()

    assert process.returncode == 0, output
    assert "backup of a locked_db succeeded" in output
    assert "backup of b" not in output
    assert "b: the start-up run does not start: shutting down" in output
    assert not list((tmp_path / "store").glob("**/*queued_db*"))
