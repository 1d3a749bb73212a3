"""Every user-facing error path backupd knows ends in lines for people, never a traceback."""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import backupd_command, child_env, pg_env, run_backupd, storage_env
from tests.servers import PostgresServer, free_port, wait_until


@dataclass
class Case:
    name: str
    args: tuple[str, ...]
    env: dict[str, str]
    code: int
    signals: list[tuple[Callable[[], bool], signal.Signals]] = field(default_factory=list)
    """Each signal is sent once its condition holds, in order."""
    says: str = ""
    """A fragment the output must hold."""


def drive(case: Case) -> tuple[Case, subprocess.CompletedProcess[str]]:
    process = subprocess.Popen(
        backupd_command(*case.args),
        env=child_env(case.env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for condition, sig in case.signals:
        wait_until(condition, 60, f"{case.name}: the moment for {sig.name}")
        process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    return case, subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def health(port: int) -> int | None:
    """The status of /healthz, or None while nothing answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def stalling_pg_dump(bin_dir: Path, started: Path, second: Path) -> str:
    """A pg_dump that writes a little, says it started (on ``started`` for its database,
    ``second`` for ``postgres``), and then hangs: a run to interrupt."""
    real = shutil.which("pg_dump")
    assert real is not None
    bin_dir.mkdir()
    script = bin_dir / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then exec {real} --version; fi\n'
        f'if [ "$PGDATABASE" = postgres ]; then marker={second}; else marker={started}; fi\n'
        'printf PGDMP; touch "$marker"; exec sleep 60\n'
    )
    script.chmod(0o755)
    return f"{bin_dir}:{child_env({})['PATH']}"


def test_no_error_path_prints_a_traceback(
    pg: PostgresServer, moto_url: str, bucket: str, tmp_path: Path
) -> None:
    database = f"sweep_{uuid.uuid4().hex[:6]}"
    pg.create_database(database, "CREATE TABLE t AS SELECT 1 AS x;")
    store = tmp_path / "store"
    local = {**pg_env(pg, database), "STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(store)}
    s3 = {**pg_env(pg, database), **storage_env(moto_url, bucket)}
    assert run_backupd("once", env=local).returncode == 0  # something to restore
    (tmp_path / "a-file").write_text("in the way\n")
    (tmp_path / "exists.dump").write_text("do not overwrite\n")
    (tmp_path / "broken.env").write_text("DB_PASSWORD='unterminated\n")
    started, second = tmp_path / "dump-started", tmp_path / "second-started"
    stalling = stalling_pg_dump(tmp_path / "bin", started, second)
    daemon_port, other_port = free_port(), free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        closed = str(free_port())
        cases = [
            # configuration: exit 2, every problem named
            Case("bad values", ("once",), {"DB_TYPE": "oracle", "STORAGE_TYPE": "r2"}, 2),
            Case("usage", ("restore",), local, 2),
            Case("missing env file", ("--env-file", str(tmp_path / "nope.env"), "check"), {}, 2),
            Case("broken env file", ("--env-file", str(tmp_path / "broken.env"), "check"), {}, 2),
            Case(
                "local path is a file",
                ("check",),
                {**local, "STORAGE_LOCAL_PATH": str(tmp_path / "a-file")},
                2,
            ),
            Case(
                "local path typo",
                ("once",),
                {**local, "STORAGE_LOCAL_PATH": str(tmp_path / "x/y")},
                2,
            ),
            Case(
                "secret file missing",
                ("check",),
                {**local, "DB_PASSWORD": "", "DB_PASSWORD_FILE": str(tmp_path / "none")},
                2,
            ),
            Case("bad cron", ("run",), {**local, "CRON_SCHEDULE": "61 * * * *"}, 2),
            Case("unknown target", ("list", "--target", "nope"), local, 2),
            Case("bad --at", ("restore", "--at", "yesterday", "--into", "x"), local, 2),
            Case("two databases", ("once", "--database", "a,b"), local, 2),
            Case(
                "HTTP_PORT in use",
                ("run",),
                {**local, "HTTP_PORT": busy, "HTTP_HOST": "127.0.0.1"},
                2,
            ),
            # connection: exit 1, one line naming the server
            Case("wrong password", ("once",), {**local, "DB_PASSWORD": "wrong"}, 1),
            Case("closed port", ("check",), {**local, "DB_PORT": closed}, 1),
            Case("missing database", ("once",), {**local, "DB_DATABASE": "no_such_db"}, 1),
            Case("missing database check", ("check",), {**local, "DB_DATABASE": "no_such_db"}, 1),
            Case("unknown host", ("once",), {**local, "DB_HOST": "no-such-host.invalid"}, 1),
            # storage
            Case("missing bucket", ("once",), {**s3, "STORAGE_BUCKET_NAME": "absent-bucket"}, 1),
            Case(
                "missing bucket list", ("list",), {**s3, "STORAGE_BUCKET_NAME": "absent-bucket"}, 1
            ),
            # restore
            Case(
                "nothing to restore",
                ("restore", "--into", "x"),
                {**local, "STORAGE_LOCAL_PATH": str(tmp_path / "empty")},
                1,
            ),
            Case("unknown key", ("restore", "--key", "backups/nope.dump", "--into", "x"), local, 1),
            Case("file exists", ("restore", "--to-file", str(tmp_path / "exists.dump")), local, 1),
            Case("database in use", ("restore", "--into", database), local, 1),
            # notifications
            Case(
                "dead relay",
                ("check",),
                {
                    **local,
                    "EMAIL_SMTP": "127.0.0.1",
                    "EMAIL_PORT": closed,
                    "EMAIL_FROM": "a@b",
                    "EMAIL_TO": "c@d",
                },
                1,
            ),
            Case(
                "dead webhook",
                ("check",),
                {**local, "NOTIFY_WEBHOOK_URL": f"http://127.0.0.1:{closed}/x"},
                1,
            ),
            Case("no daemon", ("healthcheck",), {**local, "HTTP_PORT": closed}, 1),
            # signals
            Case(
                "SIGTERM mid-dump",
                ("once",),
                {**local, "PATH": stalling},
                1,
                [(started.exists, signal.SIGTERM)],
                "interrupted: a backup still in progress was aborted, left nothing behind",
            ),
            Case(
                "SIGTERM to the service",
                ("run",),
                {
                    **local,
                    "RUN_ON_STARTUP": "false",
                    "HTTP_PORT": str(daemon_port),
                    "HTTP_HOST": "127.0.0.1",
                },
                0,
                [(lambda: health(daemon_port) == 200, signal.SIGTERM)],
                "backupd stopped",
            ),
            Case(
                "two SIGINTs mid-dump",
                ("run",),
                {
                    **local,
                    "HTTP_PORT": str(other_port),
                    "HTTP_HOST": "127.0.0.1",
                    "PATH": stalling,
                    "DB_DATABASE": "postgres",
                },
                0,
                [
                    (second.exists, signal.SIGINT),  # stop scheduling, let the dump finish...
                    (lambda: health(other_port) == 503, signal.SIGINT),  # ...no: abort it now
                ],
                "second SIGINT: aborting running backups now",
            ),
        ]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(drive, cases))

    problems: list[Any] = []
    for case, result in results:
        output = result.stdout + result.stderr
        if (
            "Traceback" in output
            or result.returncode != case.code
            or not output.strip()
            or case.says not in output
        ):
            problems.append((case.name, result.returncode, output[-2000:]))
    assert problems == []
