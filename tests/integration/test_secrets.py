"""Secrets never reach argv, a child's environment beyond its own, or any line backupd prints."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    S3_SECRET,
    backupd_command,
    child_env,
    mariadb_env,
    pg_env,
    run_backupd,
    storage_env,
)
from tests.procs import cmdlines, descends_from, environ
from tests.servers import FaultProxy, MariaDBServer, PostgresServer, http_server

DUMP_TOOLS = {"pg_dump", "mariadb-dump", "mysqldump", "psql", "mariadb", "mysql"}


class ProcessWatcher:
    """Scans the argv of the backupd process (``root``) and its descendants, over and over,
    while a backup runs, and reads the environment of its dump tools; other processes on the
    machine are never looked at (they may carry any text, this suite's passwords too)."""

    def __init__(self, every_environment: bool = False) -> None:
        # (pid, argv) pairs: a new pid shows its parent's argv until it execs.
        self.seen: set[tuple[int, tuple[str, ...]]] = set()
        self.environments: dict[int, dict[str, str]] = {}
        """By pid: the environment of each dump tool, or of every process with
        ``every_environment``."""
        self.root: int | None = None
        self._every_environment = every_environment
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, daemon=True)

    def __enter__(self) -> ProcessWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _scan(self) -> None:
        judged: set[tuple[int, tuple[str, ...]]] = set()
        while not self._stop.is_set():
            if self.root is None:
                time.sleep(0.001)
                continue
            for pid, argv in cmdlines().items():
                if (pid, tuple(argv)) in judged:
                    continue
                judged.add((pid, tuple(argv)))
                if not descends_from(pid, self.root):
                    continue
                self.seen.add((pid, tuple(argv)))
                tool = bool(argv) and Path(argv[0]).name in DUMP_TOOLS
                if (tool or self._every_environment) and pid not in self.environments:
                    self.environments[pid] = environ(pid)

    def run(
        self, *args: str, env: dict[str, str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``backupd ARGS``, watched, to its end."""
        with subprocess.Popen(
            backupd_command(*args),
            env=child_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            self.root = process.pid
            stdout, stderr = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def argvs(self) -> list[tuple[str, ...]]:
        return [argv for _, argv in self.seen]

    def tools(self) -> list[tuple[str, ...]]:
        return [argv for argv in self.argvs() if argv and Path(argv[0]).name in DUMP_TOOLS]


def slow_backup(
    config: dict[str, str], proxy: FaultProxy, watcher: ProcessWatcher
) -> subprocess.CompletedProcess[str]:
    """A backup held back by ``proxy``, so that the dump lives long enough to be seen."""
    proxy.part_delay = 0.3
    env = {
        **config,
        "COMPRESSION": "none",
        "STORAGE_PART_SIZE": "5MiB",
        "STORAGE_UPLOAD_CONCURRENCY": "1",
    }
    return watcher.run("once", env=env)


def test_postgres_password_never_in_argv_and_storage_secret_never_in_child_env(
    pg: PostgresServer, proxy: FaultProxy, bucket: str
) -> None:
    database = f"secret_{uuid.uuid4().hex[:8]}"
    pg.create_database(database)
    pg.psql(
        "CREATE TABLE t AS SELECT g, md5(g::text) AS p FROM generate_series(1, 300000) g", database
    )

    with ProcessWatcher() as watcher:
        result = slow_backup(
            {**pg_env(pg, database), **storage_env(proxy.url, bucket)}, proxy, watcher
        )

    assert result.returncode == 0, result.stdout + result.stderr
    assert any(Path(a[0]).name == "pg_dump" and "--format=custom" in a for a in watcher.tools())
    assert watcher.environments, "no child of backupd was seen"
    for argv in watcher.argvs():
        assert not any(pg.password in arg for arg in argv), argv
    for env in watcher.environments.values():
        assert S3_SECRET not in env.values()
        assert not any(name.startswith(("STORAGE_", "AWS_")) for name in env)


def test_mariadb_password_travels_by_pipe_not_argv_or_disk(
    mariadb: MariaDBServer, proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    database = f"secret_{uuid.uuid4().hex[:8]}"
    mariadb.create_database(database)
    mariadb.root_sql(
        "CREATE TABLE t (id INT PRIMARY KEY, p CHAR(64));"
        "INSERT INTO t SELECT seq, CONCAT(MD5(seq), MD5(seq)) FROM seq_1_to_200000;",
        database,
    )

    with ProcessWatcher() as watcher:
        result = slow_backup(
            {**mariadb_env(mariadb, database), **storage_env(proxy.url, bucket)}, proxy, watcher
        )

    assert result.returncode == 0, result.stdout + result.stderr
    dump_tools = {"mariadb-dump", "mysqldump"}
    dumps = [a for a in watcher.tools() if Path(a[0]).name in dump_tools and database in a]
    assert dumps, "the dump process was never seen"
    assert dumps[0][1].startswith("--defaults-extra-file=/dev/fd/")
    for argv in watcher.argvs():
        assert not any(mariadb.password in arg for arg in argv), argv
    for env in watcher.environments.values():
        assert mariadb.password not in env.values()
        assert S3_SECRET not in env.values()
    assert not any(
        mariadb.password.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
    )


@pytest.mark.parametrize("outcome", ["success", "dump failure", "storage failure"])
def test_no_secret_in_any_output_even_at_debug(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, outcome: str
) -> None:
    database = f"quiet_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    config = {**pg_env(pg, database), **storage_env(moto_url, bucket), "LOG_LEVEL": "DEBUG"}
    if outcome == "dump failure":
        config["DB_DATABASE"] = "no_such_database"
    if outcome == "storage failure":
        config["STORAGE_BUCKET_NAME"] = "no-such-bucket-here"

    for command in ("once", "check"):
        result = run_backupd(command, env=config)
        output = result.stdout + result.stderr
        assert (result.returncode == 0) == (outcome == "success"), output
        assert pg.password not in output
        assert S3_SECRET not in output


class _RefusingSeq(BaseHTTPRequestHandler):
    """A Seq behind a proxy that wants other credentials: every post is a 401."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_password_or_key_in_seq_url_is_never_printed(pg: PostgresServer, tmp_path: Path) -> None:
    """SEQ_URL may carry a proxy's basic auth or Seq's ``?apiKey=``; the HTTP clients' errors
    quote the URL (``401 Client Error: Unauthorized for url: http://user:pass@...``), with what a
    URL may not hold percent-encoded (``|`` as ``%7C``): that spelling is no less readable."""
    database = f"seq_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t (x int);")
    local = {
        **pg_env(pg, database),
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(tmp_path / "store"),
    }
    with http_server(_RefusingSeq) as url:
        host = url.removeprefix("http://")
        for seq_url, secrets in (
            (f"http://seq-user:Seq-Pa55word@{host}", ["Seq-Pa55word"]),
            (f"http://{host}/?apiKey=SeqKey0123456789", ["SeqKey0123456789"]),
            (f"http://seq-user:Seq|Pa55^word@{host}", ["Seq|Pa55^word", "Seq%7CPa55%5Eword"]),
            (f"http://{host}/?apiKey=Seq|Key^0123", ["Seq|Key^0123", "Seq%7CKey%5E0123"]),
        ):
            for args in (("once",), ("check", "--send-test")):
                result = run_backupd(*args, env={**local, "SEQ_URL": seq_url})
                output = result.stdout + result.stderr
                told = "cannot send logs to Seq" if args == ("once",) else "FAIL seq:"
                assert told in output, output  # the failure is told
                for secret in secrets:
                    assert secret not in output, output
