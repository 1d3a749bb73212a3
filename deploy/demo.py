"""``make demo``: a first backup on this machine with nothing configured.

It starts a throwaway PostgreSQL (and MariaDB, when installed) with a small sample database and
a throwaway S3 endpoint (moto), all in a temporary directory on free loopback ports. Then it runs
a real ``backupd check``, ``backupd once``, ``backupd list`` and ``backupd restore`` into a
scratch database, and compares the copy with the original. Everything it started is stopped at
the end, also on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

from tests.servers import MariaDBServer, PostgresServer, moto_endpoint

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "data"
BUCKET = "demo-backups"
KEY_ID, SECRET = "demo-key-id", "demo-secret-key"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def backupd(*args: str, env: dict[str, str]) -> None:
    base = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR"}}
    print(f"$ backupd {' '.join(args)}", flush=True)
    command = [sys.executable, "-m", "backupd", *args]
    if subprocess.run(command, env={**base, **env}, check=False).returncode != 0:
        raise SystemExit(f"backupd {args[0]} failed")


def storage_env(endpoint: str) -> dict[str, str]:
    return {
        "STORAGE_TYPE": "s3",
        "STORAGE_ENDPOINT_URL": endpoint,
        "STORAGE_ACCESS_KEY_ID": KEY_ID,
        "STORAGE_SECRET_ACCESS_KEY": SECRET,
        "STORAGE_BUCKET_NAME": BUCKET,
    }


def demo_postgres(root: Path, endpoint: str) -> None:
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
        backupd("check", env=env)
        say("backing up: pg_dump streams straight into the bucket")
        backupd("once", env=env)
        say("listing the backups in the bucket")
        backupd("list", env=env)
        say("restoring the newest backup into a scratch database (checksum-verified)")
        backupd("restore", "--into", "shop_restored", env=env)
        same = server.plain_dump("shop") == server.plain_dump("shop_restored")
        print(f"   restored copy {'matches the original' if same else 'DIFFERS from the original'}")
        if not same:
            raise SystemExit(1)
    finally:
        server.stop()


def demo_mariadb(root: Path, endpoint: str) -> None:
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
        backupd("once", env=env)
        say("restoring it under another name (checksum-verified)")
        backupd("restore", "--into", "shop_restored", env=env)
        same = server.plain_dump("shop") == server.plain_dump("shop_restored")
        verdict = "matches the original" if same else "DIFFERS from the original"
        print(f"   restored MariaDB copy {verdict}")
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
            demo_postgres(root, endpoint)
            if shutil.which("mariadbd") and shutil.which("mariadb-install-db"):
                demo_mariadb(root, endpoint)
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
