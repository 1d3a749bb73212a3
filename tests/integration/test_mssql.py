"""SQL Server through a stand-in `sqlcmd` (no SQL Server can run here), plus a real-server test
that runs only where MSSQL_TEST_DSN is set."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    as_target,
    backupd_command,
    bucket_state,
    child_env,
    run_backupd,
    storage_env,
)

DATA = Path(__file__).parent.parent / "data"
PASSWORD = "mssql-Secret-2022!"
SIZE = 12 * 1024 * 1024 + 17  # three parts of 5 MiB


@pytest.fixture
def sqlcmd(tmp_path: Path) -> dict[str, Any]:
    """A `sqlcmd` first on PATH, a shared directory, and what the stand-in records."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sqlcmd"
    script.write_text(f"#!{sys.executable}\n" + (DATA / "fake_sqlcmd.py").read_text())
    script.chmod(0o755)
    shared = tmp_path / "shared"
    shared.mkdir()
    config = {
        "server_dir": "/var/opt/mssql/backup",
        "local_dir": str(shared),
        "mode": "ok",
        "size": SIZE,
        "databases": ["shop]2"],
    }
    (bin_dir / "fake_sqlcmd.json").write_text(json.dumps({**config, "password": PASSWORD}))
    return {"bin": bin_dir, "shared": shared, "config": config}


def configure(sqlcmd: dict[str, Any], **changes: Any) -> None:
    config = {**sqlcmd["config"], **changes, "password": PASSWORD}
    (sqlcmd["bin"] / "fake_sqlcmd.json").write_text(json.dumps(config))


def calls(sqlcmd: dict[str, Any]) -> list[dict[str, Any]]:
    log = sqlcmd["bin"] / "fake_sqlcmd.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def mssql_env(sqlcmd: dict[str, Any], moto_url: str, bucket: str, **extra: str) -> dict[str, str]:
    return {
        "PATH": f"{sqlcmd['bin']}{os.pathsep}{os.environ['PATH']}",
        "DB_TYPE": "mssql",
        "DB_HOST": "sqlserver.internal",
        "DB_USER": "sa",
        "DB_PASSWORD": PASSWORD,
        "DB_DATABASE": "shop]2",
        "MSSQL_LOCAL_DIR": str(sqlcmd["shared"]),
        **storage_env(moto_url, bucket, STORAGE_PART_SIZE="5MiB"),
        **extra,
    }


def test_bak_is_streamed_byte_identical_then_deleted(
    sqlcmd: dict[str, Any], moto_url: str, s3: Any, bucket: str
) -> None:
    result = run_backupd("once", env=mssql_env(sqlcmd, moto_url, bucket))

    assert result.returncode == 0, result.stdout + result.stderr
    keys, uploads = bucket_state(s3, bucket)
    assert uploads == []
    (key,) = [k for k in keys if not k.endswith(".json")]
    assert key.endswith(".bak") and "/backup_shop_2~" in key
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == random.Random(7).randbytes(SIZE)
    assert list(sqlcmd["shared"].iterdir()) == []
    backups = [c for c in calls(sqlcmd) if any(a.startswith("BACKUP DATABASE") for a in c["argv"])]
    (backup,) = backups
    statement = backup["argv"][backup["argv"].index("-Q") + 1]
    assert statement.startswith(
        "BACKUP DATABASE [shop]]2] TO DISK = N'/var/opt/mssql/backup/backup_shop_2~"
    )
    assert statement.endswith(".bak' WITH COPY_ONLY, CHECKSUM, INIT, FORMAT, COMPRESSION")
    assert all(c["password"] == PASSWORD for c in calls(sqlcmd) if "-Q" in c["argv"])
    assert not any(PASSWORD in arg for c in calls(sqlcmd) for arg in c["argv"])
    assert "-C" not in backup["argv"] and "-b" in backup["argv"]


def test_access_denied_uploads_nothing_deletes_the_partial_file_and_explains(
    sqlcmd: dict[str, Any], moto_url: str, s3: Any, bucket: str
) -> None:
    configure(sqlcmd, mode="denied")

    result = run_backupd(
        "once", env=mssql_env(sqlcmd, moto_url, bucket, MSSQL_TRUST_SERVER_CERTIFICATE="true")
    )

    assert result.returncode == 1
    assert "Operating system error 5(Access is denied.)" in result.stdout
    assert "writable by the SQL Server process" in result.stdout
    assert "could not write to /var/opt/mssql/backup (MSSQL_BACKUP_DIR)" in result.stdout
    assert bucket_state(s3, bucket) == ([], [])
    assert list(sqlcmd["shared"].iterdir()) == []
    assert all("-C" in c["argv"] for c in calls(sqlcmd) if "-Q" in c["argv"])
    assert PASSWORD not in result.stdout + result.stderr


def test_compression_can_be_turned_off_for_express_edition(
    sqlcmd: dict[str, Any], moto_url: str, bucket: str
) -> None:
    result = run_backupd("once", env=mssql_env(sqlcmd, moto_url, bucket, MSSQL_COMPRESSION="false"))

    assert result.returncode == 0, result.stdout + result.stderr
    statements = [a for c in calls(sqlcmd) for a in c["argv"] if a.startswith("BACKUP DATABASE")]
    assert statements[0].endswith("WITH COPY_ONLY, CHECKSUM, INIT, FORMAT")


def test_restore_puts_the_verified_bak_on_the_volume_and_moves_the_files(
    sqlcmd: dict[str, Any], moto_url: str, bucket: str
) -> None:
    env = mssql_env(sqlcmd, moto_url, bucket)
    assert run_backupd("once", env=env).returncode == 0

    result = run_backupd("restore", "--into", "shop_copy", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (sqlcmd["bin"] / "restored.bak").read_bytes() == random.Random(7).randbytes(SIZE)
    (restore,) = [a for c in calls(sqlcmd) for a in c["argv"] if a.startswith("RESTORE DATABASE")]
    assert restore.startswith(
        "RESTORE DATABASE [shop_copy] FROM DISK = N'/var/opt/mssql/backup/restore_"
    )
    assert "MOVE N'shop' TO N'/var/opt/mssql/data/shop_copy_shop.mdf'" in restore
    assert "MOVE N'shop_log' TO N'/var/opt/mssql/data/shop_copy_shop_log.ldf'" in restore
    assert restore.endswith("CHECKSUM, RECOVERY")
    assert list(sqlcmd["shared"].iterdir()) == []


def test_check_probes_sqlcmd_login_and_the_shared_volume(
    sqlcmd: dict[str, Any], moto_url: str, bucket: str, tmp_path: Path
) -> None:
    good = run_backupd("check", env=mssql_env(sqlcmd, moto_url, bucket))
    missing = run_backupd(
        "check", env=mssql_env(sqlcmd, moto_url, bucket, MSSQL_LOCAL_DIR=str(tmp_path / "nope"))
    )

    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok   default database: mssql Microsoft SQL Server 2022" in good.stdout
    assert "ok   default shared volume: MSSQL_LOCAL_DIR" in good.stdout
    assert "ok   default database: shop]2 exists on sqlserver.internal:1433" in good.stdout
    assert missing.returncode == 1
    assert "FAIL default shared volume" in missing.stdout


def test_a_missing_mssql_local_dir_is_named_before_the_server_writes_a_bak(
    sqlcmd: dict[str, Any], moto_url: str, s3: Any, bucket: str, tmp_path: Path
) -> None:
    missing = tmp_path / "not_mounted"
    env = mssql_env(sqlcmd, moto_url, bucket, MSSQL_LOCAL_DIR=str(missing))

    result = run_backupd("once", env=env)

    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert f"FAILED at dump: MSSQL_LOCAL_DIR {missing}: No such file or directory" in line, line
    assert not any(a.startswith("BACKUP DATABASE") for c in calls(sqlcmd) for a in c["argv"])
    assert bucket_state(s3, bucket) == ([], [])


def test_a_named_targets_shared_volume_is_named_by_its_own_variable(
    sqlcmd: dict[str, Any], moto_url: str, s3: Any, bucket: str, tmp_path: Path
) -> None:
    missing = tmp_path / "not_mounted"
    settings = mssql_env(sqlcmd, moto_url, bucket, MSSQL_LOCAL_DIR=str(missing))
    env = {"PATH": settings.pop("PATH"), **as_target("shop", settings)}

    checked = run_backupd("check", env=env)
    once = run_backupd("once", env=env)

    assert (
        f"FAIL shop shared volume: SHOP_MSSQL_LOCAL_DIR {missing}: No such file" in checked.stdout
    )
    assert f"FAILED at dump: SHOP_MSSQL_LOCAL_DIR {missing}: No such file" in once.stdout
    assert PASSWORD not in checked.stdout + once.stdout + once.stderr


def test_a_shared_volume_too_small_is_named_before_the_server_writes_a_bak(
    sqlcmd: dict[str, Any], moto_url: str, s3: Any, bucket: str
) -> None:
    configure(sqlcmd, size=2**62)  # data files of 4 EiB

    result = run_backupd("once", env=mssql_env(sqlcmd, moto_url, bucket))

    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert f"FAILED at dump: MSSQL_LOCAL_DIR {sqlcmd['shared']} has " in line, line
    assert "free; the backup of shop]2 needs about 1024 PiB" in line
    assert not any(a.startswith("BACKUP DATABASE") for c in calls(sqlcmd) for a in c["argv"])
    assert bucket_state(s3, bucket) == ([], [])


def test_check_on_a_full_shared_volume_leaves_no_probe_file(
    sqlcmd: dict[str, Any], moto_url: str, bucket: str, tmp_path: Path
) -> None:
    """The volume is a 4 KiB tmpfs, full, in a mount namespace of backupd's own: the probe
    file is created, and its first bytes find no room."""
    full = tmp_path / "full"
    full.mkdir()
    script = (
        'mount -t tmpfs -o size=4k tmpfs "$0" && head -c 4096 /dev/zero > "$0/filler" '
        '&& "$@"; echo left: $(ls -A "$0")'
    )
    argv = ["unshare", "--mount", "--map-root-user", "sh", "-c", script, str(full)]
    if shutil.which("unshare") is None or subprocess.run([*argv, "true"]).returncode != 0:
        pytest.skip("no mount namespace here (unshare)")
    env = mssql_env(sqlcmd, moto_url, bucket, MSSQL_LOCAL_DIR=str(full))

    result = subprocess.run(
        [*argv, *backupd_command("check")],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert f"FAIL default shared volume: MSSQL_LOCAL_DIR {full}: No space left" in result.stdout
    assert result.stdout.splitlines()[-1] == "left: filler", result.stdout + result.stderr


def run_with_a_read_only_view(
    view: Path, of: Path, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """backupd in a mount namespace of its own, where ``view`` shows ``of`` read-only (as a
    volume mounted readOnly would): the stand-in server writes to ``of``, backupd reads ``view``."""
    mount = 'mount --bind -o ro "$0" "$1" && shift && exec "$@"'
    argv = ["unshare", "--mount", "--map-root-user", "sh", "-c", mount, str(of), str(view)]
    if shutil.which("unshare") is None or subprocess.run([*argv, "true"]).returncode != 0:
        pytest.skip("no mount namespace here (unshare)")
    return subprocess.run(
        [*argv, *backupd_command(*args)],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_bak_backupd_cannot_delete_fails_the_run_naming_mssql_local_dir(
    sqlcmd: dict[str, Any], moto_url: str, s3: Any, bucket: str, tmp_path: Path
) -> None:
    view = tmp_path / "read_only"
    view.mkdir()
    env = mssql_env(sqlcmd, moto_url, bucket, MSSQL_LOCAL_DIR=str(view))

    result = run_with_a_read_only_view(view, sqlcmd["shared"], "once", env=env)

    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert "FAILED at dump: cannot delete " in line, result.stdout + result.stderr
    assert "from MSSQL_LOCAL_DIR: Read-only file system" in line
    assert "Traceback" not in result.stdout + result.stderr
    assert bucket_state(s3, bucket) == ([], [])


def test_a_restore_onto_a_shared_volume_backupd_cannot_write_names_mssql_local_dir(
    sqlcmd: dict[str, Any], moto_url: str, bucket: str, tmp_path: Path
) -> None:
    assert run_backupd("once", env=mssql_env(sqlcmd, moto_url, bucket)).returncode == 0
    view = tmp_path / "read_only"
    view.mkdir()
    env = mssql_env(sqlcmd, moto_url, bucket, MSSQL_LOCAL_DIR=str(view))

    result = run_with_a_read_only_view(
        view, sqlcmd["shared"], "restore", "--into", "shop_copy", env=env
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert f"cannot write {view}/restore_" in line, line
    assert ".bak (MSSQL_LOCAL_DIR): Read-only file system" in line
    assert list(sqlcmd["shared"].iterdir()) == []


def test_a_bak_backupd_cannot_read_fails_the_run_naming_mssql_local_dir(
    sqlcmd: dict[str, Any], moto_url: str, s3: Any, bucket: str
) -> None:
    """Run as a user without root's powers (a user namespace's), as in backupd's image: the
    server leaves its .bak unreadable to backupd."""
    configure(sqlcmd, mode="unreadable")
    argv = ["unshare", "--map-user=10001", "--map-group=10001"]
    if shutil.which("unshare") is None or subprocess.run([*argv, "true"]).returncode != 0:
        pytest.skip("no user namespace here (unshare)")

    result = subprocess.run(
        [*argv, *backupd_command("once")],
        env=child_env(mssql_env(sqlcmd, moto_url, bucket)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert "FAILED at dump: cannot read " in line, result.stdout + result.stderr
    assert "from MSSQL_LOCAL_DIR: Permission denied" in line
    assert bucket_state(s3, bucket) == ([], [])
    assert list(sqlcmd["shared"].iterdir()) == []


@pytest.mark.skipif(
    "MSSQL_TEST_DSN" not in os.environ, reason="no SQL Server here: set MSSQL_TEST_DSN to run"
)
def test_against_a_real_sql_server(moto_url: str, s3: Any, bucket: str) -> None:
    """MSSQL_TEST_DSN=host,port,user,password,database,server_dir,local_dir"""
    host, port, user, password, database, server_dir, local_dir = os.environ[
        "MSSQL_TEST_DSN"
    ].split(",")
    assert shutil.which("sqlcmd"), "sqlcmd must be installed"
    env = {
        "DB_TYPE": "mssql",
        "DB_HOST": host,
        "DB_PORT": port,
        "DB_USER": user,
        "DB_PASSWORD": password,
        "DB_DATABASE": database,
        "MSSQL_BACKUP_DIR": server_dir,
        "MSSQL_LOCAL_DIR": local_dir,
        "MSSQL_TRUST_SERVER_CERTIFICATE": "true",
        **storage_env(moto_url, bucket),
    }

    result = run_backupd("once", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    keys, uploads = bucket_state(s3, bucket)
    assert uploads == [] and any(k.endswith(".bak") for k in keys)
    assert list(Path(local_dir).glob("backup_*.bak")) == []
