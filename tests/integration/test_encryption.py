"""Backups encrypted in the stream to age recipients: standard age files that the stock tools
restore, and that ``backupd restore`` decrypts only with a matching identity."""

from __future__ import annotations

import os
import pty
import random
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    backupd_command,
    bucket_state,
    child_env,
    mariadb_env,
    pg_env,
    run_backupd,
    storage_env,
    unique,
)
from tests.integration import test_mssql, test_notify
from tests.integration.test_failures import finish, slow_upload_env, start_backupd
from tests.integration.test_mssql import SIZE, mssql_env
from tests.integration.test_notify import Inbox, mail_env
from tests.integration.test_roundtrip import fetch_backup
from tests.integration.test_secrets import ProcessWatcher
from tests.procs import cmdlines, dump_processes
from tests.servers import FaultProxy, MariaDBServer, PostgresServer, wait_until

DATA = Path(__file__).parent.parent / "data"
AGE_HEADER = b"age-encryption.org/v1\n"
sqlcmd = test_mssql.sqlcmd  # the stand-in SQL Server's fixture
smtp = test_notify.smtp  # a real SMTP server (aiosmtpd) with AUTH
# The test SMTP server takes AUTH without TLS (EMAIL_TLS=none): no certificates here.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


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


def test_a_bad_recipient_stops_backupd_with_exit_2_naming_the_variable_and_line(
    keys: dict[str, Any], tmp_path: Path
) -> None:
    secret = next(
        line for line in keys["key"].read_text().splitlines() if line.startswith("AGE-SECRET")
    )
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# keys\n{keys['key_public']}\n{secret}\n")
    env = {
        "DB_HOST": "db.internal",
        "DB_USER": "backup",
        "DB_DATABASE": "app",
        "STORAGE_BUCKET_NAME": "backups",
        "ENCRYPTION_RECIPIENTS": "age1notarecipient",
        "ENCRYPTION_RECIPIENTS_FILE": str(recipients),
    }

    result = run_backupd("once", env=env)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "ENCRYPTION_RECIPIENTS: item 1 of 1 is not a valid age recipient" in result.stderr
    assert f"ENCRYPTION_RECIPIENTS_FILE: {recipients} line 3 is an identity" in result.stderr
    assert secret not in result.stdout + result.stderr


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
        f" | mariadb --socket={mariadb.socket} -uroot --binary-mode --max-allowed-packet=1G"
        f" --default-character-set=utf8mb4 {restored}",
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


def run_together(
    *runs: tuple[list[str], dict[str, str]],
) -> list[subprocess.CompletedProcess[str]]:
    """Several independent ``backupd`` commands at once (each with its own environment)."""
    processes = [
        subprocess.Popen(
            backupd_command(*args),
            env=child_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, env in runs
    ]
    return [finish(process) for process in processes]


def only_backup_key(s3: Any, bucket: str) -> str:
    (key,) = [k for k in bucket_state(s3, bucket)[0] if not k.endswith(".manifest.json")]
    return key


def test_check_decrypts_its_probe_with_the_identity_file_restores_and_drills_use(
    pg: PostgresServer, moto_url: str, bucket: str, keys: dict[str, Any], tmp_path: Path
) -> None:
    """ENCRYPTION_IDENTITY_FILE missing, or of a key the backups are no longer encrypted to:
    ``check`` said ok, and the first drill (at night) or restore (in an emergency) failed."""
    env = {
        **pg_env(pg, "postgres"),
        **storage_env(moto_url, bucket),
        "ENCRYPTION_RECIPIENTS": f"{keys['key_public']},{keys['ssh_public']}",
    }
    missing = tmp_path / "no-such-identity.txt"
    restore_only = {k: v for k, v in env.items() if k != "ENCRYPTION_RECIPIENTS"}

    matching, by_ssh, wrong, absent, readable = run_together(
        (["check"], {**env, "ENCRYPTION_IDENTITY_FILE": str(keys["key"])}),
        (["check"], {**env, "ENCRYPTION_IDENTITY_FILE": str(keys["ssh"])}),
        (["check"], {**env, "ENCRYPTION_IDENTITY_FILE": str(keys["other"])}),
        (["check"], {**env, "ENCRYPTION_IDENTITY_FILE": str(missing)}),
        (["check"], {**restore_only, "ENCRYPTION_IDENTITY_FILE": str(keys["key"])}),
    )

    for result in (matching, by_ssh):
        assert result.returncode == 0, result.stdout + result.stderr
        assert "encrypts to 2 recipient(s); " in result.stdout
        assert " decrypts it" in result.stdout
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "FAIL default encryption: ENCRYPTION_IDENTITY_FILE: none of the identities" in (
        wrong.stdout
    )
    assert "restores and drills of new backups will fail" in wrong.stdout
    assert absent.returncode == 1, absent.stdout + absent.stderr
    assert f"the identity file {missing} (ENCRYPTION_IDENTITY_FILE) does not exist" in (
        absent.stdout
    )
    assert readable.returncode == 0, readable.stdout + readable.stderr
    assert f"encryption: {keys['key']} is readable (no ENCRYPTION_RECIPIENTS" in readable.stdout
    for result in (matching, by_ssh, wrong, absent, readable):
        assert "Traceback" not in result.stdout + result.stderr
        assert "AGE-SECRET-KEY" not in result.stdout + result.stderr


def restore_and_drill(
    env: dict[str, str], identity: Path, victim: str, prefix: str
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """``restore --into VICTIM --clean`` and ``verify --drill`` (scratch names starting with
    ``prefix``), both with ``identity``."""
    restored = run_backupd(
        "restore", "--into", victim, "--clean", "--identity", str(identity), env=env
    )
    drill_env = {**env, "ENCRYPTION_IDENTITY_FILE": str(identity)}
    drilled = run_backupd(
        "verify", "--drill", env={**drill_env, "VERIFY_DRILL_DATABASE_PREFIX": prefix}
    )
    return restored, drilled


def encrypted_backup(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, keys: dict[str, Any]
) -> tuple[str, dict[str, str], str]:
    """The sample database backed up, encrypted to the age key and the SSH key: its name,
    the environment that made it, and the object's key."""
    database = unique("shop")
    pg.create_database(database, (DATA / "postgres_sample.sql").read_text())
    env = {
        **pg_env(pg, database),
        **storage_env(moto_url, bucket),
        "ENCRYPTION_RECIPIENTS": f"{keys['key_public']},{keys['ssh_public']}",
    }
    assert run_backupd("once", env=env).returncode == 0
    return database, env, only_backup_key(s3, bucket)


def test_postgres_restore_needs_a_matching_identity_and_a_wrong_one_creates_nothing(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, keys: dict[str, Any]
) -> None:
    database, env, key = encrypted_backup(pg, moto_url, s3, bucket, keys)
    wrong, bare, restored, by_ssh = (unique(name) for name in ("wrong", "bare", "ok", "ssh"))

    checked, refused, mismatched, result, second = run_together(
        (["check"], env),
        (["restore", "--into", bare], env),
        (["restore", "--into", wrong, "--identity", str(keys["other"])], env),
        (["restore", "--into", restored, "--identity", str(keys["key"])], env),
        (["restore", "--into", by_ssh], {**env, "ENCRYPTION_IDENTITY_FILE": str(keys["ssh"])}),
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok   default encryption: age " in checked.stdout
    assert "encrypts to 2 recipient(s)" in checked.stdout
    assert refused.returncode == 1
    assert f"{key} is encrypted: give the age identity file" in refused.stdout
    assert "--identity FILE" in refused.stdout
    assert mismatched.returncode == 1
    assert f"none of the identities in {keys['other']} can decrypt {key}" in mismatched.stdout
    assert "Traceback" not in mismatched.stdout + mismatched.stderr
    existing = pg.psql("SELECT datname FROM pg_database").split()
    assert wrong not in existing and bare not in existing
    assert result.returncode == 0, result.stdout + result.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    assert pg.plain_dump(restored) == pg.plain_dump(database)
    assert pg.plain_dump(by_ssh) == pg.plain_dump(database)


def test_an_identity_that_cannot_decrypt_leaves_the_database_clean_would_replace(
    pg: PostgresServer,
    moto_url: str,
    s3: Any,
    bucket: str,
    keys: dict[str, Any],
    tmp_path: Path,
) -> None:
    """``restore --clean`` replaces an existing database only once the identity is known to
    decrypt the object: another key, a public key given as identity, a passphrase-protected
    key each stop it before anything is dropped."""
    _, env, key = encrypted_backup(pg, moto_url, s3, bucket, keys)
    victim = unique("victim")
    pg.create_database(victim, "CREATE TABLE precious (x int); INSERT INTO precious VALUES (42);")
    public = tmp_path / "public.txt"
    public.write_text(keys["key_public"] + "\n")
    locked = tmp_path / "id_locked"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "pass-Word-5", "-f", str(locked)], check=True
    )
    locked_env = {
        **env,
        "ENCRYPTION_RECIPIENTS": " ".join(locked.with_suffix(".pub").read_text().split()[:2]),
    }
    stored = set(bucket_state(s3, bucket)[0])
    assert run_backupd("once", env=locked_env).returncode == 0
    (locked_key,) = {
        k for k in bucket_state(s3, bucket)[0] if not k.endswith(".manifest.json")
    } - stored  # not by name: two backups in one second differ only by their random run id

    said = {}
    for name, identity, which in (
        ("other", keys["other"], key),
        ("public", public, key),
        ("locked", locked, locked_key),
    ):
        result = run_backupd(
            "restore",
            "--key",
            which,
            "--into",
            victim,
            "--clean",
            "--identity",
            str(identity),
            env=env,
        )
        assert result.returncode == 1, result.stdout
        assert "Traceback" not in result.stdout + result.stderr
        said[name] = result.stdout
        assert pg.psql("SELECT x FROM precious", victim).strip() == "42"

    assert f"none of the identities in {keys['other']} can decrypt {key}" in said["other"]
    assert f"cannot use {public} as an age identity file" in said["public"]
    assert f"{locked} is protected by a passphrase" in said["locked"]
    assert "pass-Word-5" not in "".join(said.values())


def passphrase_protected(identity: Path, passphrase: str) -> Path:
    """``identity`` encrypted by ``age -p`` (age reads the passphrase from a terminal only)."""
    locked = identity.with_suffix(".txt.age")
    controller, terminal = pty.openpty()
    try:
        age = subprocess.Popen(
            ["age", "-p", "-o", str(locked), str(identity)],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            start_new_session=True,  # no /dev/tty: age reads its terminal stdin
        )
        os.write(controller, f"{passphrase}\n{passphrase}\n".encode())
        assert age.wait(timeout=30) == 0
    finally:
        os.close(terminal)
        os.close(controller)
    assert locked.read_bytes().startswith(AGE_HEADER)
    return locked


def test_a_passphrase_protected_age_identity_leaves_the_database_clean_would_replace(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, keys: dict[str, Any]
) -> None:
    """An age identity file encrypted with ``age -p`` needs a passphrase backupd cannot type:
    ``restore --clean`` stops before the existing database is dropped, and a drill before
    its scratch database is created."""
    _, env, key = encrypted_backup(pg, moto_url, s3, bucket, keys)
    locked = passphrase_protected(keys["key"], "pass-Word-6")
    victim = unique("victim")
    pg.create_database(victim, "CREATE TABLE precious (x int); INSERT INTO precious VALUES (42);")
    prefix = unique("drill").lower() + "_"

    restored, drilled = restore_and_drill(env, locked, victim, prefix)

    assert restored.returncode == 1, restored.stdout
    assert pg.psql("SELECT x FROM precious", victim).strip() == "42"
    assert f"{locked} is protected by a passphrase" in restored.stdout
    assert drilled.returncode == 1, drilled.stdout
    assert f"drill of {key}: {locked} is protected by a passphrase" in drilled.stdout
    assert "drill: restoring" not in drilled.stdout
    for result in (restored, drilled):
        assert "Traceback" not in result.stdout + result.stderr
        assert "pass-Word-6" not in result.stdout + result.stderr
    assert pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%'") == ""


def test_a_missing_identity_file_is_named_by_the_setting_that_gave_it(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, keys: dict[str, Any], tmp_path: Path
) -> None:
    """``verify`` has no ``--identity``: a drill's missing identity file is
    ENCRYPTION_IDENTITY_FILE's, as is a restore's when the option was not given."""
    _, env, key = encrypted_backup(pg, moto_url, s3, bucket, keys)
    missing = tmp_path / "gone" / "key.txt"
    from_setting = {**env, "ENCRYPTION_IDENTITY_FILE": str(missing)}

    drilled = run_backupd("verify", "--drill", env=from_setting)
    restored = run_backupd("restore", "--to-file", str(tmp_path / "x.dump"), env=from_setting)
    given = run_backupd(
        "restore", "--to-file", str(tmp_path / "y.dump"), "--identity", str(missing), env=env
    )

    said = f"the identity file {missing} (ENCRYPTION_IDENTITY_FILE) does not exist"
    assert drilled.returncode == 1
    assert f"VERIFY FAILED: drill of {key}: {said}" in drilled.stdout
    assert restored.returncode == 1
    assert f"restore FAILED: {said}" in restored.stdout
    assert given.returncode == 1
    assert f"the identity file {missing} (--identity) does not exist" in given.stdout
    for result in (drilled, restored, given):
        assert "Traceback" not in result.stdout + result.stderr
    assert not list(tmp_path.glob("*.dump"))


def test_without_age_installed_restore_clean_and_a_drill_create_and_drop_nothing(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, keys: dict[str, Any], tmp_path: Path
) -> None:
    """age missing on the restoring host is no damage to look past: ``restore --clean``
    keeps the existing database, and a drill creates no scratch database."""
    _, env, key = encrypted_backup(pg, moto_url, s3, bucket, keys)
    victim = unique("victim")
    pg.create_database(victim, "CREATE TABLE precious (x int); INSERT INTO precious VALUES (42);")
    tools = tmp_path / "bin"  # the PostgreSQL client tools, and no age
    tools.mkdir()
    for tool in ("psql", "pg_restore", "pg_dump"):
        found = shutil.which(tool)
        assert found is not None
        (tools / tool).symlink_to(found)
    without_age = {**env, "PATH": str(tools), "ENCRYPTION_IDENTITY_FILE": str(keys["key"])}
    prefix = unique("drill").lower() + "_"

    restored = run_backupd("restore", "--into", victim, "--clean", env=without_age)
    drilled = run_backupd(
        "verify", "--drill", env={**without_age, "VERIFY_DRILL_DATABASE_PREFIX": prefix}
    )

    assert restored.returncode == 1, restored.stdout
    assert pg.psql("SELECT x FROM precious", victim).strip() == "42"
    assert "restore FAILED: age not found on PATH" in restored.stdout
    assert "dropping" not in restored.stdout
    assert drilled.returncode == 1, drilled.stdout
    assert f"VERIFY FAILED: drill of {key}: age not found on PATH" in drilled.stdout
    assert "drill: restoring" not in drilled.stdout
    for result in (restored, drilled):
        assert "Traceback" not in result.stdout + result.stderr
    assert pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%'") == ""


BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def plugin_identity(plugin: str, payload: bytes) -> str:
    """An age plugin identity (``AGE-PLUGIN-NAME-1...``, bech32), as ``age-plugin-yubikey``
    and others write them."""
    hrp = f"age-plugin-{plugin}-"
    bits = "".join(f"{byte:08b}" for byte in payload)
    bits += "0" * (-len(bits) % 5)
    data = [int(bits[i : i + 5], 2) for i in range(0, len(bits), 5)]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    checksum = 1
    for value in expanded + data + [0] * 6:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(
            (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
        ):
            checksum ^= generator if (top >> bit) & 1 else 0
    checksum ^= 1
    data += [(checksum >> 5 * (5 - i)) & 31 for i in range(6)]
    return (hrp + "1" + "".join(BECH32[value] for value in data)).upper()


def test_an_identity_whose_plugin_is_missing_leaves_the_database_clean_would_replace(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, keys: dict[str, Any], tmp_path: Path
) -> None:
    """A plugin identity (a YubiKey's, say) on a host without its plugin: age fails before
    any plaintext with the object intact, which is no damage to look past: ``restore --clean``
    keeps the existing database and a drill creates no scratch database."""
    _, env, key = encrypted_backup(pg, moto_url, s3, bucket, keys)
    victim = unique("victim")
    pg.create_database(victim, "CREATE TABLE precious (x int); INSERT INTO precious VALUES (42);")
    identity = tmp_path / "yubikey.txt"
    identity.write_text(plugin_identity("nosuch", bytes(range(32))) + "\n")
    prefix = unique("drill").lower() + "_"

    restored, drilled = restore_and_drill(env, identity, victim, prefix)

    assert restored.returncode == 1, restored.stdout
    assert pg.psql("SELECT x FROM precious", victim).strip() == "42"
    assert f"restore FAILED: age could not decrypt {key}: " in restored.stdout
    assert "plugin" in restored.stdout and "dropping" not in restored.stdout
    assert drilled.returncode == 1, drilled.stdout
    assert f"VERIFY FAILED: drill of {key}: age could not decrypt {key}: " in drilled.stdout
    assert "drill: restoring" not in drilled.stdout
    for result in (restored, drilled):
        assert "Traceback" not in result.stdout + result.stderr
    assert pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%'") == ""


def test_mariadb_encrypted_round_trip_and_a_tampered_object_is_a_checksum_mismatch(
    mariadb: MariaDBServer,
    moto_url: str,
    s3: Any,
    bucket: str,
    keys: dict[str, Any],
    tmp_path: Path,
) -> None:
    database = unique("shop")
    mariadb.create_database(database, (DATA / "mariadb_sample.sql").read_text())
    env = {
        **mariadb_env(mariadb, database),
        **storage_env(moto_url, bucket),
        "ENCRYPTION_RECIPIENTS": keys["key_public"],
        "ENCRYPTION_IDENTITY_FILE": str(keys["key"]),
    }
    assert run_backupd("once", env=env).returncode == 0
    restored = unique("restored")

    result = run_backupd("restore", "--into", restored, env=env)
    to_file = run_backupd("restore", "--to-file", str(tmp_path / "shop.sql"), env=env)
    key = only_backup_key(s3, bucket)
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.delete_object(Bucket=bucket, Key=key)
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    tampered = run_backupd("restore", "--to-file", str(tmp_path / "bad.sql"), env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert mariadb.plain_dump(restored) == mariadb.plain_dump(database)
    assert to_file.returncode == 0, to_file.stdout + to_file.stderr
    assert b"CREATE TABLE `customers`" in (tmp_path / "shop.sql").read_bytes()
    assert tampered.returncode == 1
    assert f"checksum mismatch for {key}" in tampered.stdout
    assert not (tmp_path / "bad.sql").exists()


def test_sql_server_restore_decrypts_the_bak_onto_the_volume(
    sqlcmd: dict[str, Any], moto_url: str, bucket: str, keys: dict[str, Any]
) -> None:
    env = mssql_env(sqlcmd, moto_url, bucket, ENCRYPTION_RECIPIENTS=keys["key_public"])
    assert run_backupd("once", env=env).returncode == 0

    result = run_backupd("restore", "--into", "shop_copy", "--identity", str(keys["key"]), env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (sqlcmd["bin"] / "restored.bak").read_bytes() == random.Random(7).randbytes(SIZE)
    assert list(sqlcmd["shared"].iterdir()) == []


def test_sql_server_bak_is_deleted_when_an_encrypted_backup_is_cancelled(
    sqlcmd: dict[str, Any], proxy: FaultProxy, s3: Any, bucket: str, keys: dict[str, Any]
) -> None:
    proxy.part_delay = 1.0  # the first part is held back: the SIGTERM comes mid-upload
    env = mssql_env(
        sqlcmd,
        proxy.url,
        bucket,
        ENCRYPTION_RECIPIENTS=keys["key_public"],
        STORAGE_UPLOAD_CONCURRENCY="1",
    )
    process = start_backupd(env)
    wait_until(lambda: len(proxy.part_sizes()) >= 1, 30, "a part upload")

    process.send_signal(signal.SIGTERM)
    result = finish(process)

    assert result.returncode == 1
    assert "interrupted" in result.stdout
    assert bucket_state(s3, bucket) == ([], [])
    assert list(sqlcmd["shared"].iterdir()) == []
    assert age_processes(keys["key_public"]) == []


def test_the_identity_is_never_needed_by_once_and_never_in_argv_env_logs_or_mails(
    pg: PostgresServer,
    big_pg_database: str,
    moto_url: str,
    s3: Any,
    bucket: str,
    keys: dict[str, Any],
    smtp: tuple[int, Inbox],
) -> None:
    port, inbox = smtp
    secret = next(
        line for line in keys["key"].read_text().splitlines() if line.startswith("AGE-SECRET")
    )
    env = {
        **pg_env(pg, big_pg_database),
        **storage_env(moto_url, bucket),
        **mail_env(port),
        "COMPRESSION": "none",
        "LOG_LEVEL": "DEBUG",
        "ENCRYPTION_RECIPIENTS": keys["key_public"],
    }
    backed_up = run_backupd(
        "once", env={**env, "ENCRYPTION_IDENTITY_FILE": str(keys["key"].with_name("absent"))}
    )
    restored = unique("restored")

    with ProcessWatcher(every_environment=True) as watcher:
        result = watcher.run("restore", "--into", restored, "--identity", str(keys["key"]), env=env)

    assert backed_up.returncode == 0, backed_up.stdout + backed_up.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(a[:2] == ("age", "--decrypt") for a in watcher.argvs()), "age was never seen"
    assert not any(secret in arg for argv in watcher.argvs() for arg in argv)
    assert not any(
        secret in value for env in watcher.environments.values() for value in env.values()
    )
    assert inbox.raw
    for text in (backed_up.stdout, backed_up.stderr, result.stdout, result.stderr, *inbox.raw):
        assert secret not in (text if isinstance(text, str) else text.decode(errors="replace"))


def age_processes(recipient: str) -> list[int]:
    """Live age processes encrypting to ``recipient``."""
    return [
        pid
        for pid, argv in cmdlines().items()
        if argv and Path(argv[0]).name == "age" and recipient in argv
    ]


@pytest.mark.parametrize(
    ("stop", "said"),
    [
        ("sigterm", "interrupted"),
        ("kill age", "FAILED at encrypt: age exited with status 9 (killed by SIGKILL)"),
        ("kill pg_dump", "FAILED at dump: pg_dump exited with status 9 (killed by SIGKILL)"),
    ],
)
def test_a_stopped_encrypted_backup_leaves_no_child_and_stores_nothing(
    pg: PostgresServer,
    big_pg_database: str,
    proxy: FaultProxy,
    s3: Any,
    bucket: str,
    keys: dict[str, Any],
    stop: str,
    said: str,
) -> None:
    recipient = keys["key_public"]
    env = {
        **slow_upload_env(pg, big_pg_database, proxy, bucket),
        "ENCRYPTION_RECIPIENTS": recipient,
    }
    process = start_backupd(env)
    wait_until(
        lambda: len(proxy.part_sizes()) >= 1 and age_processes(recipient) != [],
        30,
        "a part upload while age runs",
    )

    if stop == "sigterm":
        process.send_signal(signal.SIGTERM)
    for pid in age_processes(recipient) if stop == "kill age" else []:
        os.kill(pid, signal.SIGKILL)
    for pid in dump_processes(big_pg_database) if stop == "kill pg_dump" else []:
        os.kill(pid, signal.SIGKILL)
    result = finish(process)

    assert result.returncode == 1
    assert said in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert bucket_state(s3, bucket) == ([], [])
    assert age_processes(recipient) == []
    assert dump_processes(big_pg_database) == []


def test_a_damaged_header_is_a_checksum_mismatch_not_a_wrong_identity(
    mariadb: MariaDBServer, moto_url: str, s3: Any, bucket: str, keys: dict[str, Any]
) -> None:
    """A flipped byte in the age header's recipient stanza makes age answer "no identity
    matched", as for a wrong key: the one identity the backup was made for was called
    unable to decrypt it. Where the identity is a recorded recipient, the object is damaged,
    and the restore says so; another identity is still a wrong identity, in one line."""
    database = unique("shop")
    mariadb.create_database(database, "CREATE TABLE t (n INT); INSERT INTO t VALUES (1);")
    env = {
        **mariadb_env(mariadb, database),
        **storage_env(moto_url, bucket),
        "ENCRYPTION_RECIPIENTS": keys["key_public"],
    }
    assert run_backupd("once", env=env).returncode == 0
    key = only_backup_key(s3, bucket)
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    # The wrapped file key: the line after "-> X25519 <share>", in unpadded base64. Another
    # base64 letter keeps the header well-formed; only the unwrapping fails.
    wrapped = body.index(b"\n", body.index(b"\n-> X25519 ") + 1) + 1
    body[wrapped] = ord("B") if body[wrapped] != ord("B") else ord("C")
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    restored, other = unique("restored"), unique("other")

    damaged = run_backupd("restore", "--into", restored, "--identity", str(keys["key"]), env=env)
    wrong = run_backupd("restore", "--into", other, "--identity", str(keys["other"]), env=env)

    assert damaged.returncode == 1, damaged.stdout + damaged.stderr
    assert f"checksum mismatch for {key}" in damaged.stdout
    assert "none of the identities" not in damaged.stdout
    assert wrong.returncode == 1
    assert f"none of the identities in {keys['other']} can decrypt {key}" in wrong.stdout
    for name in (restored, other):
        assert not mariadb.root_sql(f"SHOW DATABASES LIKE '{name}'")
