"""DB_SSL_*: the rules the loader enforces (one problem line naming the variable), what each
engine's tools are given, and the warning about libpq's own variables, which never reach them."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import pytest

from backupd.config import DatabaseConfig, Engine, SSLMode
from backupd.environment import load_settings, load_target
from backupd.errors import ConfigError
from backupd.sources.mysql import option_file, tls_options
from backupd.sources.postgres import libpq_env
from backupd.variables import unknown_variables

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY_TEXT = "-----BEGIN PRIVATE KEY-----\nKEY-SECRET-c0ffee\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A CA, a client certificate and its key, as paths."""
    (tmp_path / "ca.pem").write_text(PEM)
    (tmp_path / "client.pem").write_text(PEM)
    (tmp_path / "client.key").write_text(KEY_TEXT)
    return {name: str(tmp_path / name) for name in ("ca.pem", "client.pem", "client.key")}


def env_for(engine: str = "postgres", **tls: str) -> dict[str, str]:
    return {
        "DB_TYPE": engine,
        "DB_HOST": "db.internal",
        "DB_USER": "backup",
        "DB_DATABASE": "app",
        "STORAGE_BUCKET_NAME": "my-backups",
        **tls,
    }


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return caught.value.problems


def only_problem(env: dict[str, str]) -> str:
    problems = problems_of(env)
    assert len(problems) == 1, problems
    return problems[0]


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_a_verifying_mode_needs_a_ca(mode: str) -> None:
    problem = only_problem(env_for(DB_SSL_MODE=mode))

    assert problem == (
        f"DB_SSL_CA: required for DB_SSL_MODE={mode} (the CA certificate the server's must "
        "chain to)"
    )


def test_a_mode_that_is_not_one_of_the_five_is_quoted_in_its_problem() -> None:
    problem = only_problem(env_for(DB_SSL_MODE="allow"))

    assert problem.startswith("DB_SSL_MODE: must be 'disable', 'prefer', 'require', ")
    assert "(got 'allow')" in problem


def test_a_mode_is_read_in_any_case_and_between_blanks(files: dict[str, str]) -> None:
    env = env_for(DB_SSL_MODE=" Verify-Full", DB_SSL_CA=files["ca.pem"])

    database = load_target(env).database

    assert database.ssl_mode is SSLMode.VERIFY_FULL
    assert database.ssl_ca == Path(files["ca.pem"])


@pytest.mark.parametrize("variable", ["DB_SSL_CA", "DB_SSL_CERT", "DB_SSL_KEY"])
def test_a_file_that_does_not_exist_is_a_problem(variable: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    env = env_for(DB_SSL_MODE="verify-full", DB_SSL_CA=str(missing))
    env |= {"DB_SSL_CERT": str(missing), "DB_SSL_KEY": str(missing)}

    problems = problems_of(env)

    assert f"{variable}: {missing} does not exist" in problems


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    problem = only_problem(env_for(DB_SSL_MODE="verify-full", DB_SSL_CA=str(tmp_path)))

    assert problem == f"DB_SSL_CA: {tmp_path} is a folder, not a file"


def test_a_file_backupd_may_not_read_is_a_problem(
    files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run as root, the suite cannot take a read right away: the open is refused instead."""
    real_open = Path.open

    def refusing(self: Path, *args: Any, **kwargs: Any) -> Any:
        if str(self) == files["client.key"]:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing)
    env = env_for(DB_SSL_CERT=files["client.pem"], DB_SSL_KEY=files["client.key"])

    problem = only_problem(env)

    assert problem == f"DB_SSL_KEY: cannot read {files['client.key']}: Permission denied"


def test_a_ca_file_holding_no_pem_certificate_is_a_problem(files: dict[str, str]) -> None:
    env = env_for(DB_SSL_MODE="verify-full", DB_SSL_CA=files["client.key"])

    problem = only_problem(env)

    assert problem.startswith(f"DB_SSL_CA: {files['client.key']} holds no PEM certificate")
    assert "KEY-SECRET" not in problem


@pytest.mark.parametrize("given", ["DB_SSL_CERT", "DB_SSL_KEY"])
def test_a_client_certificate_needs_its_key_and_the_key_its_certificate(
    given: str, files: dict[str, str]
) -> None:
    path = files["client.pem"] if given == "DB_SSL_CERT" else files["client.key"]

    problem = only_problem(env_for(**{given: path}))

    assert problem == "DB_SSL_CERT: set both DB_SSL_CERT and DB_SSL_KEY, or neither"


@pytest.mark.parametrize("mode", [None, "disable", "prefer", "require"])
def test_a_ca_without_a_verifying_mode_is_a_problem(
    mode: str | None, files: dict[str, str]
) -> None:
    """libpq's prefer with a root certificate checks the chain, and when that fails connects
    again without TLS (tested): a CA that verifies nothing is refused rather than trusted."""
    env = env_for(DB_SSL_CA=files["ca.pem"]) | ({"DB_SSL_MODE": mode} if mode else {})

    problem = only_problem(env)

    assert problem == (
        "DB_SSL_CA: used only with DB_SSL_MODE=verify-ca or verify-full "
        f"(DB_SSL_MODE is {mode or 'unset'})"
    )


def test_a_client_certificate_with_tls_disabled_is_a_problem(files: dict[str, str]) -> None:
    env = env_for(DB_SSL_MODE="disable", DB_SSL_CERT=files["client.pem"])
    env["DB_SSL_KEY"] = files["client.key"]

    assert only_problem(env) == (
        "DB_SSL_CERT: a client certificate needs TLS, which DB_SSL_MODE=disable turns off"
    )


@pytest.mark.parametrize("variable", ["DB_SSL_MODE", "DB_SSL_CA"])
def test_sql_server_takes_no_db_ssl_setting(variable: str, files: dict[str, str]) -> None:
    value = "require" if variable == "DB_SSL_MODE" else files["ca.pem"]

    problems = problems_of(env_for("mssql", **{variable: value}))

    assert problems == [
        f"{variable}: not used for DB_TYPE=mssql (sqlcmd takes no such settings; see "
        "MSSQL_TRUST_SERVER_CERTIFICATE)"
    ]


@pytest.mark.parametrize("engine", ["mariadb", "mysql"])
@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("require", "require cannot be enforced by the MariaDB client tools"),
        ("verify-ca", "verify-ca cannot be had with the MariaDB client tools"),
    ],
)
def test_modes_the_mariadb_client_cannot_enforce_are_refused(
    engine: str, mode: str, says: str, files: dict[str, str]
) -> None:
    env = env_for(engine, DB_SSL_MODE=mode)
    if mode == "verify-ca":
        env["DB_SSL_CA"] = files["ca.pem"]

    problem = only_problem(env)

    assert problem.startswith(f"DB_SSL_MODE: {says}")


def test_a_named_targets_settings_are_read_and_named_with_its_prefix(
    files: dict[str, str], tmp_path: Path
) -> None:
    env = env_for(BACKUPD_TARGETS="orders,billing", ORDERS_DB_SSL_MODE="verify-full")
    env |= {"ORDERS_DB_SSL_CA": files["ca.pem"], "BILLING_DB_SSL_MODE": "verify-full"}

    assert problems_of(env) == [
        "BILLING_DB_SSL_CA or DB_SSL_CA: required for DB_SSL_MODE=verify-full (the CA "
        "certificate the server's must chain to)"
    ]
    env["BILLING_DB_SSL_CA"] = str(tmp_path / "gone.pem")
    assert problems_of(env) == [f"BILLING_DB_SSL_CA: {tmp_path / 'gone.pem'} does not exist"]
    del env["BILLING_DB_SSL_CA"]
    env["DB_SSL_CA"] = files["ca.pem"]
    orders, billing = load_settings(env).targets
    assert (orders.database.ssl_mode, billing.database.ssl_mode) == (SSLMode.VERIFY_FULL,) * 2
    assert orders.database.ssl_ca == billing.database.ssl_ca == Path(files["ca.pem"])


def test_no_setting_leaves_every_tool_its_own_defaults() -> None:
    database = load_target(env_for()).database

    assert not {"PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY"} & set(
        libpq_env(database, "app")
    )
    assert tls_options(database) == ()


def config(engine: Engine, mode: SSLMode | None, files: dict[str, str]) -> DatabaseConfig:
    raw = {"DB_TYPE": engine, "DB_HOST": "db", "DB_USER": "u", "DB_DATABASE": "app"}
    if mode is not None:
        raw["DB_SSL_MODE"] = mode
    if mode is not None and mode.verifies:
        raw["DB_SSL_CA"] = files["ca.pem"]
    return DatabaseConfig.model_validate(raw)


@pytest.mark.parametrize("mode", list(SSLMode))
def test_libpq_gets_the_mode_and_the_files_by_path(mode: SSLMode, files: dict[str, str]) -> None:
    database = config(Engine.POSTGRES, mode, files).model_copy(
        update={"ssl_cert": Path(files["client.pem"]), "ssl_key": Path(files["client.key"])}
    )

    env = libpq_env(database, "app")

    assert env["PGSSLMODE"] == mode.value
    assert env.get("PGSSLROOTCERT") == (files["ca.pem"] if mode.verifies else None)
    assert (env["PGSSLCERT"], env["PGSSLKEY"]) == (files["client.pem"], files["client.key"])
    assert "KEY-SECRET" not in repr(env)


@pytest.mark.parametrize(
    ("mode", "lines"),
    [
        (SSLMode.DISABLE, ["skip-ssl"]),
        (SSLMode.PREFER, ["ssl"]),
        (SSLMode.VERIFY_FULL, ["ssl", "ssl-verify-server-cert", 'ssl-ca="{ca}"']),
        # Refused by the loader; were they given, the stricter verify-full options.
        (SSLMode.REQUIRE, ["ssl", "ssl-verify-server-cert"]),
        (SSLMode.VERIFY_CA, ["ssl", "ssl-verify-server-cert", 'ssl-ca="{ca}"']),
    ],
)
def test_mariadb_options_per_mode(mode: SSLMode, lines: list[str], files: dict[str, str]) -> None:
    options = tls_options(config(Engine.MARIADB, mode, files))

    assert list(options) == [line.format(ca=files["ca.pem"]) for line in lines]


def test_mariadb_option_file_paths_are_quoted_so_a_parser_reads_them_back(tmp_path: Path) -> None:
    odd = tmp_path / 'a "b" #c\\d.pem'
    odd.write_text(PEM)
    database = DatabaseConfig.model_validate(
        {"DB_TYPE": "mariadb", "DB_HOST": "db", "DB_USER": "u", "DB_DATABASE": "app"}
    ).model_copy(update={"ssl_cert": odd, "ssl_key": odd})

    text = option_file("pw", tls_options(database)).decode()

    parser = configparser.ConfigParser(interpolation=None, allow_no_value=True)
    parser.read_string(text)
    raw = parser["client"]["ssl-cert"]
    assert raw[1:-1].replace('\\"', '"').replace("\\\\", "\\") == str(odd)


@pytest.mark.parametrize(
    ("name", "instead"),
    [
        ("PGSSLMODE", "DB_SSL_MODE"),
        ("PGSSLROOTCERT", "DB_SSL_CA"),
        ("PGSSLCERT", "DB_SSL_CERT"),
        ("PGSSLKEY", "DB_SSL_KEY"),
    ],
)
def test_libpq_tls_variables_are_warned_about_with_their_db_ssl_name(
    name: str, instead: str
) -> None:
    warnings = unknown_variables({name: "verify-full"})

    assert warnings == [
        f"{name} is not passed to pg_dump, psql or pg_restore (backupd gives them only its "
        f"own settings): set {instead} instead"
    ]


def test_other_libpq_variables_are_still_left_alone() -> None:
    assert unknown_variables({"PGHOST": "db", "PGAPPNAME": "x"}) == []
