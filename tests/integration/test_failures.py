"""Every failure ends with one clear line, a non-zero exit, and nothing in the bucket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import (
    backupd_command,
    bucket_state,
    child_env,
    mariadb_env,
    pg_env,
    run_backupd,
    storage_env,
)
from tests.procs import dump_processes
from tests.servers import (
    FaultProxy,
    MariaDBServer,
    PostgresServer,
    Received,
    free_port,
    recording_server,
    silent_server,
    wait_until,
)


def failure_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single error line a failed run prints, after checking there is no traceback."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert len(lines) == 1, output
    return lines[0]


def assert_nothing_stored(s3: Any, bucket: str) -> None:
    assert bucket_state(s3, bucket) == ([], [])


def test_wrong_postgres_password_fails_at_connect(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    env = {
        **pg_env(pg, "postgres", DB_PASSWORD="not-the-password"),
        **storage_env(moto_url, bucket),
    }

    result = run_backupd("once", env=env)

    assert result.returncode == 1
    line = failure_line(result)
    assert "FAILED at connect" in line
    assert "cannot log in to PostgreSQL at 127.0.0.1" in line
    assert "password authentication failed" in line
    assert line.endswith(" (DB_USER, DB_PASSWORD)"), line
    assert "row counts are not recorded" not in result.stdout  # one line says it, not two
    assert_nothing_stored(s3, bucket)


def test_wrong_mariadb_password_fails_at_connect(
    mariadb: MariaDBServer, moto_url: str, s3: Any, bucket: str
) -> None:
    env = {
        **mariadb_env(mariadb, "mysql", DB_PASSWORD="not-the-password"),
        **storage_env(moto_url, bucket),
    }

    result = run_backupd("once", env=env)

    assert result.returncode == 1
    line = failure_line(result)
    assert "cannot log in to MariaDB" in line
    assert "Access denied" in line
    assert line.endswith(" (DB_USER, DB_PASSWORD)"), line
    assert "row counts are not recorded" not in result.stdout  # one line says it, not two
    assert_nothing_stored(s3, bucket)


def test_unreachable_host_fails_at_connect(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    env = {**pg_env(pg, "postgres", DB_PORT=str(free_port())), **storage_env(moto_url, bucket)}

    result = run_backupd("once", env=env)

    assert result.returncode == 1
    line = failure_line(result)
    assert "FAILED at connect" in line
    assert "Connection refused" in line
    assert_nothing_stored(s3, bucket)


def test_missing_bucket_is_named(pg: PostgresServer, moto_url: str, s3: Any) -> None:
    missing = f"absent-{uuid.uuid4().hex[:12]}"
    env = {**pg_env(pg, "postgres"), **storage_env(moto_url, missing)}

    result = run_backupd("once", env=env)

    assert result.returncode == 1
    line = failure_line(result)
    assert f"bucket '{missing}'" in line
    assert "does not exist (STORAGE_BUCKET_NAME)" in line
    assert missing not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


@pytest.fixture
def authenticating_s3() -> Iterator[tuple[str, Any, str]]:
    """A moto server that checks signatures: (endpoint, client with valid keys, bucket)."""
    port = free_port()
    # The first four requests (set-up) go unchecked; every later one must be signed by a real key.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(endpoint), 30, "moto with authentication")
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        iam.create_user(UserName="backup")
        iam.put_user_policy(
            UserName="backup",
            PolicyName="all",
            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
        )
        key = iam.create_access_key(UserName="backup")["AccessKey"]
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        )
        s3.create_bucket(Bucket="guarded")
        yield endpoint, s3, "guarded"
    finally:
        server.terminate()
        server.wait()


def _answers(endpoint: str) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))) == 0


def test_bad_storage_credentials_are_named(
    pg: PostgresServer, authenticating_s3: tuple[str, Any, str]
) -> None:
    endpoint, s3, bucket = authenticating_s3
    env = {**pg_env(pg, "postgres"), **storage_env(endpoint, bucket)}

    result = run_backupd("once", env=env)

    assert result.returncode == 1
    line = failure_line(result)
    assert "refused the credentials" in line
    assert "STORAGE_ACCESS_KEY_ID" in line
    assert_nothing_stored(s3, bucket)


def start_backupd(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        backupd_command("once"),
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def slow_upload_env(
    pg: PostgresServer, database: str, proxy: FaultProxy, bucket: str
) -> dict[str, str]:
    """Five parts, one at a time, each held back by the proxy: the dump outlives the test's wait."""
    proxy.part_delay = 0.5
    return {
        **pg_env(pg, database),
        **storage_env(proxy.url, bucket),
        "COMPRESSION": "none",
        "STORAGE_PART_SIZE": "5MiB",
        "STORAGE_UPLOAD_CONCURRENCY": "1",
    }


def test_dump_killed_mid_stream_fails_and_aborts_the_upload(
    pg: PostgresServer, big_pg_database: str, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    process = start_backupd(slow_upload_env(pg, big_pg_database, proxy, bucket))
    wait_until(
        lambda: len(proxy.part_sizes()) >= 1 and dump_processes(big_pg_database) != [],
        30,
        "a part upload",
    )

    for pid in dump_processes(big_pg_database):
        os.kill(pid, signal.SIGKILL)
    result = finish(process)

    assert result.returncode == 1
    line = failure_line(result)
    assert "FAILED at dump" in line
    assert "pg_dump exited with status 9 (killed by SIGKILL)" in line
    assert_nothing_stored(s3, bucket)


def test_storage_dying_mid_upload_fails_and_aborts(
    pg: PostgresServer, big_pg_database: str, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    process = start_backupd(slow_upload_env(pg, big_pg_database, proxy, bucket))
    wait_until(lambda: len(proxy.part_sizes()) >= 1, 30, "a part upload")

    proxy.break_uploads.set()
    result = finish(process)

    assert result.returncode == 1
    line = failure_line(result)
    assert "FAILED at upload" in line
    assert "upload part" in line
    assert_nothing_stored(s3, bucket)
    assert dump_processes(big_pg_database) == []


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP: a closed terminal
def test_sigterm_aborts_the_upload_and_kills_the_dump(
    pg: PostgresServer,
    big_pg_database: str,
    proxy: FaultProxy,
    s3: Any,
    bucket: str,
    stop: signal.Signals,
) -> None:
    process = start_backupd(slow_upload_env(pg, big_pg_database, proxy, bucket))
    wait_until(
        lambda: len(proxy.part_sizes()) >= 1 and dump_processes(big_pg_database) != [],
        30,
        "a part upload",
    )

    process.send_signal(stop)
    result = finish(process)

    assert result.returncode == 1
    assert "interrupted" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert_nothing_stored(s3, bucket)
    assert dump_processes(big_pg_database) == []


def assert_told_cut_short(
    seen: list[Received], s3: Any, bucket: str, databases: list[str], why: str
) -> None:
    """A run of ``databases`` cut short while the second was uploaded: the first told (webhook)
    as stored, the two others as failed at step ``shutdown`` saying ``why``, a /start then a
    /fail ping, and the bucket holding the stored one alone, no upload left open."""
    hooks = [json.loads(r.body) for r in seen if r.path == "/hook"]
    told = {hook["database"]: (hook["result"], hook["step"]) for hook in hooks}
    first, under_way, last = databases
    assert told == {
        first: ("succeeded", None),
        under_way: ("failed", "shutdown"),
        last: ("failed", "shutdown"),
    }
    assert all(why in hook["error"] for hook in hooks if hook["step"])
    assert [r.path for r in seen if r.path.startswith("/ping")] == ["/ping/start", "/ping/fail"]
    keys, uploads = bucket_state(s3, bucket)
    assert uploads == []
    assert [key for key in keys if not key.endswith(".manifest.json")] == [
        hook["key"] for hook in hooks if hook["result"] == "succeeded"
    ]


def test_a_signal_during_once_tells_what_it_stopped(
    pg: PostgresServer, big_pg_database: str, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """The first database is stored, the second is being uploaded at SIGTERM, the third never
    starts: as the daemon does at a shutdown, the stored one is told as such and the two others
    as failed at step shutdown (webhook, /fail ping), and only the stored one is in the bucket."""
    pg.create_database("once_cut_first", "CREATE TABLE t AS SELECT 1 AS x;")
    pg.create_database("once_cut_last", "CREATE TABLE t AS SELECT 1 AS x;")
    with recording_server() as (url, seen):
        env = {
            **slow_upload_env(pg, f"once_cut_first,{big_pg_database},once_cut_last", proxy, bucket),
            "NOTIFY_WEBHOOK_URL": f"{url}/hook",
            "HEALTHCHECK_PING_URL": f"{url}/ping",
        }
        process = start_backupd(env)
        wait_until(lambda: len(proxy.part_sizes()) >= 1, 30, "the big database's first part")
        process.send_signal(signal.SIGTERM)
        result = finish(process)

    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    databases = ["once_cut_first", big_pg_database, "once_cut_last"]
    assert_told_cut_short(seen, s3, bucket, databases, "stopped by a signal")
    assert f"backup of default {big_pg_database} FAILED at shutdown" in result.stdout
    assert "was reported as failed" in result.stdout
    assert dump_processes(big_pg_database) == []


def test_a_signal_while_once_tells_a_finished_run_lets_the_telling_finish(
    pg: PostgresServer, moto_url: str, bucket: str
) -> None:
    """The backup is stored and its notifications wait for a slow ping service's answer to
    /start when SIGTERM comes: they still go out (webhook, success ping), then backupd stops;
    cut there, the ping service saw a run start that never ended."""
    database = f"once_told_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t AS SELECT 1 AS x;")
    with recording_server(answer_after=2) as (url, seen):
        env = {
            **pg_env(pg, database),
            **storage_env(moto_url, bucket),
            "NOTIFY_WEBHOOK_URL": f"{url}/hook",
            "HEALTHCHECK_PING_URL": f"{url}/ping",
        }
        process = start_backupd(env)
        assert process.stdout is not None
        for line in process.stdout:  # the run is over once its result is logged
            if f"backup of default {database} succeeded" in line:
                break
        process.send_signal(signal.SIGTERM)
        result = finish(process)

    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    hooks = [json.loads(r.body) for r in seen if r.path == "/hook"]
    assert [(hook["database"], hook["result"]) for hook in hooks] == [(database, "succeeded")]
    assert [r.path for r in seen if r.path.startswith("/ping")] == ["/ping/start", "/ping"]


def test_bad_configuration_exits_2_listing_every_problem(tmp_path: Path) -> None:
    result = run_backupd(
        "once", env={"DB_TYPE": "oracle", "STORAGE_TYPE": "r2", "DB_PASSWORD": "hunter2-secret"}
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert [p.split(":")[0] for p in problems] == [
        "DB_TYPE",
        "DB_HOST",
        "DB_USER",
        "DB_DATABASE",
        "STORAGE_ENDPOINT_URL",
        "STORAGE_ACCESS_KEY_ID",
        "STORAGE_BUCKET_NAME",
    ]
    assert "hunter2-secret" not in result.stdout + result.stderr


@pytest.mark.parametrize("counts", ["exact", "off"])
def test_a_table_another_session_holds_fails_the_backup_within_the_stall_timeout(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, counts: str
) -> None:
    """An ALTER or VACUUM FULL elsewhere can hold a table for hours: the row-count session's
    locks, like the dump, wait no longer than RESTORE_STALL_TIMEOUT."""
    database = f"held_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    holder = subprocess.Popen(
        ["psql", "-X", "-c", "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)"],
        env={**os.environ, **pg.env(database)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        held = (
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE c.relname = 't' AND l.mode = 'AccessExclusiveLock' AND l.granted"
        )
        wait_until(lambda: pg.psql(held, database).strip() == "1", 10, "the lock")
        env = {
            **pg_env(pg, database),
            **storage_env(moto_url, bucket),
            "RESTORE_STALL_TIMEOUT": "3",
            "VERIFY_ROW_COUNTS": counts,
        }
        result = run_backupd("once", env=env, timeout=60)
    finally:
        holder.kill()
        holder.wait()

    assert result.returncode == 1, result.stdout + result.stderr
    assert "RESTORE_STALL_TIMEOUT" in failure_line(result)
    assert_nothing_stored(s3, bucket)


def test_a_database_server_that_never_speaks_fails_at_login_not_after_the_stall_timeout(
    moto_url: str, s3: Any, bucket: str
) -> None:
    """The handshake never comes (ERROR 2013 "at 'handshake'"): that is a login failure named
    as such, not a refused wide row, and the login probe's failure stops the dump beside it."""
    with silent_server() as port:
        env = {
            "DB_TYPE": "mariadb",
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(port),
            "DB_USER": "backupd",
            "DB_PASSWORD": "not-used-here",
            "DB_DATABASE": "shop",
            **storage_env(moto_url, bucket),
        }
        result = run_backupd("once", env=env, timeout=60)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cannot log in to MariaDB at 127.0.0.1:{port}" in failure_line(result)
    assert_nothing_stored(s3, bucket)
