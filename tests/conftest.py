from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.servers import (
    CERTIFIED_USER,
    FaultProxy,
    MariaDBServer,
    PostgresServer,
    TLSFiles,
    atomic_moto_endpoint,
    issue,
    make_ca,
    moto_endpoint,
)

AMBIENT_PREFIXES = (
    "AWS_",
    "DB_",
    "STORAGE_",
    "EMAIL_",
    "SEQ_",
    "PG",
    "MYSQL",
    "BACKUPD_",
    "COMPRESSION",
    "TIMEZONE",
)
S3_KEY_ID = "backupd-test-key-id"
S3_SECRET = "backupd-test-SECRET-8f1c2e"
BULK_ROWS = 400_000  # ~25 MB of dump: five parts of 5 MiB
BULK_SQL = (
    "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS payload"
    " FROM generate_series(1, {rows}) g"
)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A developer's shell must not change what the suite asserts."""
    for name in list(os.environ):
        if name.startswith(AMBIENT_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _scratch_dir(prefix: str) -> Path:
    # Outside pytest's 0700 tree: the database servers run as their own system users.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def postgres_server(tls: TLSFiles | None = None) -> Iterator[PostgresServer]:
    root = _scratch_dir("backupd-pg-")
    server = PostgresServer(root / "pg", tls=tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def big_pg_database(pg: PostgresServer) -> str:
    """About 25 MB of dump: five parts of 5 MiB."""
    name = f"bulk_{uuid.uuid4().hex[:8]}"
    pg.create_database(name)
    pg.psql(BULK_SQL.format(rows=BULK_ROWS), name)
    return name


@contextlib.contextmanager
def mariadb_server(tls: TLSFiles | None = None) -> Iterator[MariaDBServer]:
    root = _scratch_dir("backupd-mariadb-")
    server = MariaDBServer(root / "mariadb", tls=tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    with mariadb_server() as server:
        yield server


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


@pytest.fixture(scope="session")
def atomic_moto_url(moto_url: str) -> Iterator[str]:
    """The same S3 (same buckets) with atomic conditional writes, as AWS S3, R2 and MinIO."""
    with atomic_moto_endpoint() as url:
        yield url


@pytest.fixture
def atomic_proxy(atomic_moto_url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of ``atomic_moto_url``."""
    fault_proxy = FaultProxy(int(atomic_moto_url.rsplit(":", 1)[1]))
    yield fault_proxy
    fault_proxy.close()


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    """A fault-injecting, request-recording proxy in front of moto."""
    fault_proxy = FaultProxy(int(moto_url.rsplit(":", 1)[1]))
    yield fault_proxy
    fault_proxy.close()


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )


@pytest.fixture
def s3(moto_url: str) -> Any:
    return s3_client(moto_url)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"b-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


def storage_env(endpoint: str, bucket: str, **extra: str) -> dict[str, str]:
    return {
        "STORAGE_TYPE": "s3",
        "STORAGE_ENDPOINT_URL": endpoint,
        "STORAGE_ACCESS_KEY_ID": S3_KEY_ID,
        "STORAGE_SECRET_ACCESS_KEY": S3_SECRET,
        "STORAGE_BUCKET_NAME": bucket,
        **extra,
    }


def pg_env(server: PostgresServer, database: str, **extra: str) -> dict[str, str]:
    return {
        "DB_TYPE": "postgres",
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(server.port),
        "DB_USER": server.user,
        "DB_PASSWORD": server.password,
        "DB_DATABASE": database,
        **extra,
    }


def mariadb_env(server: MariaDBServer, database: str, **extra: str) -> dict[str, str]:
    return {
        "DB_TYPE": "mariadb",
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(server.port),
        "DB_USER": server.user,
        "DB_PASSWORD": server.password,
        "DB_DATABASE": database,
        **extra,
    }


def as_target(name: str | None, env: dict[str, str]) -> dict[str, str]:
    """``env`` as the settings of the target ``name`` of BACKUPD_TARGETS alone
    (``ORDERS_DB_HOST``, ...); unchanged for the unnamed target (None)."""
    if name is None:
        return env
    return {"BACKUPD_TARGETS": name, **{f"{name.upper()}_{k}": v for k, v in env.items()}}


def backupd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "backupd", *args]


def child_env(config: dict[str, str]) -> dict[str, str]:
    """The environment ``backupd`` runs with in a test: the basics plus the given config."""
    base = {
        k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"}
    }
    return {**base, **config}


def run_backupd(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        backupd_command(*args),
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(*args: str, env: dict[str, str]) -> str:
    """``backupd ARGS``'s output, once it has succeeded without a traceback."""
    result = run_backupd(*args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout + result.stderr


def unique(prefix: str) -> str:
    """A database (or other) name no other test uses: ``prefix`` and 8 random hex digits."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def bucket_state(s3: Any, bucket: str) -> tuple[list[str], list[str]]:
    """(keys, keys with an open multipart upload)."""
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    uploads = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return keys, uploads


@dataclass(frozen=True)
class TLSSetup:
    """The files of the TLS servers: ``server`` names 127.0.0.1 and localhost (not
    ``OTHER_LOOPBACK``), ``client`` is ``CERTIFIED_USER``'s, and ``wrong_ca`` is another
    self-signed CA that signed neither."""

    server: TLSFiles
    client: TLSFiles
    wrong_ca: Path


@pytest.fixture(scope="session")
def tls_setup() -> Iterator[TLSSetup]:
    root = _scratch_dir("backupd-tls-")
    ca = make_ca(root, "ca")
    try:
        yield TLSSetup(
            server=issue(ca, root, "server", "server", "IP:127.0.0.1,DNS:localhost"),
            client=issue(ca, root, "client", CERTIFIED_USER, ""),
            wrong_ca=make_ca(root, "wrong-ca")[0],
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_tls(tls_setup: TLSSetup) -> Iterator[PostgresServer]:
    """A PostgreSQL that accepts TLS connections only."""
    with postgres_server(tls_setup.server) as server:
        yield server


@pytest.fixture(scope="session")
def mariadb_tls(tls_setup: TLSSetup) -> Iterator[MariaDBServer]:
    """A MariaDB that accepts TLS connections only (but on its socket)."""
    with mariadb_server(tls_setup.server) as server:
        yield server
