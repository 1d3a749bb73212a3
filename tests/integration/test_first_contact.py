"""What a new user meets first: strict configuration, one-line errors, a `check` that checks
everything a run will touch."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import child_env, pg_env, run_backupd
from tests.servers import PostgresServer


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

    (tmp_path / "prod.env").write_text(
        "".join(f"{k}='{v}'\n" for k, v in local_env(pg, tmp_path / "b").items())
    )
    read = run_backupd("--env-file", str(tmp_path / "prod.env"), "check", env={})
    assert read.returncode == 0, read.stdout + read.stderr


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
