"""Backups encrypted in the stream to age recipients: standard age files that the stock tools
restore, and that ``backupd restore`` decrypts only with a matching identity."""

from __future__ import annotations

import os
import random
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import mariadb_env, pg_env, run_backupd, storage_env
from tests.integration import test_mssql
from tests.integration.test_mssql import SIZE, mssql_env
from tests.integration.test_roundtrip import fetch_backup
from tests.servers import MariaDBServer, PostgresServer

DATA = Path(__file__).parent.parent / "data"
AGE_HEADER = b"age-encryption.org/v1\n"
sqlcmd = test_mssql.sqlcmd  # the stand-in SQL Server's fixture


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    """Two age identities and an SSH ed25519 key pair, with their public halves."""
    found: dict[str, Any] = {}
    for name in ("key", "other"):
        path = tmp_path / f"{name}.txt"
        subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
        found[name] = path
        found[f"{name}_public"] = subprocess.run(
            ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
        ).stdout.strip()
    ssh = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@example", "-f", str(ssh)],
        check=True,
    )
    found["ssh"] = ssh
    found["ssh_public"] = " ".join(ssh.with_suffix(".pub").read_text().split()[:2])
    return found


def recipe(script: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run a shell pipeline of stock tools, as a person restoring without backupd would."""
    subprocess.run(
        ["bash", "-o", "pipefail", "-ec", script],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=True,
        capture_output=True,
    )


def test_postgres_backup_is_an_age_file_for_each_recipient_and_the_stock_tools_restore_it(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, keys: dict[str, Any], tmp_path: Path
) -> None:
    database, marker = unique("secret"), f"plaintext-marker-{uuid.uuid4().hex}"
    pg.create_database(
        database,
        (DATA / "postgres_sample.sql").read_text()
        + f";INSERT INTO customers (name) VALUES ('{marker}')",
    )
    env = {
        **pg_env(pg, database),
        **storage_env(moto_url, bucket),
        "COMPRESSION": "none",  # the marker would be readable in an unencrypted dump
        "ENCRYPTION_RECIPIENTS": f"{keys['key_public']}, {keys['ssh_public']} ops@example",
    }

    result = run_backupd("once", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    key, body, manifest = fetch_backup(s3, bucket)
    assert key.endswith(".dump.age")
    assert body.startswith(AGE_HEADER)
    assert marker.encode() not in body
    assert manifest["encryption"]["format"] == "age"
    assert manifest["encryption"]["recipients"] == [keys["key_public"], keys["ssh_public"]]
    assert manifest["encryption"]["plaintext_size"] < len(body)
    (tmp_path / "backup.dump.age").write_bytes(body)
    restored = unique("restored")
    pg.create_database(restored)
    recipe(
        f"age -d -i key.txt backup.dump.age | pg_restore --no-owner -d {restored}",
        tmp_path,
        pg.env(restored),
    )
    assert pg.plain_dump(restored) == pg.plain_dump(database)
    recipe("age -d -i id_ed25519 -o by-ssh.dump backup.dump.age", tmp_path)
    assert (tmp_path / "by-ssh.dump").stat().st_size == manifest["encryption"]["plaintext_size"]


def test_mariadb_backup_is_compressed_then_encrypted_and_the_stock_tools_restore_it(
    mariadb: MariaDBServer,
    moto_url: str,
    s3: Any,
    bucket: str,
    keys: dict[str, Any],
    tmp_path: Path,
) -> None:
    database = unique("shop")
    mariadb.create_database(database, (DATA / "mariadb_sample.sql").read_text())
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# the offline key\n{keys['key_public']}\n")
    env = {
        **mariadb_env(mariadb, database),
        **storage_env(moto_url, bucket),
        "ENCRYPTION_RECIPIENTS_FILE": str(recipients),
    }

    result = run_backupd("once", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    key, body, manifest = fetch_backup(s3, bucket)
    assert key.endswith(".sql.zst.age")
    assert body.startswith(AGE_HEADER)
    assert manifest["compression"]["stream"] == "zstd"
    (tmp_path / "backup.sql.zst.age").write_bytes(body)
    restored = unique("restored")
    mariadb.create_database(restored)
    recipe(
        "age -d -i key.txt backup.sql.zst.age | zstd -d"
        " | grep -v -e '^CREATE DATABASE' -e '^USE '"
        f" | mariadb --socket={mariadb.socket} -uroot --default-character-set=utf8mb4 {restored}",
        tmp_path,
    )
    assert mariadb.plain_dump(restored) == mariadb.plain_dump(database)


def test_sql_server_bak_goes_through_the_same_stages(
    sqlcmd: dict[str, Any],
    moto_url: str,
    s3: Any,
    bucket: str,
    keys: dict[str, Any],
    tmp_path: Path,
) -> None:
    env = mssql_env(sqlcmd, moto_url, bucket, ENCRYPTION_RECIPIENTS=keys["key_public"])

    result = run_backupd("once", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    key, body, manifest = fetch_backup(s3, bucket)
    assert key.endswith(".bak.age")
    assert body.startswith(AGE_HEADER)
    assert manifest["encryption"]["plaintext_size"] == SIZE
    assert list(sqlcmd["shared"].iterdir()) == []
    (tmp_path / "backup.bak.age").write_bytes(body)
    recipe("age -d -i key.txt -o backup.bak backup.bak.age", tmp_path)
    assert (tmp_path / "backup.bak").read_bytes() == random.Random(7).randbytes(SIZE)
