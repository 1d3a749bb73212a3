"""The stage every benchmark runs on: throwaway servers, a discarding S3 sink, filled databases."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers import MariaDBServer, PostgresServer, free_port, wait_until

MIB = 1024 * 1024
PG_ROW_BYTES = 103  # one generated row in a -Z0 custom-format dump
MARIADB_ROW_BYTES = 118  # one generated row in mariadb-dump's text
BASE_ENV = ("PATH", "HOME", "LANG", "TMPDIR")
PG_ORDERS = (
    "CREATE TABLE orders AS SELECT g AS id, (g % 100000)::bigint AS customer_id,"
    " (random() * 10000)::numeric(12, 2) AS amount,"
    " timestamptz '2026-01-01' - (g || ' seconds')::interval AS created_at,"
    " (g % 7 = 0) AS refunded, md5(g::text) AS reference,"
    " 'item-' || (g % 5000) || ' x' || (g % 9) AS description"
    " FROM generate_series(1, {rows}) g"
)
MARIADB_ORDERS = (
    "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT, amount DECIMAL(12, 2),"
    " created_at DATETIME, refunded BOOL, reference CHAR(32), description VARCHAR(40));"
    "INSERT INTO orders SELECT seq, seq % 100000, ROUND(RAND() * 10000, 2),"
    " TIMESTAMP '2026-01-01 00:00:00' - INTERVAL seq SECOND, seq % 7 = 0, MD5(seq),"
    " CONCAT('item-', seq % 5000, ' x', seq % 9) FROM seq_1_to_{rows};"
)


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in BASE_ENV}


@dataclass
class Scene:
    root: Path
    pg: PostgresServer
    mariadb: MariaDBServer | None
    sink_url: str

    def backupd_env(self, engine: str, database: str, **extra: str) -> dict[str, str]:
        server: PostgresServer | MariaDBServer | None = self.pg if engine == "postgres" else None
        if server is None:
            assert self.mariadb is not None
            server = self.mariadb
        return {
            **base_env(),
            "DB_TYPE": engine,
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(server.port),
            "DB_USER": server.user,
            "DB_PASSWORD": server.password,
            "DB_DATABASE": database,
            "STORAGE_TYPE": "s3",
            "STORAGE_ENDPOINT_URL": self.sink_url,
            "STORAGE_BUCKET_NAME": "bench",
            "STORAGE_ACCESS_KEY_ID": "bench",
            "STORAGE_SECRET_ACCESS_KEY": "bench-secret",
            "LOG_LEVEL": "WARNING",
            **extra,
        }

    def pg_env(self, database: str) -> dict[str, str]:
        return {**base_env(), **self.pg.env(database)}

    def mariadb_defaults(self) -> Path:
        """A client option file for the peer pipelines (mode 0600, in the scratch folder)."""
        assert self.mariadb is not None
        path = self.root / "client.cnf"
        if not path.exists():
            password = self.mariadb.password.replace("\\", "\\\\").replace('"', '\\"')
            path.write_text(
                f"[client]\nhost=127.0.0.1\nport={self.mariadb.port}\nuser={self.mariadb.user}\n"
                f'password="{password}"\n'
            )
            path.chmod(0o600)
        return path

    def fill_postgres(self, name: str, size_mib: int) -> None:
        self.pg.create_database(name)
        self.pg.psql(PG_ORDERS.format(rows=size_mib * MIB // PG_ROW_BYTES), name)
        self.pg.psql("VACUUM ANALYZE orders", name)

    def fill_mariadb(self, name: str, size_mib: int) -> None:
        assert self.mariadb is not None
        self.mariadb.create_database(name)
        self.mariadb.root_sql(MARIADB_ORDERS.format(rows=size_mib * MIB // MARIADB_ROW_BYTES), name)

    def sink_keys(self) -> list[str]:
        host, port = self.sink_url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request("GET", "/_keys")
            body = connection.getresponse().read().decode()
        finally:
            connection.close()
        return [line for line in body.splitlines() if line]


def stream_size(argv: list[str], env: dict[str, str]) -> int:
    """Bytes a command writes to stdout (also warms the page cache)."""
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        total = 0
        while chunk := process.stdout.read(MIB):
            total += len(chunk)
    return total


@contextlib.contextmanager
def scene(with_mariadb: bool) -> Iterator[Scene]:
    root = Path(tempfile.mkdtemp(prefix="backupd-bench-"))
    root.chmod(0o755)
    pg = PostgresServer(root / "pg")
    mariadb = MariaDBServer(root / "mariadb") if with_mariadb else None
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "bench.s3sink", str(sink_port)])
    try:
        pg.start()
        if mariadb is not None:
            mariadb.start()
        wait_until(lambda: _listening(sink_port), 10, "the S3 sink")
        yield Scene(root, pg, mariadb, f"http://127.0.0.1:{sink_port}")
    finally:
        sink.terminate()
        sink.wait()
        pg.stop()
        if mariadb is not None:
            mariadb.stop()
        shutil.rmtree(root, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
