"""What pruning needs from storage: batched deletes, pending uploads, Object Lock."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backupd.config import MIB, LocalConfig, S3Config
from backupd.errors import StorageError
from backupd.parts import Part
from backupd.storage import local, open_storage
from backupd.storage.base import Removal
from tests.conftest import (
    S3_KEY_ID,
    S3_SECRET,
    bucket_state,
    pg_env,
    run_backupd,
    storage_env,
)
from tests.servers import PostgresServer


def s3_config(endpoint: str, bucket: str, **extra: str) -> S3Config:
    return S3Config.model_validate(
        {
            "STORAGE_ENDPOINT_URL": endpoint,
            "STORAGE_ACCESS_KEY_ID": S3_KEY_ID,
            "STORAGE_SECRET_ACCESS_KEY": S3_SECRET,
            "STORAGE_BUCKET_NAME": bucket,
            "STORAGE_PART_SIZE": "5MiB",
            **extra,
        }
    )


@pytest.fixture
def locked_bucket(s3: Any) -> str:
    name = f"l-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def part(size: int) -> Part:
    return Part(io.BytesIO(b"x" * size), size)


async def test_pending_uploads_are_listed_under_a_prefix_and_aborted(
    moto_url: str, s3: Any, bucket: str
) -> None:
    mine = s3.create_multipart_upload(Bucket=bucket, Key="backups/app/20261128/x.dump")
    s3.create_multipart_upload(Bucket=bucket, Key="backups/app2/20261128/y.dump")
    async with open_storage(s3_config(moto_url, bucket)) as storage:
        pending = [u async for u in storage.list_uploads("backups/app/")]
        assert [(u.key, u.upload_id) for u in pending] == [
            ("backups/app/20261128/x.dump", mine["UploadId"])
        ]
        # moto reports 2010-11-10T20:48:33Z as every upload's start; a real store, the time
        assert pending[0].initiated.tzinfo is not None
        await storage.abort_upload(pending[0])
        await storage.abort_upload(pending[0])  # already gone: no error
    left = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left == ["backups/app2/20261128/y.dump"]


async def test_delete_many_reports_what_it_could_not_delete(
    moto_url: str, s3: Any, locked_bucket: str
) -> None:
    until = datetime.now(UTC) + timedelta(days=1)
    s3.put_object(
        Bucket=locked_bucket,
        Key="locked",
        Body=b"x",
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=until,
        ChecksumAlgorithm="CRC32",
    )
    s3.put_object(Bucket=locked_bucket, Key="free", Body=b"x")
    async with open_storage(s3_config(moto_url, locked_bucket)) as storage:
        assert await storage.object_lock_enabled()
        locked, free = await storage.lock_of("locked"), await storage.lock_of("free")
        assert locked.mode == "GOVERNANCE" and locked.holds(datetime.now(UTC))
        assert not free.holds(datetime.now(UTC)) and free.version_id is not None
        assert (await storage.lock_of("missing")).until is None
        failed = await storage.delete_many(
            [Removal("locked", locked.version_id), Removal("free", free.version_id)]
        )
    assert list(failed) == ["locked"]
    versions = s3.list_object_versions(Bucket=locked_bucket)
    assert [v["Key"] for v in versions.get("Versions", [])] == ["locked"]
    assert versions.get("DeleteMarkers", []) == []


async def test_objects_and_manifests_are_written_under_object_lock(
    moto_url: str, s3: Any, locked_bucket: str
) -> None:
    config = s3_config(moto_url, locked_bucket, STORAGE_OBJECT_LOCK_DAYS="7")
    sent: dict[str, dict[str, str]] = {}

    def record(request: Any, **_: Any) -> None:
        sent[request.url] = {
            k.lower(): v.decode() if isinstance(v, bytes) else str(v)
            for k, v in request.headers.items()
        }

    async with open_storage(config) as storage:
        client = await storage.client()  # type: ignore[attr-defined]
        client.meta.events.register("before-send.s3.CreateMultipartUpload", record)
        await storage.put_bytes("m.json", b"{}", "application/json", locked=True)
        await storage.put_bytes("probe", b"{}", "text/plain")
        async with storage.upload("single.dump", {}, locked=True) as upload:
            await upload.write(part(100))
            await upload.commit()
        async with storage.upload("multi.dump", {}, locked=True) as upload:
            await upload.write(part(5 * MIB))
            await upload.write(part(100))
            await upload.commit()
    for key in ("m.json", "single.dump"):
        head = s3.head_object(Bucket=locked_bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE", key
        retained = head["ObjectLockRetainUntilDate"] - datetime.now(UTC)
        assert timedelta(days=6, hours=23) < retained <= timedelta(days=7), key
    assert "ObjectLockMode" not in s3.head_object(Bucket=locked_bucket, Key="probe")
    # moto drops the lock of a multipart upload; the request must still carry it
    (headers,) = sent.values()
    assert headers["x-amz-object-lock-mode"] == "GOVERNANCE"
    until = datetime.fromisoformat(headers["x-amz-object-lock-retain-until-date"])
    assert timedelta(days=6, hours=23) < until - datetime.now(UTC) <= timedelta(days=7)


async def test_object_lock_on_a_bucket_without_it_fails_clearly(moto_url: str, bucket: str) -> None:
    config = s3_config(moto_url, bucket, STORAGE_OBJECT_LOCK_DAYS="7")
    async with open_storage(config) as storage:
        assert not await storage.object_lock_enabled()
        with pytest.raises(StorageError, match=r"write m\.json"):
            await storage.put_bytes("m.json", b"{}", "application/json", locked=True)


async def test_local_storage_deletes_and_finds_unfinished_writes(tmp_path: Path) -> None:
    storage = local.LocalStorage(LocalConfig.model_validate({"STORAGE_LOCAL_PATH": tmp_path}))
    for key in ("app/1/a.dump", "app/1/b.dump", "app2/1/c.dump"):
        await storage.put_bytes(key, b"x", "application/octet-stream")
    (tmp_path / "app/1/.d.dump.0a1b2c3d.partial").write_bytes(b"half")
    (tmp_path / "app2/1/.e.dump.0a1b2c3d.partial").write_bytes(b"half")

    assert await storage.delete_many([Removal("app/1/a.dump"), Removal("app/1/gone.dump")]) == {}
    assert [o.key async for o in storage.list_objects("app/")] == ["app/1/b.dump"]
    pending = [u async for u in storage.list_uploads("app/")]
    assert [u.key for u in pending] == ["app/1/d.dump"]
    await storage.abort_upload(pending[0])
    assert not (tmp_path / "app/1/.d.dump.0a1b2c3d.partial").exists()
    assert (tmp_path / "app2/1/.e.dump.0a1b2c3d.partial").exists()
    assert not await storage.object_lock_enabled()
    assert (await storage.lock_of("app/1/b.dump")).until is None


async def test_local_storage_leaves_no_empty_folder_behind(tmp_path: Path) -> None:
    root = tmp_path / "store"
    storage = local.LocalStorage(LocalConfig.model_validate({"STORAGE_LOCAL_PATH": root}))
    keys = ["backups/app/20261120/a.dump", "backups/app/20261121/b.dump", "backups/x/1/c.dump"]
    for key in keys:
        await storage.put_bytes(key, b"x", "application/octet-stream")
    (root / "backups/x/1/.d.dump.0a1b2c3d.partial").write_bytes(b"half")

    assert await storage.delete_many([Removal(keys[0])]) == {}
    assert not (root / "backups/app/20261120").exists()
    assert (root / "backups/app/20261121/b.dump").exists()
    await storage.delete(keys[2])
    assert (root / "backups/x/1").is_dir()  # the unfinished write is still there
    (pending,) = [u async for u in storage.list_uploads("backups/x/")]
    await storage.abort_upload(pending)
    assert not (root / "backups/x").exists()
    await storage.delete(keys[1])
    assert root.is_dir() and list(root.iterdir()) == []

    await storage.put_bytes(keys[0], b"y", "application/octet-stream")  # made again
    assert (root / keys[0]).read_bytes() == b"y"


def test_backups_are_locked_and_check_verifies_the_bucket(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, locked_bucket: str
) -> None:
    database = f"lock_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t AS SELECT 1 AS n;")
    env = {**pg_env(pg, database), "STORAGE_OBJECT_LOCK_DAYS": "3"}

    done = run_backupd("once", env={**env, **storage_env(moto_url, locked_bucket)})
    checked = run_backupd("check", env={**env, **storage_env(moto_url, locked_bucket)})
    refused = run_backupd("check", env={**env, **storage_env(moto_url, bucket)})

    assert done.returncode == 0, done.stdout + done.stderr
    keys, _ = bucket_state(s3, locked_bucket)
    assert len(keys) == 2  # the dump and its manifest: the check's probe is gone
    for key in keys:
        head = s3.head_object(Bucket=locked_bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE", key
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok   default object lock: enabled" in checked.stdout
    assert refused.returncode == 1
    assert (
        f"FAIL default object lock: STORAGE_OBJECT_LOCK_DAYS is set but bucket {bucket} "
        "does not have Object Lock enabled"
    ) in refused.stdout
