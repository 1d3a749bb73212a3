"""A backup streamed into S3 restores into a database identical to the original."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.conftest import bucket_state, mariadb_env, pg_env, run_backupd, storage_env, unique
from tests.servers import MariaDBServer, PostgresServer

DATA = Path(__file__).parent.parent / "data"
KEY = re.compile(r"^backups/(\d{8})/backup_(\w+)_(\d{8})_\d{6}_[0-9a-f]{8}(\.\w+(?:\.\w+)?)$")
# About 13 MB of rows: with 5 MiB parts, a dump of three parts.
PG_BULK = (
    "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS payload"
    " FROM generate_series(1, 200000) g"
)
MARIADB_BULK = (
    "CREATE TABLE bulk (id INT PRIMARY KEY, payload CHAR(64)) ENGINE=InnoDB;"
    "INSERT INTO bulk SELECT seq, CONCAT(MD5(seq), MD5(seq * 7)) FROM seq_1_to_200000;"
)


def fetch_backup(s3: Any, bucket: str) -> tuple[str, bytes, dict[str, Any]]:
    """The one backup in ``bucket``: its key, bytes and manifest, checked against each other."""
    keys, uploads = bucket_state(s3, bucket)
    assert uploads == []
    data_keys = [k for k in keys if not k.endswith(".manifest.json")]
    assert len(data_keys) == 1, keys
    key = data_keys[0]
    assert f"{key}.manifest.json" in keys
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{key}.manifest.json")["Body"].read())
    assert manifest["sha256"] == hashlib.sha256(body).hexdigest()
    assert manifest["size"] == len(body)
    assert manifest["key"] == key
    return key, body, manifest


def decompress(body: bytes, key: str) -> bytes:
    if key.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if key.endswith(".gz"):
        return gzip.decompress(body)
    return body


@pytest.mark.parametrize(
    ("compression", "extension"),
    [("auto", ".dump"), ("none", ".dump"), ("zstd", ".dump.zst"), ("gzip", ".dump.gz")],
)
def test_postgres_backup_restores_identically(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, compression: str, extension: str
) -> None:
    database = unique("shop")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())

    result = run_backupd(
        "once",
        env={**pg_env(pg, database), **storage_env(moto_url, bucket), "COMPRESSION": compression},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    key, body, manifest = fetch_backup(s3, bucket)
    match = KEY.match(key)
    assert match is not None, key
    assert match.group(1) == match.group(3)
    assert match.group(2) == database
    assert match.group(4) == extension
    assert manifest["engine"] == "postgres"
    assert manifest["database"] == database
    assert manifest["server_version"].startswith(pg.psql("SHOW server_version").strip().split()[0])
    assert manifest["tool_version"].startswith("pg_dump ")
    head = s3.head_object(Bucket=bucket, Key=key)["Metadata"]
    assert head["backup-type"] == "postgres"
    assert head["database"] == database
    assert head["timezone"] == "UTC"
    assert head["uploaded-by"].startswith("backupd/")

    restored = unique("restored")
    pg.restore(decompress(body, key), restored)
    assert pg.plain_dump(restored) == pg.plain_dump(database)


@pytest.mark.parametrize(
    ("compression", "extension"), [("auto", ".sql.zst"), ("none", ".sql"), ("gzip", ".sql.gz")]
)
def test_mariadb_backup_restores_identically(
    mariadb: MariaDBServer, moto_url: str, s3: Any, bucket: str, compression: str, extension: str
) -> None:
    database = unique("shop")
    mariadb.create_database(database, (DATA / "mariadb_sample.sql").read_text())

    result = run_backupd(
        "once",
        env={
            **mariadb_env(mariadb, database),
            **storage_env(moto_url, bucket),
            "COMPRESSION": compression,
        },
    )

    assert result.returncode == 0, result.stdout + result.stderr
    key, body, manifest = fetch_backup(s3, bucket)
    assert key.endswith(extension)
    assert manifest["engine"] == "mariadb"
    assert "MariaDB" in manifest["server_version"]
    restored = unique("restored")
    mariadb.restore(decompress(body, key), restored)
    assert mariadb.plain_dump(restored) == mariadb.plain_dump(database)
    assert "😀" in mariadb.root_sql("SELECT note FROM customers WHERE id = 1", restored)


def test_postgres_multipart_backup_restores_identically(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("big")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text() + ";" + PG_BULK)

    result = run_backupd(
        "once",
        env={
            **pg_env(pg, database),
            **storage_env(moto_url, bucket),
            "COMPRESSION": "none",
            "STORAGE_PART_SIZE": "5MiB",
        },
    )

    assert result.returncode == 0, result.stdout + result.stderr
    key, body, _ = fetch_backup(s3, bucket)
    assert len(body) > 10 * 1024 * 1024
    assert s3.head_object(Bucket=bucket, Key=key)["ETag"].endswith('-3"'), (
        "expected a three-part upload"
    )
    restored = unique("restored")
    pg.restore(body, restored)
    assert pg.plain_dump(restored) == pg.plain_dump(database)


def test_mariadb_multipart_backup_restores_identically(
    mariadb: MariaDBServer, moto_url: str, s3: Any, bucket: str
) -> None:
    database = unique("big")
    mariadb.create_database(database, (DATA / "mariadb_sample.sql").read_text() + MARIADB_BULK)

    result = run_backupd(
        "once",
        env={
            **mariadb_env(mariadb, database),
            **storage_env(moto_url, bucket),
            "COMPRESSION": "none",
            "STORAGE_PART_SIZE": "5MiB",
        },
    )

    assert result.returncode == 0, result.stdout + result.stderr
    key, body, _ = fetch_backup(s3, bucket)
    assert s3.head_object(Bucket=bucket, Key=key)["ETag"].endswith('-3"'), (
        "expected a three-part upload"
    )
    restored = unique("restored")
    mariadb.restore(body, restored)
    assert mariadb.plain_dump(restored) == mariadb.plain_dump(database)
