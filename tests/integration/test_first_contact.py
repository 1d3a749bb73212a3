"""What a new user meets first: strict configuration, one-line errors, a `check` that checks
everything a run will touch."""

from __future__ import annotations

import email
import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import (
    as_target,
    backupd_command,
    bucket_state,
    child_env,
    mariadb_env,
    pg_env,
    run_backupd,
    storage_env,
)
from tests.servers import FaultProxy, PostgresServer, free_port, http_server


def no_traceback(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "Error:" not in output.replace("RestoreError", ""), output
    return output


def dying_pg_dump(bin_dir: Path, after_bytes: int) -> dict[str, str]:
    """A pg_dump that passes ``after_bytes`` of the real dump through, then is killed (SIGKILL)."""
    real = shutil.which("pg_dump")
    assert real is not None
    bin_dir.mkdir()
    script = bin_dir / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then exec {real} --version; fi\n'
        f'{real} "$@" | head -c {after_bytes}\n'
        "kill -9 $$\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:{child_env({})['PATH']}"}


def test_local_storage_dump_killed_mid_stream_is_one_line(
    pg: PostgresServer, big_pg_database: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    env = {
        **pg_env(pg, big_pg_database),
        **dying_pg_dump(tmp_path / "bin", 6 * 1024 * 1024),
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(store),
        "STORAGE_PART_SIZE": "5MiB",
        "COMPRESSION": "none",
    }

    result = run_backupd("once", env=env)

    output = no_traceback(result)
    assert result.returncode == 1
    assert "pg_dump exited with status 9 (killed by SIGKILL)" in output
    assert [p for p in store.rglob("*") if p.is_file()] == []


def local_env(pg: PostgresServer, path: Path, **extra: str) -> dict[str, str]:
    return {
        **pg_env(pg, "postgres"),
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(path),
        **extra,
    }


@pytest.mark.parametrize("command", ["check", "once", "list"])
def test_storage_local_path_that_is_a_file_is_a_config_error(
    pg: PostgresServer, tmp_path: Path, command: str
) -> None:
    in_the_way = tmp_path / "backups"
    in_the_way.write_text("not a folder\n")

    result = run_backupd(command, env=local_env(pg, in_the_way))

    no_traceback(result)
    assert result.returncode == 2
    assert f"STORAGE_LOCAL_PATH: {in_the_way} is a file, not a folder" in result.stderr


def test_storage_local_path_is_created_one_level_deep_only(
    pg: PostgresServer, tmp_path: Path
) -> None:
    typo = tmp_path / "mnt" / "backups"

    refused = run_backupd("check", env=local_env(pg, typo))

    no_traceback(refused)
    assert refused.returncode == 2
    assert f"its parent folder {tmp_path / 'mnt'} does not exist" in refused.stderr
    assert not (tmp_path / "mnt").exists()

    created = run_backupd("check", env=local_env(pg, tmp_path / "backups"))

    assert created.returncode == 0, created.stdout + created.stderr
    assert (tmp_path / "backups").is_dir()


def test_missing_env_file_is_exit_2_and_the_default_one_is_optional(
    pg: PostgresServer, tmp_path: Path
) -> None:
    missing = run_backupd("--env-file", str(tmp_path / "prod.env"), "check", env={})

    no_traceback(missing)
    assert missing.returncode == 2
    assert f"--env-file {tmp_path / 'prod.env'}: no such file" in missing.stderr
    folder = run_backupd("--env-file", str(tmp_path), "check", env={})
    assert folder.returncode == 2
    assert f"--env-file {tmp_path}: cannot read: Is a directory" in no_traceback(folder)

    (tmp_path / "prod.env").write_text(
        "".join(f"{k}='{v}'\n" for k, v in local_env(pg, tmp_path / "b").items())
    )
    read = run_backupd("--env-file", str(tmp_path / "prod.env"), "check", env={})
    assert read.returncode == 0, read.stdout + read.stderr


@pytest.mark.parametrize("engine", ["postgres", "mariadb"])
def test_a_host_name_that_does_not_resolve_is_a_failed_login(
    request: pytest.FixtureRequest, engine: str, tmp_path: Path
) -> None:
    server = request.getfixturevalue("pg" if engine == "postgres" else "mariadb")
    make_env = pg_env if engine == "postgres" else mariadb_env
    env = {
        **make_env(server, "app"),
        "DB_HOST": "no-such-host.invalid",
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(tmp_path / "b"),
    }

    checked = run_backupd("check", env=env)
    once = run_backupd("once", env=env)

    no_traceback(checked)
    failed = [line for line in checked.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == [failed[0]], failed
    assert failed[0].startswith(
        "FAIL default connect: cannot log in to "
        f"{'PostgreSQL' if engine == 'postgres' else 'MariaDB'} at no-such-host.invalid:"
    ), failed
    assert "FAILED at connect: cannot log in to" in no_traceback(once)


@pytest.mark.parametrize("engine", ["postgres", "mariadb"])
def test_check_names_the_variables_of_a_server_it_cannot_reach(
    request: pytest.FixtureRequest, engine: str, tmp_path: Path
) -> None:
    server = request.getfixturevalue("pg" if engine == "postgres" else "mariadb")
    make_env = pg_env if engine == "postgres" else mariadb_env
    storage = {"STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(tmp_path / "b")}
    closed = {**make_env(server, "app"), **storage, "DB_PORT": str(free_port())}
    unknown = {**make_env(server, "app"), **storage, "DB_HOST": "no-such-host.invalid"}

    for env, settings in ((closed, "(DB_HOST, DB_PORT)"), (unknown, "(DB_HOST)")):
        result = run_backupd("check", env=env)
        no_traceback(result)
        assert result.returncode == 1
        failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
        assert failed[0].startswith("FAIL default connect: cannot log in to"), failed
        assert failed[0].endswith(f" {settings}"), failed


@pytest.mark.parametrize("target", ["orders", None])
@pytest.mark.parametrize("engine", ["postgres", "mariadb"])
def test_a_refused_login_names_the_variables_of_its_own_target(
    request: pytest.FixtureRequest, engine: str, target: str | None, tmp_path: Path
) -> None:
    server = request.getfixturevalue("pg" if engine == "postgres" else "mariadb")
    make_env = pg_env if engine == "postgres" else mariadb_env
    wrong = "not-the-Password-31"
    storage = {"STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(tmp_path / "b")}
    env = as_target(target, {**make_env(server, "app", DB_PASSWORD=wrong), **storage})
    own = f"{target.upper()}_" if target else ""
    settings = f"({own}DB_USER, {own}DB_PASSWORD)"

    checked = run_backupd("check", env=env)
    once = run_backupd("once", env=env)

    output = no_traceback(checked) + no_traceback(once)
    assert checked.returncode == once.returncode == 1
    failed = [line for line in checked.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == [failed[0]], failed
    assert failed[0].startswith(f"FAIL {target or 'default'} connect: cannot log in to"), failed
    assert failed[0].endswith(f" {settings}"), failed
    lines = [line for line in once.stdout.splitlines() if "FAILED at connect" in line]
    assert lines == [lines[0]], once.stdout
    assert lines[0].endswith(f" {settings}"), lines
    assert wrong not in output
    assert server.password not in output


def test_every_hint_about_a_named_target_names_its_own_variables(
    pg: PostgresServer, tmp_path: Path
) -> None:
    missing = f"nope_{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "b"
    storage = {"STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(folder)}
    env = as_target("orders", {**pg_env(pg, missing), **storage})

    listed = run_backupd("list", env=env)  # before anything creates the folder
    checked = run_backupd("check", env=env)
    once = run_backupd("once", env=env)
    pruned = run_backupd("prune", "--target", "orders", env=env)

    assert f"list FAILED: ORDERS_STORAGE_LOCAL_PATH {folder} does not exist" in listed.stdout
    said = f"database {missing} does not exist on 127.0.0.1:{pg.port} (ORDERS_DB_DATABASE)"
    assert f"FAIL orders dump: {said}" in no_traceback(checked)
    assert f"FAILED at dump: {said}" in no_traceback(once)
    assert pruned.returncode == 2
    assert "set ORDERS_RETENTION_KEEP_* first" in no_traceback(pruned)


def test_send_test_without_notifications_says_it_sent_nothing(
    pg: PostgresServer, tmp_path: Path
) -> None:
    env = {**pg_env(pg, "postgres"), "STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(tmp_path)}

    result = run_backupd("check", "--send-test", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "ok   default notifications: nothing to send a test to: EMAIL_SMTP, NOTIFY_WEBHOOK_URL"
        " and HEALTHCHECK_PING_URL are unset"
    ) in no_traceback(result)


def test_env_file_after_the_command_says_where_it_goes(tmp_path: Path) -> None:
    for option in (("--env-file", str(tmp_path / "prod.env")), ("--log-level", "DEBUG")):
        result = run_backupd("check", *option, env={})

        no_traceback(result)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert lines[-1].startswith("backupd: error: unrecognized arguments: "), lines
        assert lines[-1].endswith(
            "; --env-file and --log-level come before the command: backupd --env-file FILE check"
        ), lines


def test_a_password_with_every_awkward_character_logs_in_from_the_env_file(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """`$`, `'`, `"`, `#`, `\\` and spaces, written in the .env file as they are, in quotes."""
    role = f"awkward_{uuid.uuid4().hex[:8]}"
    password = "p$ss ${HOME} 'q' \"d\" #h \\b"
    pg.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password.replace(chr(39), chr(39) * 2)}'")
    env = local_env(pg, tmp_path / "b", DB_USER=role)
    del env["DB_PASSWORD"]
    (tmp_path / ".env").write_text(f"DB_PASSWORD='{password}'  # the quotes are removed\n")

    result = run_backupd("check", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   default database: postgres" in result.stdout
    assert password not in result.stdout + result.stderr


def test_encryption_recipients_set_but_empty_are_warned_about_by_once_and_check(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """``ENCRYPTION_RECIPIENTS=${AGE_RECIPIENTS}`` with the variable missing is blank, read as
    unset: the backup was stored in clear without a word."""
    env = local_env(pg, tmp_path / "b", ENCRYPTION_RECIPIENTS="")

    checked = run_backupd("check", env=env)
    ran = run_backupd("once", env=env)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert ran.returncode == 0, ran.stdout + ran.stderr
    warning = (
        "ENCRYPTION_RECIPIENTS is set but empty: the backups are not encrypted (give it a"
        " value, or remove the variable)"
    )
    assert f"warn configuration: {warning}" in checked.stdout.splitlines()
    assert sum(warning in line for line in ran.stdout.splitlines()) == 1


def test_unknown_variables_are_warned_about_by_once_and_listed_by_check(
    pg: PostgresServer, tmp_path: Path
) -> None:
    env = local_env(pg, tmp_path / "b", DB_PASS="x", STORAGE_REGON="eu")
    (tmp_path / ".env").write_text("TIMEZON=Europe/Berlin\n")

    checked = run_backupd("check", env=env)
    ran = run_backupd("once", env=env)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert ran.returncode == 0, ran.stdout + ran.stderr
    expected = [
        "DB_PASS is not a backupd setting; did you mean DB_PASSWORD?",
        "STORAGE_REGON is not a backupd setting; did you mean STORAGE_REGION?",
        "TIMEZON is not a backupd setting; did you mean TIMEZONE?",
    ]
    assert [line for line in checked.stdout.splitlines() if line.startswith("warn")] == [
        f"warn configuration: {warning}" for warning in expected
    ]
    assert [
        line.split("WARNING ")[1].strip() for line in ran.stdout.splitlines() if "WARNING" in line
    ] == expected


def test_a_misspelt_required_variable_is_named_beside_the_problem(tmp_path: Path) -> None:
    env = {
        "DB_HOTS": "db",
        "DB_USER": "u",
        "DB_DATABASE": "d",
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(tmp_path),
    }

    result = run_backupd("once", env=env)

    assert result.returncode == 2
    assert "DB_HOST: required but not set" in result.stderr
    assert "warning: DB_HOTS is not a backupd setting; did you mean DB_HOST?" in result.stderr


def test_http_port_in_use_is_one_line_naming_the_variable(
    pg: PostgresServer, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = local_env(pg, tmp_path / "b", HTTP_PORT=str(port), HTTP_HOST="127.0.0.1")

        result = run_backupd("run", env=env, timeout=30)

    no_traceback(result)
    assert result.returncode == 2
    assert f"HTTP_PORT: port {port} on 127.0.0.1 is already in use" in result.stderr


def test_an_http_host_this_machine_lacks_is_named_as_the_host(
    pg: PostgresServer, tmp_path: Path
) -> None:
    env = local_env(pg, tmp_path / "b", HTTP_PORT=str(free_port()), HTTP_HOST="192.0.2.1")

    result = run_backupd("run", env=env, timeout=30)

    no_traceback(result)
    assert result.returncode == 2
    assert "HTTP_HOST: 192.0.2.1 is not an address of this machine" in result.stderr


@pytest.mark.parametrize("engine", ["postgres", "mariadb"])
def test_check_names_every_configured_database_that_does_not_exist(
    request: pytest.FixtureRequest, engine: str, tmp_path: Path
) -> None:
    server = request.getfixturevalue("pg" if engine == "postgres" else "mariadb")
    make_env = pg_env if engine == "postgres" else mariadb_env
    present = "postgres" if engine == "postgres" else "mysql"
    missing = f"nope_{uuid.uuid4().hex[:6]}"
    env = {
        **make_env(server, f"{present},{missing}"),
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(tmp_path / "b"),
    }

    result = run_backupd("check", env=env)

    no_traceback(result)
    assert result.returncode == 1
    where = f"127.0.0.1:{server.port}"
    assert f"ok   default database: {present} exists on {where}" in result.stdout
    assert (
        f"FAIL default database: database {missing} does not exist on {where} (DB_DATABASE)"
        in result.stdout
    )


@pytest.mark.parametrize("engine", ["postgres", "mariadb"])
def test_a_single_database_that_does_not_exist_is_named_with_its_variable(
    request: pytest.FixtureRequest, engine: str, tmp_path: Path
) -> None:
    server = request.getfixturevalue("pg" if engine == "postgres" else "mariadb")
    make_env = pg_env if engine == "postgres" else mariadb_env
    missing = f"nope_{uuid.uuid4().hex[:6]}"
    env = {
        **make_env(server, missing),
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(tmp_path / "b"),
    }
    said = f"database {missing} does not exist on 127.0.0.1:{server.port} (DB_DATABASE)"

    for command in ("check", "once"):
        result = run_backupd(command, env=env)
        no_traceback(result)
        assert result.returncode == 1
        assert said in result.stdout + result.stderr, command


@dataclass
class Received:
    method: str
    path: str
    body: bytes


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Received]]]:
    """A local HTTP server recording every request: Seq, the webhook and pings land here."""
    seen: list[Received] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            seen.append(Received(self.command, self.path, self.rfile.read(length)))
            self.send_response(201 if self.path.startswith("/api/events") else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _record

        def log_message(self, *args: Any) -> None:
            return None

    with http_server(Handler) as url:
        yield url, seen


class Inbox:
    def __init__(self) -> None:
        self.subjects: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.subjects.append(email.message_from_bytes(envelope.content)["Subject"])
        return "250 OK"


def test_send_test_sends_one_mail_seq_event_webhook_post_and_ping(
    pg: PostgresServer, tmp_path: Path, receiver: tuple[str, list[Received]]
) -> None:
    url, seen = receiver
    inbox = Inbox()
    port = free_port()
    relay = Controller(inbox, hostname="127.0.0.1", port=port)
    relay.start()
    env = local_env(
        pg,
        tmp_path / "b",
        EMAIL_SMTP="127.0.0.1",
        EMAIL_PORT=str(port),
        EMAIL_FROM="backupd@example.com",
        EMAIL_TO="ops@example.com",
        NOTIFY_WEBHOOK_URL=f"{url}/hook/secret-token",
        HEALTHCHECK_PING_URL=f"{url}/ping/uuid",
        SEQ_URL=url,
    )
    try:
        quiet = run_backupd("check", env=env)
        quiet_requests = list(seen)
        loud = run_backupd("check", "--send-test", env=env)
    finally:
        relay.stop()

    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert quiet_requests == []
    for line in ("mail", "webhook", "ping", "seq"):
        assert any(
            f" {line}: " in out and "nothing sent" in out for out in quiet.stdout.splitlines()
        ), (line, quiet.stdout)
    assert "secret-token" not in quiet.stdout + loud.stdout
    assert loud.returncode == 0, loud.stdout + loud.stderr
    assert inbox.subjects == ["[backupd] default: test mail"]
    (hook,) = [r for r in seen if r.path.startswith("/hook/")]
    assert hook.method == "POST"
    assert json.loads(hook.body)["result"] == "test"
    assert [(r.method, r.path) for r in seen if r.path.startswith("/ping/")] == [
        ("GET", "/ping/uuid")
    ]
    events = b"".join(r.body for r in seen if r.path.startswith("/api/events"))
    assert b"test event from backupd check --send-test" in events


def test_once_runs_just_the_named_target_and_database(pg: PostgresServer, tmp_path: Path) -> None:
    database = f"only_{uuid.uuid4().hex[:6]}"
    pg.create_database(database, "CREATE TABLE t AS SELECT 1 AS x;")
    env = {
        **pg_env(pg, "postgres"),
        "BACKUPD_TARGETS": "first,second",
        "STORAGE_TYPE": "local",
        "FIRST_STORAGE_LOCAL_PATH": str(tmp_path / "first"),
        "SECOND_STORAGE_LOCAL_PATH": str(tmp_path / "second"),
        "TIMEZONE": "Asia/Kolkata",
    }

    result = run_backupd("once", "--target", "second", "--database", database, env=env)
    unknown = run_backupd("once", "--target", "third", env=env)
    several = run_backupd("once", "--target", "second", "--database", "a,b", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "first").exists()
    stored = [p.name for p in (tmp_path / "second").rglob("*.dump")]
    assert len(stored) == 1 and database in stored[0]
    # log timestamps in TIMEZONE, with the offset
    assert all(line.split()[0].endswith("+05:30") for line in result.stdout.splitlines()), (
        result.stdout
    )
    assert "MiB/s" in result.stdout or "KiB/s" in result.stdout
    assert unknown.returncode == 2
    assert "no target named 'third'; configured: first, second" in unknown.stderr
    assert several.returncode == 2
    assert "--database 'a,b': name one database" in several.stderr


def test_a_host_and_login_written_as_a_yaml_block_still_back_up(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """A Kubernetes ConfigMap's ``DB_HOST: |`` block ends the value with a line break."""
    database = f"block_{uuid.uuid4().hex[:6]}"
    pg.create_database(database, "CREATE TABLE t AS SELECT 1 AS x;")
    env = {
        **pg_env(pg, database),
        "DB_HOST": "127.0.0.1\n",
        "DB_USER": f"{pg.user}\n",
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": str(tmp_path / "store"),
    }

    checked = run_backupd("check", env=env)
    result = run_backupd("once", env=env)
    tabbed = run_backupd("once", env={**env, "DB_HOST": "127.0.0.1\tx"})

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"postgres {database} at 127.0.0.1:{pg.port} -> folder" in checked.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert tabbed.returncode == 2
    assert "DB_HOST: must not contain control characters" in no_traceback(tabbed)


def test_restore_to_stdout_writes_the_verified_dump_for_a_pipe(
    pg: PostgresServer, tmp_path: Path
) -> None:
    database = f"piped_{uuid.uuid4().hex[:6]}"
    pg.create_database(database, "CREATE TABLE t AS SELECT g FROM generate_series(1, 500) g;")
    env = local_env(pg, tmp_path / "store", DB_DATABASE=database)
    assert run_backupd("once", env=env).returncode == 0

    listing = run_backupd("list", env=env)
    piped = subprocess.run(
        backupd_command("restore", "--to-file", "-"),
        env=child_env(env),
        capture_output=True,
        timeout=60,
        check=False,
    )

    (stored,) = (tmp_path / "store").rglob("*.dump")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == stored.read_bytes()
    assert b"checksum verified" in piped.stderr
    assert re.search(r"\d+(\.\d)? KiB  complete", listing.stdout), listing.stdout
    listed = subprocess.run(["pg_restore", "--list"], input=piped.stdout, capture_output=True)
    assert b"TABLE DATA public t" in listed.stdout


def test_restore_to_stdout_refuses_a_terminal(pg: PostgresServer, tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            backupd_command("restore", "--to-file", "-"),
            env=child_env(local_env(pg, tmp_path / "store")),
            stdout=terminal,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)

    assert result.returncode == 2
    assert "--to-file - writes the dump to stdout: pipe it into a tool or a file" in result.stderr


def test_a_check_interrupted_while_writing_its_probe_leaves_no_probe_behind(
    pg: PostgresServer, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    """SIGTERM while the probe's PUT has landed but not been answered: the check still
    deletes the probe object on its way out."""
    proxy.hold = lambda method, target: method == "PUT" and ".backupd-probe-" in target
    env = {**pg_env(pg, "postgres"), **storage_env(proxy.url, bucket)}
    child = subprocess.Popen(
        backupd_command("check"),
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proxy.holding.wait(60), "the probe's PUT never reached the store"
        assert bucket_state(s3, bucket)[0], "the held PUT has landed"
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        proxy.release.set()
        if child.poll() is None:
            child.kill()
            child.wait()

    assert child.returncode == 1, out + err
    assert "Traceback" not in out + err
    assert bucket_state(s3, bucket) == ([], [])


def test_a_database_named_like_a_setting_keeps_its_name_in_a_named_targets_hints(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """The database DB_HOST is the user's data: only the hint names ORDERS_DB_DATABASE."""
    storage = {"STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(tmp_path / "b")}
    env = as_target("orders", {**pg_env(pg, "DB_HOST"), **storage})

    checked = run_backupd("check", env=env)
    once = run_backupd("once", env=env)

    said = f"database DB_HOST does not exist on 127.0.0.1:{pg.port} (ORDERS_DB_DATABASE)"
    assert f"FAIL orders dump: {said}" in no_traceback(checked)
    assert f"FAILED at dump: {said}" in no_traceback(once)
    assert "ORDERS_DB_HOST" not in checked.stdout + once.stdout
