"""Publishing: two writers never share a key, and a failed publish removes only its own object."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from backupd.catalogue import MANIFEST_SUFFIX
from tests.conftest import backupd_command, bucket_state, child_env, pg_env, storage_env
from tests.integration.test_daemon import daemon_process, start_daemon
from tests.servers import FaultProxy, PostgresServer, wait_until

__all__ = ["daemon_process"]  # the fixture, shared with test_daemon

WRITERS = 4


def start_together(env: dict[str, str], count: int) -> list[subprocess.CompletedProcess[str]]:
    processes = [
        subprocess.Popen(
            backupd_command("once"),
            env=child_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, output))
    return results


def complete_pairs(keys: list[str]) -> tuple[set[str], set[str]]:
    """(objects, objects named by a manifest)."""
    objects = {k for k in keys if not k.endswith(MANIFEST_SUFFIX) and "/." not in k}
    described = {k.removesuffix(MANIFEST_SUFFIX) for k in keys if k.endswith(MANIFEST_SUFFIX)}
    return objects, described


@pytest.mark.parametrize("storage", ["s3", "local"])
def test_writers_started_together_each_publish_their_own_backup(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, tmp_path: Path, storage: str
) -> None:
    database = f"race_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    folder = tmp_path / "backups"
    folder.mkdir()
    where = (
        storage_env(moto_url, bucket)
        if storage == "s3"
        else {"STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(folder)}
    )

    results = start_together({**pg_env(pg, database), **where}, WRITERS)

    if storage == "s3":
        keys, uploads = bucket_state(s3, bucket)
        assert uploads == []
    else:
        keys = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    objects, described = complete_pairs(keys)
    assert objects == described  # every manifest has its object and every object its manifest
    published = {
        line.split(": ", 1)[1].split(",")[0]
        for r in results
        for line in r.stdout.splitlines()
        if "succeeded: " in line
    }
    assert published == objects  # each process published its own key
    assert len(objects) == sum(r.returncode == 0 for r in results) == WRITERS


def test_a_refused_manifest_removes_only_this_runs_object(
    pg: PostgresServer, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    database = f"refused_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    env = {**pg_env(pg, database), **storage_env(proxy.url, bucket)}
    first = start_together(env, 1)[0]
    assert first.returncode == 0, first.stdout
    before = set(bucket_state(s3, bucket)[0])

    proxy.refuse_puts_ending = MANIFEST_SUFFIX
    refused = start_together(env, 1)[0]

    keys, uploads = bucket_state(s3, bucket)
    assert refused.returncode == 1, refused.stdout
    assert "AccessDenied" in refused.stdout or "refused" in refused.stdout
    assert set(keys) == before  # the earlier backup untouched, this run's object removed
    assert uploads == []
    assert "Traceback" not in refused.stdout


def is_object_put(method: str, target: str) -> bool:
    """A backup's single PutObject: neither a part of a multipart upload nor a manifest."""
    path, _, query = target.partition("?")
    return (
        method == "PUT"
        and "/backup_" in path
        and not path.endswith(MANIFEST_SUFFIX)
        and "partNumber=" not in query
    )


def is_manifest_put(method: str, target: str) -> bool:
    return method == "PUT" and target.partition("?")[0].endswith(MANIFEST_SUFFIX)


def key_of(target: str) -> str:
    """The object key of a path-style request target (``/bucket/key?query``)."""
    return unquote(target.partition("?")[0].split("/", 2)[2])


def small_database(pg: PostgresServer, prefix: str) -> str:
    """A database whose dump fits one part: stored with a single PutObject."""
    database = f"{prefix}_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    return database


def test_a_lost_answer_to_the_objects_put_is_recognised_as_this_runs_write(
    pg: PostgresServer, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    env = {**pg_env(pg, small_database(pg, "lost")), **storage_env(proxy.url, bucket)}
    puts: list[str] = []

    def first_put(method: str, target: str) -> bool:
        if is_object_put(method, target):
            puts.append(target)
        return len(puts) == 1 and is_object_put(method, target)

    proxy.lose_answers = first_put
    result = start_together(env, 1)[0]

    assert len(proxy.lost) == 1 and len(puts) >= 2  # landed unanswered, then retried: 412
    assert result.returncode == 0, result.stdout
    keys, uploads = bucket_state(s3, bucket)
    objects, described = complete_pairs(keys)
    assert len(objects) == 1 and objects == described and uploads == []
    (key,) = objects
    stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key + MANIFEST_SUFFIX)["Body"].read())
    assert (manifest["size"], manifest["sha256"]) == (len(stored), sha256(stored).hexdigest())


def test_a_key_holding_other_bytes_after_a_lost_answer_fails_and_only_it_is_removed(
    pg: PostgresServer, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    env = {**pg_env(pg, small_database(pg, "other")), **storage_env(proxy.url, bucket)}
    earlier = start_together(env, 1)[0]
    assert earlier.returncode == 0, earlier.stdout
    before = set(bucket_state(s3, bucket)[0])
    puts: list[str] = []

    def lose_then_replace(method: str, target: str) -> bool:
        if not is_object_put(method, target):
            return False
        puts.append(target)
        if len(puts) == 2:  # the retry: the key now holds other bytes of the same size
            size = s3.head_object(Bucket=bucket, Key=key_of(target))["ContentLength"]
            s3.put_object(Bucket=bucket, Key=key_of(target), Body=bytes(size))
        return len(puts) == 1

    proxy.lose_answers = lose_then_replace
    failed = start_together(env, 1)[0]

    assert len(puts) >= 2, failed.stdout
    assert failed.returncode == 1, failed.stdout
    assert "already exists" in failed.stdout
    keys, uploads = bucket_state(s3, bucket)
    assert set(keys) == before  # the earlier backup untouched, this run's own key removed
    assert uploads == []
    assert "Traceback" not in failed.stdout


def output_lines(process: subprocess.Popen[str]) -> tuple[list[str], threading.Thread]:
    """The process's output lines as they come, and the thread that reads them."""
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        with process.stdout:
            lines.extend(process.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


@pytest.mark.parametrize("held", [is_object_put, is_manifest_put], ids=["object", "manifest"])
def test_sigterm_while_a_write_is_in_flight_publishes_nothing(
    pg: PostgresServer,
    proxy: FaultProxy,
    s3: Any,
    bucket: str,
    held: Callable[[str, str], bool],
) -> None:
    env = {**pg_env(pg, small_database(pg, "term")), **storage_env(proxy.url, bucket)}
    proxy.hold = held
    process = subprocess.Popen(
        backupd_command("once"),
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, reader = output_lines(process)
    try:
        wait_until(proxy.holding.is_set, 60, "the write to land")
        process.send_signal(signal.SIGTERM)
        wait_until(
            lambda: (
                any("interrupted while writing" in line for line in lines)
                or process.poll() is not None
            ),
            30,
            "backupd to take the signal",
        )
    finally:
        proxy.release.set()  # the answer goes on to backupd
    process.wait(60)
    reader.join(10)
    output = "".join(lines)

    assert process.returncode == 1, output
    assert "a backup still in progress was aborted, left nothing behind" in output
    assert bucket_state(s3, bucket) == ([], [])  # what landed was removed again
    assert "Traceback" not in output


def test_a_run_stopped_at_its_fence_check_before_the_manifest_publishes_nothing(
    pg: PostgresServer,
    atomic_proxy: FaultProxy,
    s3: Any,
    bucket: str,
    daemon_process: list[subprocess.Popen[str]],
) -> None:
    env = {
        **pg_env(pg, small_database(pg, "fence")),
        **storage_env(atomic_proxy.url, bucket),
        "CRON_SCHEDULE": "0 0 1 1 *",  # the start-up run stands for this year's only slot
        "COORDINATION": "storage",
        "SHUTDOWN_TIMEOUT": "0",
        "HTTP_PORT": "0",
    }
    seen: list[str] = []

    def renewal_after_the_object(method: str, target: str) -> bool:
        """The claim's renewal that fences the manifest: the first once the object is stored
        (it lands; its answer is held)."""
        if is_object_put(method, target) or (seen and "/.backupd/claims/" in target):
            seen.append(target)
        return len(seen) == 2 and method == "PUT" and "/.backupd/claims/" in target

    atomic_proxy.hold = renewal_after_the_object
    process = start_daemon(env, daemon_process)
    try:
        wait_until(atomic_proxy.holding.is_set, 60, "the fence check before the manifest")
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    finally:
        atomic_proxy.release.set()

    keys, uploads = bucket_state(s3, bucket)
    assert [k for k in keys if "/.backupd/" not in k] == [], output
    assert uploads == []
    assert process.returncode == 0, output


def test_a_lost_answer_to_the_completion_still_publishes_the_backup(
    pg: PostgresServer, big_pg_database: str, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    env = {
        **pg_env(pg, big_pg_database),
        **storage_env(proxy.url, bucket),
        "COMPRESSION": "none",
        "STORAGE_PART_SIZE": "5MiB",
    }

    def first_completion(method: str, target: str) -> bool:
        return method == "POST" and "uploadId=" in target and not proxy.lost

    proxy.lose_answers = first_completion
    result = start_together(env, 1)[0]

    assert len(proxy.lost) == 1  # completed unanswered; the retry is answered
    assert result.returncode == 0, result.stdout
    keys, uploads = bucket_state(s3, bucket)
    objects, described = complete_pairs(keys)
    assert len(objects) == 1 and objects == described and uploads == []


def is_completion(method: str, target: str) -> bool:
    return method == "POST" and "uploadId=" in target


def test_a_resent_completion_told_the_key_exists_still_publishes_the_backup(
    pg: PostgresServer, big_pg_database: str, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """A store that answers a resent completion 412 (the key exists: the first attempt made
    it): backupd finds its upload gone and the object its own, and publishes."""
    env = {
        **pg_env(pg, big_pg_database),
        **storage_env(proxy.url, bucket),
        "COMPRESSION": "none",
        "STORAGE_PART_SIZE": "5MiB",
    }
    proxy.lose_answers = lambda method, target: is_completion(method, target) and not proxy.lost
    proxy.precondition_failed = lambda method, target: (
        is_completion(method, target) and bool(proxy.lost)
    )
    result = start_together(env, 1)[0]

    assert len(proxy.lost) == 1
    assert result.returncode == 0, result.stdout
    keys, uploads = bucket_state(s3, bucket)
    objects, described = complete_pairs(keys)
    assert len(objects) == 1 and objects == described and uploads == []


def test_a_completion_refused_while_the_upload_is_open_fails_and_aborts(
    pg: PostgresServer, big_pg_database: str, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """412 at completion with the upload still open: the key is somebody else's. The backup
    fails, its upload is aborted and nothing is published."""
    env = {
        **pg_env(pg, big_pg_database),
        **storage_env(proxy.url, bucket),
        "COMPRESSION": "none",
        "STORAGE_PART_SIZE": "5MiB",
    }
    proxy.precondition_failed = is_completion
    result = start_together(env, 1)[0]

    assert result.returncode == 1, result.stdout
    assert "complete" in result.stdout and "Traceback" not in result.stdout
    keys, uploads = bucket_state(s3, bucket)
    assert [k for k in keys if "/.backupd/" not in k] == [] and uploads == []
