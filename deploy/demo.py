"""``make demo``: a first backup on this machine with nothing configured.

It starts a throwaway PostgreSQL (and MariaDB, when installed) with a small sample database and
a throwaway S3 endpoint (moto), all in a temporary directory on free loopback ports. Then it runs
a real ``backupd check`` and ``backupd once``, fetches the backup, checks it against its manifest,
restores it into a scratch database and compares. Everything it started is stopped at the end,
also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import zstandard
from moto.server import ThreadedMotoServer

from tests.servers import MariaDBServer, PostgresServer

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "data"
BUCKET = "demo-backups"
KEY_ID, SECRET = "demo-key-id", "demo-secret-key"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


@contextlib.contextmanager
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def backupd(command: str, env: dict[str, str]) -> int:
    base = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR"}}
    print(f"$ backupd {command}", flush=True)
    return subprocess.run(
        [sys.executable, "-m", "backupd", command], env={**base, **env}, check=False
    ).returncode


def storage_env(endpoint: str) -> dict[str, str]:
    return {
        "STORAGE_TYPE": "s3",
        "STORAGE_ENDPOINT_URL": endpoint,
        "STORAGE_ACCESS_KEY_ID": KEY_ID,
        "STORAGE_SECRET_ACCESS_KEY": SECRET,
        "STORAGE_BUCKET_NAME": BUCKET,
    }


def fetch_verified(s3: Any, prefix: str) -> tuple[str, bytes]:
    """The newest complete backup under ``prefix``, checked against its manifest."""
    keys = sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    )
    for key in keys:
        print(f"   s3://{BUCKET}/{key}")
    key = [k for k in keys if not k.endswith(".manifest.json")][-1]
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{key}.manifest.json")["Body"].read())
    digest = hashlib.sha256(body).hexdigest()
    if digest != manifest["sha256"]:
        raise SystemExit(f"checksum mismatch for {key}")
    print(f"   sha256 {digest} matches the manifest ({len(body)} bytes)")
    return key, body


def demo_postgres(root: Path, endpoint: str, s3: Any) -> None:
    say("starting a throwaway PostgreSQL with a sample database")
    server = PostgresServer(root / "pg")
    server.start()
    try:
        server.create_database("shop", (SAMPLES / "postgres_sample.sql").read_text())
        env = {
            "DB_TYPE": "postgres",
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(server.port),
            "DB_USER": server.user,
            "DB_PASSWORD": server.password,
            "DB_DATABASE": "shop",
            "STORAGE_DESTINATION_FOLDER": "backups/postgres",
            **storage_env(endpoint),
        }
        say("checking the configuration, the login and the bucket")
        if backupd("check", env) != 0:
            raise SystemExit("backupd check failed")
        say("backing up: pg_dump streams straight into the bucket")
        if backupd("once", env) != 0:
            raise SystemExit("backupd once failed")
        say("what is in the bucket")
        _, body = fetch_verified(s3, "backups/postgres/")
        say("restoring into a scratch database and comparing")
        server.restore(body, "shop_restored")
        same = server.plain_dump("shop") == server.plain_dump("shop_restored")
        print(f"   restored copy {'matches the original' if same else 'DIFFERS from the original'}")
        if not same:
            raise SystemExit(1)
    finally:
        server.stop()


def demo_mariadb(root: Path, endpoint: str, s3: Any) -> None:
    say("starting a throwaway MariaDB with a sample database")
    server = MariaDBServer(root / "mariadb")
    server.start()
    try:
        server.create_database("shop", (SAMPLES / "mariadb_sample.sql").read_text())
        env = {
            "DB_TYPE": "mariadb",
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(server.port),
            "DB_USER": server.user,
            "DB_PASSWORD": server.password,
            "DB_DATABASE": "shop",
            "STORAGE_DESTINATION_FOLDER": "backups/mariadb",
            **storage_env(endpoint),
        }
        say("backing up MariaDB: mariadb-dump → zstd → bucket")
        if backupd("once", env) != 0:
            raise SystemExit("backupd once failed")
        key, body = fetch_verified(s3, "backups/mariadb/")
        say("restoring into a scratch database and comparing")
        server.restore(
            zstandard.ZstdDecompressor().decompressobj().decompress(body), "shop_restored"
        )
        same = server.plain_dump("shop") == server.plain_dump("shop_restored")
        verdict = "matches the original" if same else "DIFFERS from the original"
        print(f"   restored copy of {key} {verdict}")
        if not same:
            raise SystemExit(1)
    finally:
        server.stop()


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="backupd-demo-"))
    root.chmod(0o755)
    try:
        with moto_endpoint() as endpoint:
            say(f"a throwaway S3 endpoint (moto) at {endpoint}, bucket {BUCKET}")
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id=KEY_ID,
                aws_secret_access_key=SECRET,
            )
            s3.create_bucket(Bucket=BUCKET)
            demo_postgres(root, endpoint, s3)
            if shutil.which("mariadbd") and shutil.which("mariadb-install-db"):
                demo_mariadb(root, endpoint, s3)
            else:
                say("MariaDB is not installed here: skipping its part of the demo")
    except KeyboardInterrupt:
        say("interrupted: stopping everything the demo started")
        raise SystemExit(130) from None
    finally:
        shutil.rmtree(root, ignore_errors=True)
    say(
        f"done in {time.monotonic() - started:.0f}s; every server it started is stopped and removed"
    )
    print(
        "   next: cp .env.example .env, point it at your database and bucket, run `backupd check`"
    )


if __name__ == "__main__":
    main()
