"""Storage backends against real endpoints: moto for S3/R2, a temporary folder for local."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from backupd import catalogue
from backupd.backup import Dump, _nothing_recorded, dump_to_storage
from backupd.catalogue import MANIFEST_SUFFIX
from backupd.config import MIB, LocalConfig, S3Config, StorageType
from backupd.environment import load_settings
from backupd.errors import ConnectError, StorageError
from backupd.parts import Part
from backupd.progress import LogProgress
from backupd.storage import local, open_storage
from backupd.storage import s3 as s3_storage
from tests.conftest import (
    BULK_ROWS,
    BULK_SQL,
    S3_KEY_ID,
    S3_SECRET,
    bucket_state,
    pg_env,
    run_backupd,
    storage_env,
)
from tests.integration.test_prune import FOLDER, put_backup
from tests.servers import FaultProxy, PostgresServer, silent_server


@pytest.fixture(scope="module")
def zstd_source(pg: PostgresServer) -> str:
    name = "r2_parts"
    pg.create_database(name)
    pg.psql(BULK_SQL.format(rows=BULK_ROWS), name)
    return name


def test_r2_gets_equal_parts_from_an_irregular_compressed_stream(
    pg: PostgresServer, zstd_source: str, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    env = {
        **pg_env(pg, zstd_source),
        **storage_env(proxy.url, bucket, STORAGE_TYPE="r2"),
        "COMPRESSION": "zstd",
        "STORAGE_PART_SIZE": "5MiB",
    }

    result = run_backupd("once", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    sizes = proxy.part_sizes()
    assert len(sizes) >= 3, sizes
    assert all(size == 5 * MIB for size in sizes[:-1]), sizes
    assert 0 < sizes[-1] <= 5 * MIB
    keys, uploads = bucket_state(s3, bucket)
    assert uploads == []
    (key,) = [k for k in keys if k.endswith(".dump.zst")]
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == sum(sizes)


def s3_config(endpoint: str, bucket: str, **extra: Any) -> S3Config:
    return S3Config.model_validate(
        {
            "STORAGE_ENDPOINT_URL": endpoint,
            "STORAGE_ACCESS_KEY_ID": S3_KEY_ID,
            "STORAGE_SECRET_ACCESS_KEY": S3_SECRET,
            "STORAGE_BUCKET_NAME": bucket,
            **extra,
        }
    )


def r2_config(endpoint: str, bucket: str) -> S3Config:
    return s3_config(
        endpoint, bucket, kind=StorageType.R2, STORAGE_REGION="auto", STORAGE_PART_SIZE="5MiB"
    )


def part(size: int, fill: int = 7) -> Part:
    return Part(io.BytesIO(bytes([fill]) * size), size)


async def test_r2_fails_before_part_10001_naming_the_setting_and_aborts(
    moto_url: str, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_storage, "MAX_PARTS", 3)  # 10,000 parts of 5 MiB will not fit in a test
    config = r2_config(moto_url, bucket)

    async with open_storage(config) as storage:
        with pytest.raises(StorageError, match="raise STORAGE_PART_SIZE"):
            async with storage.upload("too/big.dump", {}) as upload:
                for _ in range(4):
                    await upload.write(part(5 * MIB))
                await upload.commit()

    assert bucket_state(s3, bucket) == ([], [])


async def test_cancelled_upload_is_aborted(moto_url: str, s3: Any, bucket: str) -> None:
    config = r2_config(moto_url, bucket)
    started = asyncio.Event()

    async def upload_forever() -> None:
        async with open_storage(config) as storage, storage.upload("cancelled.dump", {}) as upload:
            for number in range(1, 1000):
                await upload.write(part(5 * MIB))
                if number == 3:
                    started.set()

    task = asyncio.create_task(upload_forever())
    await asyncio.wait_for(started.wait(), 30)
    assert bucket_state(s3, bucket)[1] == ["cancelled.dump"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert bucket_state(s3, bucket) == ([], [])


async def test_existing_key_is_never_overwritten(moto_url: str, s3: Any, bucket: str) -> None:
    config = r2_config(moto_url, bucket)
    s3.put_object(Bucket=bucket, Key="taken.dump", Body=b"original")

    async with open_storage(config) as storage:
        for parts in (1, 2):  # one PutObject, then a multipart upload
            with pytest.raises(StorageError, match="already exists"):
                async with storage.upload("taken.dump", {}) as upload:
                    for _ in range(parts):
                        await upload.write(part(5 * MIB))
                    await upload.commit()

    assert s3.get_object(Bucket=bucket, Key="taken.dump")["Body"].read() == b"original"
    assert bucket_state(s3, bucket) == (["taken.dump"], [])


async def test_local_storage_publishes_atomically_and_never_overwrites(tmp_path: Path) -> None:
    config = LocalConfig.model_validate({"STORAGE_LOCAL_PATH": str(tmp_path)})
    storage = local.LocalStorage(config)

    async with storage.upload("a/b/file.dump", {}) as upload:
        await upload.write(part(10, 1))
        (in_progress,) = (tmp_path / "a" / "b").iterdir()
        assert in_progress.name.endswith(".partial")
        await upload.write(part(5, 2))
        await upload.commit()
    assert (tmp_path / "a/b/file.dump").read_bytes() == bytes([1]) * 10 + bytes([2]) * 5

    with pytest.raises(StorageError, match="already exists"):
        async with storage.upload("a/b/file.dump", {}) as upload:
            await upload.write(part(3))
            await upload.commit()
    with pytest.raises(RuntimeError, match="boom"):
        async with storage.upload("a/b/other.dump", {}) as upload:
            await upload.write(part(3))
            raise RuntimeError("boom")

    assert sorted(p.name for p in (tmp_path / "a/b").iterdir()) == ["file.dump"]
    with pytest.raises(StorageError, match="escapes STORAGE_LOCAL_PATH"):
        storage.path_for("../outside")


async def test_a_failed_local_write_leaves_no_empty_folder(tmp_path: Path) -> None:
    """As in a bucket, where a failed upload leaves no key: a dump stopped on its first day
    left backups/YYYYMMDD/ behind, empty, which no prune ever removed."""
    storage = local.LocalStorage(LocalConfig.model_validate({"STORAGE_LOCAL_PATH": str(tmp_path)}))
    await storage.put_bytes("backups/20261129/kept.dump", b"kept", "application/octet-stream")

    for key in ("backups/20261130/x.dump", "backups/20261129/y.dump"):
        with pytest.raises(RuntimeError, match="dump failed"):
            async with storage.upload(key, {}) as upload:
                await upload.write(part(3))
                raise RuntimeError("dump failed")

    left = await asyncio.to_thread(lambda: [p.relative_to(tmp_path) for p in tmp_path.rglob("*")])
    assert sorted(p.as_posix() for p in left) == [
        "backups",
        "backups/20261129",
        "backups/20261129/kept.dump",
    ]


async def test_a_write_cancelled_while_its_file_is_being_created_leaves_nothing(
    tmp_path: Path,
) -> None:
    """A dump that fails at once (no such database) cancels the write while the thread that
    creates its temporary file may not have run yet: the clean-up ran first, the file was
    created after it, and a ``.partial`` file stayed in the folder for good."""
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    release = threading.Event()

    class Gated(concurrent.futures.ThreadPoolExecutor):
        """Holds every job after the first (which makes STORAGE_LOCAL_PATH) until released."""

        submitted = 0

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            Gated.submitted += 1
            if Gated.submitted == 1:
                return super().submit(fn, *args, **kwargs)

            def held() -> Any:
                loop.call_soon_threadsafe(started.set)
                release.wait(10)
                return fn(*args, **kwargs)

            return super().submit(held)

    executor = Gated(max_workers=2)
    loop.set_default_executor(executor)
    storage = local.LocalStorage(LocalConfig.model_validate({"STORAGE_LOCAL_PATH": str(tmp_path)}))

    async def write() -> None:
        async with storage.upload("backups/20261130/x.dump", {}):
            await asyncio.sleep(30)

    task = asyncio.create_task(write())
    await asyncio.wait_for(started.wait(), 10)  # the file's creation is submitted, and held
    task.cancel()
    await asyncio.sleep(0.2)  # the clean-up, when it does not wait, has run by now
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    executor.shutdown(wait=True)  # whatever the gate held has run
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))

    left = await asyncio.to_thread(lambda: [p.name for p in tmp_path.rglob("*") if p.is_file()])
    assert left == []


def test_local_backup_round_trip(pg: PostgresServer, tmp_path: Path) -> None:
    database = "local_copy"
    pg.create_database(database, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g;")
    store = tmp_path / "store"
    env = {**pg_env(pg, database), "STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(store)}

    result = run_backupd("once", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(p for p in store.rglob("*") if p.is_file())
    assert [p.suffix for p in files] == [".dump", ".json"]
    manifest = json.loads(files[1].read_bytes())
    assert manifest["sha256"] == hashlib.sha256(files[0].read_bytes()).hexdigest()

    failed = run_backupd("once", env={**env, "DB_DATABASE": "no_such_database"})
    assert failed.returncode == 1
    assert sorted(p for p in store.rglob("*") if p.is_file()) == files


def test_a_local_backup_is_never_readable_by_every_user_of_the_host(
    pg: PostgresServer, tmp_path: Path
) -> None:
    database = "local_private"
    pg.create_database(database, "CREATE TABLE secrets AS SELECT 'hunter2' AS password;")
    store = tmp_path / "store"
    env = {**pg_env(pg, database), "STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(store)}

    umask = os.umask(0o022)  # a container's default, which backupd inherits
    try:
        result = run_backupd("once", env=env)
    finally:
        os.umask(umask)

    assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(p for p in store.rglob("*") if p.is_file())
    assert [p.suffix for p in files] == [".dump", ".json"]
    assert [oct(p.stat().st_mode & 0o777) for p in files] == ["0o640", "0o640"]


def test_a_symbolic_link_inside_the_local_folder_is_named_as_such(
    pg: PostgresServer, tmp_path: Path
) -> None:
    database = "local_linked"
    pg.create_database(database, "CREATE TABLE t (n int);")
    store, elsewhere = tmp_path / "store", tmp_path / "bigger_disk"
    store.mkdir()
    elsewhere.mkdir()
    (store / "backups").symlink_to(elsewhere)
    env = {**pg_env(pg, database), "STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(store)}

    result = run_backupd("once", env=env)

    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert f"{store / 'backups'} is a symbolic link (to {elsewhere})" in line, line
    assert "escapes" not in line
    assert list(elsewhere.iterdir()) == []
    listing = run_backupd("list", env=env)
    assert listing.returncode == 1
    assert f"{store / 'backups'} is a symbolic link" in listing.stdout, listing.stdout


def test_reading_a_local_folder_that_does_not_exist_says_so(tmp_path: Path) -> None:
    """A typo in STORAGE_LOCAL_PATH, or a volume not mounted, at restore time in an emergency:
    "no complete backup of database 'shop'" and an empty list read as if the backups were
    gone, where a bucket that does not exist is an error naming it."""
    typo = tmp_path / "bakups"
    env = {
        "DB_HOST": "db.internal",
        "DB_USER": "backup",
        "DB_DATABASE": "shop",
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(typo),
    }

    for command in (["list"], ["restore", "--to-file", str(tmp_path / "shop.dump")]):
        result = run_backupd(*command, env=env)

        assert result.returncode == 1, result.stdout + result.stderr
        (line,) = [line for line in result.stdout.splitlines() if "FAILED" in line]
        assert f"STORAGE_LOCAL_PATH {typo} does not exist" in line, line
    assert not typo.exists()


def test_a_restored_file_is_never_readable_by_every_user_of_the_host(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """``restore --to-file`` writes the whole database, decrypted and decompressed."""
    database = "to_file_private"
    pg.create_database(database, "CREATE TABLE secrets AS SELECT 'hunter2' AS password;")
    env = {
        **pg_env(pg, database),
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(tmp_path / "store"),
    }
    assert run_backupd("once", env=env).returncode == 0

    umask = os.umask(0o022)  # a container's default, which backupd inherits
    try:
        result = run_backupd("restore", "--to-file", str(tmp_path / "restored.dump"), env=env)
    finally:
        os.umask(umask)

    assert result.returncode == 0, result.stdout + result.stderr
    assert oct((tmp_path / "restored.dump").stat().st_mode & 0o777) == "0o640"


def test_check_probes_database_dump_tool_and_storage(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    env = {**pg_env(pg, "postgres"), **storage_env(moto_url, bucket)}

    result = run_backupd("check", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ok   configuration")
    assert any(line.startswith("ok   default database: postgres") for line in lines)
    assert any(line.startswith("ok   default dump tool: pg_dump") for line in lines)
    assert any(
        line.startswith("ok   default storage: wrote and deleted a probe object") for line in lines
    )
    assert bucket_state(s3, bucket) == ([], [])

    bad = run_backupd(
        "check", env={**env, "DB_PASSWORD": "wrong", "STORAGE_BUCKET_NAME": "missing-bucket"}
    )
    assert bad.returncode == 1
    failures = [line for line in bad.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failures) == 2
    assert "password authentication failed" in failures[0]
    assert "does not exist (STORAGE_BUCKET_NAME)" in failures[1]


async def test_the_newest_backups_manifests_are_read_side_by_side(
    proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """After each run the anomaly check reads the newest manifests of every database: with a
    round trip per manifest, they are read side by side, not one after another."""
    first = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    keys = {
        database: [put_backup(s3, bucket, database, first + timedelta(days=n)) for n in range(6)]
        for database in ("app", "crm")
    }
    proxy.manifest_delay = 0.5  # a slow store: sequential reads would arrive 0.5 s apart

    async with open_storage(s3_config(proxy.url, bucket)) as storage:
        found = await catalogue.recent(storage, FOLDER, [keys["app"][-1], keys["crm"][-1]], 4)

    for database in ("app", "crm"):
        mine = found[keys[database][-1]]
        assert [b.key for b in mine] == keys[database][-4:][::-1]
        assert all(b.complete and b.manifest is not None for b in mine)
        assert [b.manifest.database for b in mine if b.manifest] == [database] * 4
    reads = sorted(
        t for t, _, target in proxy.arrivals if target.split("?")[0].endswith(MANIFEST_SUFFIX)
    )
    assert len(reads) == 8
    assert sum(1 for t in reads if t - reads[0] < proxy.manifest_delay) >= 4


async def test_a_failed_manifest_read_stops_the_other_reads(
    proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """The catalogue gives up on the first manifest it cannot read: the reads still queued are
    never sent, rather than going on against a store the caller is done with."""
    first = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    keys = [put_backup(s3, bucket, "app", first + timedelta(hours=n)) for n in range(40)]
    refused = proxy.refuse_gets_ending = catalogue.manifest_key(keys[0])
    proxy.manifest_delay = 0.3

    def manifest_reads() -> int:
        return sum(
            1
            for _, method, target in proxy.arrivals
            if method == "GET" and target.split("?")[0].endswith(MANIFEST_SUFFIX)
        )

    async with open_storage(s3_config(proxy.url, bucket)) as storage:
        with pytest.raises(StorageError, match=re.escape(refused)):
            await catalogue.scan(storage, FOLDER)
        failed_after = manifest_reads()
        await asyncio.sleep(4 * proxy.manifest_delay)  # queued reads would have gone out by now
        assert manifest_reads() == failed_after
    assert failed_after <= catalogue.MANIFEST_READS_AT_ONCE


async def test_an_endpoint_that_accepts_but_never_answers_fails_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """botocore asks for ``100 Continue`` on every body, and aiohttp waits for it without any
    timeout: such an endpoint held a backup forever. Without it, each attempt waits for its
    answer at most the read timeout."""
    monkeypatch.setattr(s3_storage, "CONTROL_READ_TIMEOUT", 0.5)
    with silent_server() as port:
        endpoint = f"http://127.0.0.1:{port}"
        async with open_storage(s3_config(endpoint, "bucket")) as storage:
            async with asyncio.timeout(60):
                with pytest.raises(StorageError, match="accepted the connection but did"):
                    await storage.put_bytes("backups/probe", b"x", "text/plain")


class _Bytes:
    """A dump of ``size`` bytes that, once read to its end, has the login probe fail."""

    def __init__(self, size: int, probe: asyncio.Future[Any]) -> None:
        self.left, self.probe = size, probe

    async def fill(self, target: io.BytesIO | bytearray) -> int:
        view = target.getbuffer() if isinstance(target, io.BytesIO) else memoryview(target)
        count = min(len(view), self.left)
        view[:count] = b"x" * count
        self.left -= count
        if count < len(view) and not self.probe.done():
            failure = ConnectError("cannot log in (the probe failed late)")
            asyncio.get_running_loop().call_later(0.05, self.probe.set_exception, failure)
        await asyncio.sleep(0)
        return count


async def test_a_login_failing_as_the_upload_aborts_waits_for_the_abort(
    proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """A failed login stops the store beside it; if the store is already aborting its
    multipart upload, that abort still ends before the failure is raised: an upload left
    open is billed until retention aborts it."""
    proxy.hold = lambda method, target: method == "DELETE" and "uploadId=" in target

    def answer_the_abort_late() -> None:
        proxy.holding.wait(30)
        time.sleep(0.5)
        proxy.release.set()

    threading.Thread(target=answer_the_abort_late, daemon=True).start()
    env = {
        **pg_env_stub(),
        **storage_env(proxy.url, bucket, STORAGE_PART_SIZE="5MiB"),
        "COMPRESSION": "none",
    }
    (target,) = load_settings(env).targets
    probe: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    @contextlib.asynccontextmanager
    async def opened(native: bool, snapshot: str | None) -> AsyncIterator[_Bytes]:
        yield _Bytes(3 * 5 * MIB + 10, probe)

    dump = Dump("shop", ".dump", opened, False, _nothing_recorded)
    async with open_storage(target.storage) as storage:
        with pytest.raises(ConnectError):
            await dump_to_storage(target, dump, storage, probe, LogProgress())
        assert proxy.release.is_set(), "the failure came before the abort's answer"
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert bucket_state(s3, bucket) == ([], [])


def pg_env_stub() -> dict[str, str]:
    """A PostgreSQL target's settings; nothing here connects to it."""
    return {"DB_TYPE": "postgres", "DB_HOST": "127.0.0.1", "DB_USER": "u", "DB_DATABASE": "shop"}


def put_stand_in_backup(s3: Any, bucket: str, data: bytes) -> str:
    """``data`` stored as app's backup of 2026-11-01 02:00 with its manifest: its key."""
    key = f"{FOLDER}/20261101/backup_app_20261101_020000_0123abcd.dump"
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    manifest = {
        "key": key,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "started": "2026-11-01T02:00:00+00:00",
        "finished": "2026-11-01T02:00:01+00:00",
        "duration_s": 1.0,
        "target": "default",
        "database": "app",
        "engine": "postgres",
    }
    s3.put_object(Bucket=bucket, Key=key + MANIFEST_SUFFIX, Body=json.dumps(manifest).encode())
    return key


def stand_in_env(proxy: FaultProxy, bucket: str) -> dict[str, str]:
    return {
        **pg_env_stub(),
        **storage_env(proxy.url, bucket),
        "DB_DATABASE": "app",
        "STORAGE_DESTINATION_FOLDER": FOLDER,
    }


def test_a_download_cut_short_every_time_is_one_line_naming_the_key(
    proxy: FaultProxy, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """botocore wraps aiohttp's errors while a request is sent, not while its body is read:
    a connection lost mid-download raised aiohttp's ClientPayloadError, a traceback out of
    ``restore`` and ``verify`` (and out of a scheduled verify's task). Every answer cut after
    3 MiB: five requests bring 15 MiB of 24, and the download fails."""
    data = bytes(range(256)) * (24 * MIB // 256)
    key = put_stand_in_backup(s3, bucket, data)
    proxy.cut_answers = lambda method, target: (
        method == "GET" and target.split("?")[0].endswith(".dump")
    )
    proxy.cut_after = 3 * MIB
    env = stand_in_env(proxy, bucket)

    out = tmp_path / "app.dump"
    restored = run_backupd("restore", "--to-file", str(out), env=env)
    verified = run_backupd("verify", "--key", key, env=env)

    for result in (restored, verified):
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "Traceback" not in output, output
        assert f"download {key}: cut short 5 time(s)" in output, output
        assert output.count("asking for the rest") == 4, output
    assert not out.exists()


def test_a_download_resumed_after_the_object_changed_fails_rather_than_splice(
    proxy: FaultProxy, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """The rest of a download cut short is asked for under IfMatch the first answer's ETag:
    an object replaced in between (by hand: backupd never overwrites) is refused, never
    spliced onto the first bytes of the one before."""
    data = bytes(range(256)) * (12 * MIB // 256)
    key = put_stand_in_backup(s3, bucket, data)
    gets: list[str] = []

    def replaced_after_the_first(method: str, target: str) -> bool:
        if method != "GET" or not target.split("?")[0].endswith(".dump"):
            return False
        gets.append(target)
        if len(gets) == 2:
            s3.put_object(Bucket=bucket, Key=key, Body=bytes(len(data)))
        return len(gets) == 1

    proxy.cut_answers = replaced_after_the_first
    proxy.cut_after = 5 * MIB
    out = tmp_path / "app.dump"

    restored = run_backupd("restore", "--to-file", str(out), env=stand_in_env(proxy, bucket))

    output = restored.stdout + restored.stderr
    assert restored.returncode == 1, output
    assert f"download {key}: the object changed while it was read" in output, output
    assert "Traceback" not in output
    assert not out.exists()
    assert len(gets) == 2


def test_a_download_cut_short_is_asked_for_again_from_where_it_stopped(
    proxy: FaultProxy, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """A restore of a large backup over a network that drops a connection once failed and
    had to start again from the first byte; the rest is now asked for with a Range request,
    and the restored bytes are the stored ones (the manifest's sha256 checks them)."""
    data = bytes(range(256)) * (12 * MIB // 256)
    key = put_stand_in_backup(s3, bucket, data)
    cut: list[str] = []

    def first_download(method: str, target: str) -> bool:
        if method == "GET" and target.split("?")[0].endswith(".dump") and not cut:
            cut.append(target)
            return True
        return False

    proxy.cut_answers = first_download
    proxy.cut_after = 5 * MIB
    env = stand_in_env(proxy, bucket)

    out = tmp_path / "app.dump"
    restored = run_backupd("restore", "--to-file", str(out), env=env)

    output = restored.stdout + restored.stderr
    assert restored.returncode == 0, output
    assert out.read_bytes() == data
    assert f"download {key}: cut short after " in output
    assert "asking for the rest (attempt 2 of 5)" in output
    gets = [t for m, t, _ in proxy.requests if m == "GET" and t.split("?")[0].endswith(".dump")]
    assert len(gets) == 2, gets


async def test_a_folder_that_fills_up_as_a_write_is_flushed_keeps_nothing_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small write (a manifest, a dump's last few KiB) sits in the file's buffer until the
    commit flushes it. On a full disk that flush fails, and so did closing the file after
    it: a bare OSError (no retry of the manifest, no one-line failure, the run's other
    databases skipped) and the temporary file left behind."""
    original = local.LocalUpload.open

    def full_disk() -> BinaryIO:
        return Path("/dev/full").open("wb")  # every flush fails: ENOSPC

    async def on_a_full_disk(self: local.LocalUpload) -> None:
        await original(self)  # the temporary file exists, as it would
        assert self._file is not None
        self._file.close()
        self._file = await asyncio.to_thread(full_disk)

    monkeypatch.setattr(local.LocalUpload, "open", on_a_full_disk)
    storage = local.LocalStorage(LocalConfig.model_validate({"STORAGE_LOCAL_PATH": str(tmp_path)}))

    with pytest.raises(StorageError, match="No space left on device"):
        await storage.put_bytes("backups/20261101/x.dump.manifest.json", b"{}", "text/plain")

    left = await asyncio.to_thread(lambda: [p.name for p in tmp_path.rglob("*") if p.is_file()])
    assert left == []


async def test_a_lost_answer_to_the_uploads_start_leaves_no_upload_open(
    proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """botocore resends a CreateMultipartUpload whose answer was lost: the store then holds
    two uploads of the key, and the first, which no part ever reaches, stayed open after the
    backup was published (until a retention policy aborts it, if there is one)."""
    lost: list[str] = []

    def lose_the_first_start(method: str, target: str) -> bool:
        if method == "POST" and target.endswith("?uploads") and not lost:
            lost.append(target)
            return True
        return False

    proxy.lose_answers = lose_the_first_start
    config = s3_config(proxy.url, bucket, STORAGE_PART_SIZE="5MiB")

    async with open_storage(config) as storage, storage.upload("backups/app/x.dump", {}) as upload:
        for _ in range(3):
            await upload.write(part(5 * MIB))
        await upload.commit()

    assert lost
    assert bucket_state(s3, bucket) == (["backups/app/x.dump"], [])


async def test_a_listing_passes_over_what_another_targets_prune_deletes_meanwhile(
    tmp_path: Path,
) -> None:
    """Two targets share STORAGE_LOCAL_PATH, and each prunes after its run (two run at once by
    default): target b's deletes, and its writes linking their temporary files into place,
    must not fail target a's listing of its backups and leftovers."""
    config = LocalConfig.model_validate({"STORAGE_LOCAL_PATH": str(tmp_path)})
    storage, other = local.LocalStorage(config), local.LocalStorage(config)
    await storage.put_bytes("backups/a/20261130/backup_a.dump", b"a", "application/octet-stream")
    stop = threading.Event()

    async def churn() -> None:
        while not stop.is_set():
            keys = [f"backups/b/2026{day:04d}/backup_b.dump" for day in range(20)]
            for key in keys:
                await other.put_bytes(key, b"b", "application/octet-stream")
            for key in keys:
                await other.delete(key)

    churning = threading.Thread(target=asyncio.run, args=(churn(),))
    churning.start()
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            listed = [o.key async for o in storage.list_objects("backups/a/")]
            pending = [u async for u in storage.list_uploads("backups/a/")]
            assert (listed, pending) == (["backups/a/20261130/backup_a.dump"], [])
    finally:
        stop.set()
        churning.join()
