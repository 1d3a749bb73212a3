"""TLS to the database (DB_SSL_*) against servers that accept TLS connections only: a verified
backup and restore, and each way verification fails, as one line with nothing left behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    TLSSetup,
    bucket_state,
    mariadb_env,
    pg_env,
    run_backupd,
    storage_env,
    unique,
)
from tests.servers import CERTIFIED_USER, OTHER_LOOPBACK, MariaDBServer, PostgresServer

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(params=["postgres", "mariadb"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def tls_target(
    engine: str, request: pytest.FixtureRequest, database: str, **extra: str
) -> tuple[dict[str, str], PostgresServer | MariaDBServer]:
    """The DB_* variables of ``engine``'s TLS-only server, with a database made for the test
    (its sample schema) unless ``database`` names one that exists."""
    server: PostgresServer | MariaDBServer
    if engine == "postgres":
        server = request.getfixturevalue("pg_tls")
        sample = (DATA / "postgres_sample.sql").read_text()
        env = pg_env(server, database, **extra)
    else:
        server = request.getfixturevalue("mariadb_tls")
        sample = (DATA / "mariadb_sample.sql").read_text()
        env = mariadb_env(server, database, **extra)
    server.create_database(database, sample)
    return env, server


def client_certificate(tls: TLSSetup) -> dict[str, str]:
    return {
        "DB_USER": CERTIFIED_USER,
        "DB_SSL_CERT": str(tls.client.cert),
        "DB_SSL_KEY": str(tls.client.key),
    }


def verified(tls: TLSSetup, ca: Path | None = None) -> dict[str, str]:
    return {"DB_SSL_MODE": "verify-full", "DB_SSL_CA": str(ca or tls.server.ca)}


def assert_one_line_failure(result: Any, says: str) -> None:
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert result.returncode == 1, output
    assert len(errors) == 1, output
    assert says in errors[0], output
    assert "Traceback" not in output and " WARNING " not in output, output


def test_verify_full_with_the_right_ca_backs_up_and_restores(
    engine: str,
    request: pytest.FixtureRequest,
    tls_setup: TLSSetup,
    moto_url: str,
    s3: Any,
    bucket: str,
) -> None:
    """As ``CERTIFIED_USER``, who cannot log in without the client certificate: every tool of
    the backup and the restore got the settings."""
    database = unique("tls")
    db_env, server = tls_target(engine, request, database, **verified(tls_setup))
    env = {**db_env, **storage_env(moto_url, bucket), **client_certificate(tls_setup)}

    backup = run_backupd("once", env=env)
    restored = unique("back")
    restore = run_backupd("restore", "--database", database, "--into", restored, env=env)

    for result in (backup, restore):
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert " WARNING " not in output, output
    assert server.plain_dump(restored) == server.plain_dump(database)


@pytest.mark.parametrize(
    ("engine", "says"),
    [
        ("postgres", "SSL error: certificate verify failed"),
        ("mariadb", "TLS/SSL error: self-signed certificate in certificate chain"),
    ],
)
def test_verify_full_with_another_ca_fails_in_one_line_and_stores_nothing(
    engine: str,
    says: str,
    request: pytest.FixtureRequest,
    tls_setup: TLSSetup,
    moto_url: str,
    s3: Any,
    bucket: str,
) -> None:
    db_env, _ = tls_target(
        engine, request, unique("tls"), **verified(tls_setup, tls_setup.wrong_ca)
    )

    result = run_backupd("once", env={**db_env, **storage_env(moto_url, bucket)})

    assert_one_line_failure(result, says)
    assert "cannot log in to" in result.stdout + result.stderr
    assert bucket_state(s3, bucket) == ([], [])


@pytest.mark.parametrize(
    ("engine", "says"),
    [
        ("postgres", 'rejects connection for host "127.0.0.1", user "backupd"'),
        ("mariadb", "(DB_SSL_MODE=disable: a server or user requiring TLS refuses it so too)"),
    ],
)
def test_disable_against_a_tls_only_server_fails_clearly(
    engine: str, says: str, request: pytest.FixtureRequest, moto_url: str, s3: Any, bucket: str
) -> None:
    db_env, _ = tls_target(engine, request, unique("tls"), DB_SSL_MODE="disable")

    result = run_backupd("once", env={**db_env, **storage_env(moto_url, bucket)})

    assert_one_line_failure(result, says)
    assert bucket_state(s3, bucket) == ([], [])


@pytest.mark.parametrize(
    ("engine", "says"),
    [
        ("postgres", f'does not match host name "{OTHER_LOOPBACK}"'),
        ("mariadb", "TLS/SSL error: Validation of SSL server certificate failed"),
    ],
)
def test_verify_full_refuses_a_certificate_for_another_host_name(
    engine: str,
    says: str,
    request: pytest.FixtureRequest,
    tls_setup: TLSSetup,
    moto_url: str,
    s3: Any,
    bucket: str,
) -> None:
    """The server's certificate names 127.0.0.1 and localhost; it is reached as 127.0.0.2."""
    db_env, _ = tls_target(engine, request, unique("tls"), **verified(tls_setup))
    db_env["DB_HOST"] = OTHER_LOOPBACK

    result = run_backupd("once", env={**db_env, **storage_env(moto_url, bucket)})

    assert_one_line_failure(result, says)
    assert bucket_state(s3, bucket) == ([], [])


def test_verify_ca_takes_a_certificate_for_another_host_name_on_postgres(
    request: pytest.FixtureRequest, tls_setup: TLSSetup, moto_url: str, s3: Any, bucket: str
) -> None:
    """verify-full refuses it, verify-ca checks the chain only. The MariaDB client cannot
    skip the host name while enforcing TLS: the loader refuses verify-ca there (unit tests)."""
    db_env, _ = tls_target("postgres", request, unique("tls"), **verified(tls_setup))
    env = {**db_env, **storage_env(moto_url, bucket), "DB_HOST": OTHER_LOOPBACK}

    full = run_backupd("once", env=env)
    chain_only = run_backupd("once", env={**env, "DB_SSL_MODE": "verify-ca"})

    assert full.returncode == 1, full.stdout + full.stderr
    assert chain_only.returncode == 0, chain_only.stdout + chain_only.stderr
    assert len(bucket_state(s3, bucket)[0]) == 2  # one backup and its manifest


def test_a_client_certificate_logs_in_where_one_is_required(
    engine: str, request: pytest.FixtureRequest, tls_setup: TLSSetup, moto_url: str, bucket: str
) -> None:
    """``CERTIFIED_USER`` needs a certificate signed by the CA (and, on PostgreSQL, naming it):
    refused without DB_SSL_CERT, let in with it."""
    db_env, _ = tls_target(engine, request, unique("tls"), **verified(tls_setup))
    env = {**db_env, **storage_env(moto_url, bucket), **client_certificate(tls_setup)}

    without = run_backupd("check", env={**env, "DB_SSL_CERT": "", "DB_SSL_KEY": ""})
    with_it = run_backupd("check", env=env)

    assert without.returncode == 1, without.stdout + without.stderr
    assert with_it.returncode == 0, with_it.stdout + with_it.stderr


def test_check_reports_a_certificate_that_does_not_verify_as_one_fail_line(
    engine: str, request: pytest.FixtureRequest, tls_setup: TLSSetup, moto_url: str, bucket: str
) -> None:
    db_env, _ = tls_target(
        engine, request, unique("tls"), **verified(tls_setup, tls_setup.wrong_ca)
    )

    result = run_backupd("check", env={**db_env, **storage_env(moto_url, bucket)})

    output = result.stdout + result.stderr
    failed = [line for line in output.splitlines() if line.startswith("FAIL")]
    assert result.returncode == 1, output
    assert len(failed) == 1, output
    assert failed[0].startswith("FAIL default connect: cannot log in to"), output
    assert "certificate" in failed[0], output
    assert "Traceback" not in output


def test_libpq_tls_variables_in_the_env_file_are_warned_about(
    pg: PostgresServer, moto_url: str, bucket: str, tmp_path: Path
) -> None:
    """Written for the older tool, which passed its environment on: here they change nothing,
    and every start says so."""
    (tmp_path / ".env").write_text("PGSSLMODE=verify-full\nPGSSLROOTCERT=/etc/ssl/db.pem\n")
    database = unique("plain")
    pg.create_database(database)

    result = run_backupd("once", env={**pg_env(pg, database), **storage_env(moto_url, bucket)})

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "PGSSLMODE is not passed to pg_dump, psql or pg_restore" in output
    assert "set DB_SSL_MODE instead" in output
    assert "PGSSLROOTCERT is not passed" in output and "set DB_SSL_CA instead" in output
