from __future__ import annotations

from pathlib import Path

import pytest

from backupd.config import (
    MIB,
    Compression,
    Engine,
    LocalConfig,
    LogConfig,
    RowCounts,
    S3Config,
    StorageType,
)
from backupd.environment import load_settings, load_target, read_environment
from backupd.errors import ConfigError

MINIMAL = {
    "DB_HOST": "db.internal",
    "DB_USER": "backup",
    "DB_PASSWORD": "pw-Secret-42",
    "DB_DATABASE": "app",
    "STORAGE_BUCKET_NAME": "my-backups",
    "STORAGE_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "STORAGE_SECRET_ACCESS_KEY": "storage-Secret-99",
}


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_target(env)
    return caught.value.problems


def test_seed_env_gives_postgres_to_s3_with_defaults() -> None:
    target = load_target(MINIMAL)

    assert target.database.engine is Engine.POSTGRES
    assert target.database.effective_port == 5432
    assert isinstance(target.storage, S3Config)
    assert target.storage.kind is StorageType.S3
    assert target.storage.region == "us-east-1"
    assert target.storage.part_size == 8 * MIB
    assert target.storage.upload_concurrency == 2
    assert target.layout.folder == "backups"
    assert target.layout.timezone == "UTC"
    assert target.layout.compression is Compression.AUTO


@pytest.mark.parametrize(
    ("engine", "port"), [("postgres", 5432), ("mysql", 3306), ("mariadb", 3306)]
)
def test_port_defaults_by_engine(engine: str, port: int) -> None:
    assert load_target({**MINIMAL, "DB_TYPE": engine}).database.effective_port == port


def test_every_problem_is_reported_at_once_naming_its_variable() -> None:
    env = {
        "DB_TYPE": "oracle",
        "DB_PORT": "99999",
        "STORAGE_TYPE": "s3",
        "STORAGE_PART_SIZE": "1MiB",
        "TIMEZONE": "Mars/Olympus",
        "COMPRESSION": "brotli",
    }

    problems = problems_of(env)

    named = {p.split(":", 1)[0] for p in problems}
    assert {
        "DB_TYPE",
        "DB_PORT",
        "DB_HOST",
        "DB_USER",
        "DB_DATABASE",
        "STORAGE_BUCKET_NAME",
        "STORAGE_PART_SIZE",
        "TIMEZONE",
        "COMPRESSION",
    } <= named
    assert all("\n" not in p for p in problems)


def test_r2_needs_an_endpoint_and_keys_and_always_uses_region_auto() -> None:
    env = {k: v for k, v in MINIMAL.items() if not k.startswith("STORAGE_ACCESS")}
    problems = problems_of({**env, "STORAGE_TYPE": "r2", "STORAGE_REGION": "eu-west-1"})
    assert any(p.startswith("STORAGE_ENDPOINT_URL: required for STORAGE_TYPE=r2") for p in problems)
    assert any(p.startswith("STORAGE_ACCESS_KEY_ID:") for p in problems)

    target = load_target(
        {
            **MINIMAL,
            "STORAGE_TYPE": "r2",
            "STORAGE_ENDPOINT_URL": "https://acc.r2.cloudflarestorage.com",
        }
    )
    assert isinstance(target.storage, S3Config)
    assert target.storage.region == "auto"
    assert not target.storage.is_aws


def test_half_a_key_pair_is_refused() -> None:
    env = {k: v for k, v in MINIMAL.items() if k != "STORAGE_SECRET_ACCESS_KEY"}
    assert any(
        "set both STORAGE_ACCESS_KEY_ID and STORAGE_SECRET_ACCESS_KEY" in p
        for p in problems_of(env)
    )


def test_no_keys_at_all_means_the_default_aws_chain() -> None:
    env = {
        k: v for k, v in MINIMAL.items() if not k.startswith("STORAGE_ACCESS") and "SECRET" not in k
    }
    storage = load_target(env).storage
    assert isinstance(storage, S3Config)
    assert storage.access_key_id is None
    assert storage.is_aws


def test_local_storage_needs_a_path() -> None:
    assert problems_of({**MINIMAL, "STORAGE_TYPE": "local"}) == [
        "STORAGE_LOCAL_PATH: required but not set"
    ]
    target = load_target({**MINIMAL, "STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": "/backups"})
    assert isinstance(target.storage, LocalConfig)
    assert target.storage.path == Path("/backups")


@pytest.mark.parametrize(
    ("raw", "size"),
    [("16MiB", 16 * MIB), ("5 MiB", 5 * MIB), ("67108864", 64 * MIB), ("1GiB", 1024 * MIB)],
)
def test_part_size_accepts_human_sizes(raw: str, size: int) -> None:
    storage = load_target({**MINIMAL, "STORAGE_PART_SIZE": raw}).storage
    assert storage.part_size == size


@pytest.mark.parametrize("raw", ["4MiB", "6GiB", "lots"])
def test_part_size_outside_s3_limits_is_refused(raw: str) -> None:
    assert [p.split(":")[0] for p in problems_of({**MINIMAL, "STORAGE_PART_SIZE": raw})] == [
        "STORAGE_PART_SIZE"
    ]


@pytest.mark.parametrize(
    ("raw", "folder"),
    [("backups/", "backups"), ("/a/b/", "a/b"), ("", "backups"), ("nightly", "nightly")],
)
def test_destination_folder_is_normalised(raw: str, folder: str) -> None:
    assert load_target({**MINIMAL, "STORAGE_DESTINATION_FOLDER": raw}).layout.folder == folder


@pytest.mark.parametrize("raw", ["../escape", "a//b", "a/./b"])
def test_destination_folder_must_be_a_plain_path(raw: str) -> None:
    problems = problems_of({**MINIMAL, "STORAGE_DESTINATION_FOLDER": raw})
    assert [p.split(":")[0] for p in problems] == ["STORAGE_DESTINATION_FOLDER"]


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "db").write_text("from-file-pw\n")
    (tmp_path / "key").write_text("from-file-key")
    env = {
        k: v for k, v in MINIMAL.items() if k not in {"DB_PASSWORD", "STORAGE_SECRET_ACCESS_KEY"}
    }
    env |= {
        "DB_PASSWORD_FILE": str(tmp_path / "db"),
        "STORAGE_SECRET_ACCESS_KEY_FILE": str(tmp_path / "key"),
    }

    target = load_target(env)

    assert target.database.password is not None
    assert target.database.password.get_secret_value() == "from-file-pw"
    assert isinstance(target.storage, S3Config)
    assert target.storage.secret_access_key is not None
    assert target.storage.secret_access_key.get_secret_value() == "from-file-key"


def test_secret_file_problems_are_named(tmp_path: Path) -> None:
    problems = problems_of({**MINIMAL, "DB_PASSWORD_FILE": str(tmp_path / "db")})
    assert problems == ["DB_PASSWORD: set either DB_PASSWORD or DB_PASSWORD_FILE, not both"]

    env = {k: v for k, v in MINIMAL.items() if k != "DB_PASSWORD"}
    problems = problems_of({**env, "DB_PASSWORD_FILE": str(tmp_path / "missing")})
    assert len(problems) == 1
    assert problems[0].startswith(f"DB_PASSWORD_FILE: cannot read {tmp_path / 'missing'}")


def test_secrets_never_show_in_repr_or_errors() -> None:
    target = load_target(MINIMAL)
    text = repr(target) + str(target) + target.model_dump_json()
    assert "pw-Secret-42" not in text
    assert "storage-Secret-99" not in text

    problems = problems_of({**MINIMAL, "DB_PASSWORD": "pw-Secret-42", "DB_PORT": "pw-Secret-42"})
    assert "pw-Secret-42" not in " ".join(problems)


def test_dotenv_file_is_read_and_real_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        'DB_HOST=from-file\nDB_USER="quoted user"\n# a comment\nexport DB_DATABASE=app\n'
    )

    merged = read_environment({"DB_HOST": "from-env"}, dotenv)

    assert merged == {"DB_HOST": "from-env", "DB_USER": "quoted user", "DB_DATABASE": "app"}
    assert read_environment({"A": "1"}, tmp_path / "absent") == {"A": "1"}


def test_named_targets_fall_back_to_the_shared_variables() -> None:
    env = {
        **MINIMAL,
        "BACKUPD_TARGETS": "orders, billing",
        "ORDERS_DB_DATABASE": "orders",
        "BILLING_DB_HOST": "billing-db",
        "BILLING_DB_TYPE": "mariadb",
        "BILLING_CRON_SCHEDULE": "*/5 * * * * *",
        "MAX_CONCURRENT_BACKUPS": "3",
    }

    settings = load_settings(env)

    orders, billing = settings.targets
    assert (orders.name, orders.database.database, orders.database.host) == (
        "orders",
        "orders",
        "db.internal",
    )
    assert (billing.name, billing.database.database, billing.database.host) == (
        "billing",
        "app",
        "billing-db",
    )
    assert billing.database.effective_port == 3306
    assert billing.schedule.cron == "*/5 * * * * *"
    assert orders.schedule.cron == "0 */12 * * *"
    assert orders.schedule.run_on_startup is True
    assert orders.key_prefix == "backups/orders"
    assert settings.daemon.max_concurrent == 3
    assert settings.daemon.http_port == 9180


def test_without_backupd_targets_there_is_one_unnamed_target() -> None:
    (target,) = load_settings(MINIMAL).targets
    assert target.name == "default"
    assert target.key_prefix == "backups"


def test_target_problems_name_the_prefixed_variable() -> None:
    env = {**MINIMAL, "BACKUPD_TARGETS": "orders,bad-name,ORDERS", "ORDERS_DB_PORT": "x"}
    env.pop("DB_HOST")

    with pytest.raises(ConfigError) as caught:
        load_settings(env)

    problems = caught.value.problems
    assert (
        "BACKUPD_TARGETS: 'bad-name' is not a valid target name (letters, digits and _ only)"
        in problems
    )
    assert "BACKUPD_TARGETS: 'ORDERS' is named twice" in problems
    assert "ORDERS_DB_HOST or DB_HOST: required but not set" in problems
    assert any(p.startswith("ORDERS_DB_PORT: ") for p in problems)


@pytest.mark.parametrize(
    ("raw", "names", "everything"),
    [
        ("app", ("app",), False),
        ("a, b,c", ("a", "b", "c"), False),
        ("*", (), True),
        (" * ", (), True),
    ],
)
def test_db_database_takes_a_list_or_a_star(
    raw: str, names: tuple[str, ...], everything: bool
) -> None:
    database = load_target({**MINIMAL, "DB_DATABASE": raw}).database
    assert database.databases == names
    assert database.all_databases is everything


@pytest.mark.parametrize("raw", ["a,,b", "a,*", ","])
def test_db_database_list_must_be_clean(raw: str) -> None:
    assert [p.split(":")[0] for p in problems_of({**MINIMAL, "DB_DATABASE": raw})] == [
        "DB_DATABASE"
    ]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CRON_SCHEDULE", "61 * * * *"),
        ("RUN_ON_STARTUP", "perhaps"),
        ("MAX_CONCURRENT_BACKUPS", "0"),
        ("SHUTDOWN_TIMEOUT", "-1"),
        ("HTTP_PORT", "70000"),
    ],
)
def test_daemon_settings_are_validated(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**MINIMAL, variable: value})
    assert [p.split(":")[0] for p in caught.value.problems] == [variable]


@pytest.mark.parametrize(
    ("extra", "tls", "port"),
    [
        ({}, "starttls", 587),
        ({"EMAIL_PORT": "465"}, "ssl", 465),
        ({"EMAIL_TLS": "ssl"}, "ssl", 465),
        ({"EMAIL_PORT": "25", "EMAIL_TLS": "none"}, "none", 25),
        ({"EMAIL_PORT": "2525"}, "starttls", 2525),
    ],
)
def test_email_tls_follows_the_port_unless_set(extra: dict[str, str], tls: str, port: int) -> None:
    env = {**MINIMAL, "EMAIL_SMTP": "mail", "EMAIL_FROM": "a@b", "EMAIL_TO": "c@d, e@f", **extra}
    email = load_target(env).email
    assert (email.effective_tls.value, email.effective_port) == (tls, port)
    assert email.recipients == ["c@d", "e@f"]


def test_email_needs_sender_recipients_and_whole_credentials() -> None:
    problems = problems_of({**MINIMAL, "EMAIL_SMTP": "mail", "EMAIL_USER": "u"})
    assert [p.split(":")[0] for p in problems] == ["EMAIL_FROM", "EMAIL_TO", "EMAIL_PASSWORD"]


@pytest.mark.parametrize(
    ("extra", "options"),
    [
        # TLS demanded when credentials are sent...
        ({"EMAIL_USER": "u", "EMAIL_PASSWORD": "p"}, (False, True)),
        # ...used when offered otherwise (a plain relay still gets mail)
        ({}, (False, None)),
        ({"EMAIL_PORT": "25"}, (False, None)),
        # EMAIL_TLS forces
        ({"EMAIL_TLS": "starttls"}, (False, True)),
        ({"EMAIL_TLS": "ssl"}, (True, False)),
        ({"EMAIL_PORT": "465"}, (True, False)),
        ({"EMAIL_TLS": "none"}, (False, False)),
        ({"EMAIL_TLS": "none", "EMAIL_USER": "u", "EMAIL_PASSWORD": "p"}, (False, False)),
        ({"EMAIL_TLS": "ssl", "EMAIL_USER": "u", "EMAIL_PASSWORD": "p"}, (True, False)),
    ],
)
def test_tls_is_demanded_with_credentials_and_opportunistic_without(
    extra: dict[str, str], options: tuple[bool, bool | None]
) -> None:
    """(use_tls, start_tls) for aiosmtplib; start_tls None: upgrade only if offered."""
    from backupd.notify.email import tls_options

    env = {**MINIMAL, "EMAIL_SMTP": "mail", "EMAIL_FROM": "a@b", "EMAIL_TO": "c@d", **extra}
    assert tls_options(load_target(env).email) == options


def test_row_counts_are_exact_unless_turned_off_and_nothing_else_is_accepted() -> None:
    assert load_target(MINIMAL).verify.row_counts is RowCounts.EXACT
    assert load_target({**MINIMAL, "VERIFY_ROW_COUNTS": "off"}).verify.row_counts is RowCounts.OFF

    (problem,) = problems_of({**MINIMAL, "VERIFY_ROW_COUNTS": "estimate"})

    assert "VERIFY_ROW_COUNTS" in problem
    assert "exact" in problem and "off" in problem


@pytest.mark.parametrize(
    ("url", "hidden"),
    [
        ("http://seq.internal:5341", []),  # says where logs go: stays readable
        (
            "http://user:Pa55word@seq.internal:5341",
            ["http://user:Pa55word@seq.internal:5341", "Pa55word"],
        ),
        (
            "http://seq.internal:5341/?apiKey=k123456",
            ["http://seq.internal:5341/?apiKey=k123456", "apiKey=k123456"],
        ),
    ],
)
def test_a_seq_url_is_a_secret_only_when_it_carries_credentials(
    url: str, hidden: list[str]
) -> None:
    assert LogConfig.model_validate({"SEQ_URL": url}).secrets == hidden


def test_a_name_outside_its_pattern_is_said_in_words_not_as_a_regular_expression() -> None:
    env = {
        **MINIMAL,
        "VERIFY_DRILL_DATABASE_PREFIX": "drill-",
        "COORDINATION": "storage",
        "REPLICA_ID": "web 1",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    problems = caught.value.problems
    assert (
        "VERIFY_DRILL_DATABASE_PREFIX: must hold only letters A-Z and a-z, digits and underscores"
        in problems
    )
    assert "REPLICA_ID: must hold only letters A-Z and a-z, digits and . @ : _ -" in problems
    assert not any("pattern" in p for p in problems)


def test_the_drill_server_s_host_and_login_lose_a_yaml_block_s_line_break() -> None:
    """As DB_HOST and DB_USER do: a ConfigMap's ``VERIFY_DB_HOST: |`` ends with a line break,
    and every drill failed on a host name that looked right."""
    target = load_target(
        {**MINIMAL, "VERIFY_DB_HOST": "drills.internal\n", "VERIFY_DB_USER": " u\n"}
    )
    assert (target.verify.host, target.verify.user) == ("drills.internal", "u")
    problems = problems_of({**MINIMAL, "VERIFY_DB_HOST": "drills\tinternal"})
    assert "VERIFY_DB_HOST: must not contain control characters" in problems


@pytest.mark.parametrize(
    ("name", "value", "port"),
    [
        ("DB_HOST", "127.0.0.1:5432", "DB_PORT"),
        ("DB_HOST", "db.internal:3306", "DB_PORT"),
        ("VERIFY_DB_HOST", "drills:5432", "VERIFY_DB_PORT"),
        ("EMAIL_SMTP", "mail.example.com:587", "EMAIL_PORT"),
    ],
)
def test_a_port_written_into_a_host_name_is_a_problem_naming_the_port_s_variable(
    name: str, value: str, port: str
) -> None:
    """It reached the resolver as part of the name: "could not translate host name", at the
    first backup, with no word of the port's own variable."""
    assert f"{name}: must be a host name alone; set its port in {port}" in problems_of(
        {**MINIMAL, name: value}
    )


def test_an_ipv6_address_or_a_sql_server_instance_is_a_host_name() -> None:
    for host in ("::1", "fe80::1%eth0", "tcp:sql.internal,1433", "sql.internal\\\\SQLEXPRESS"):
        assert load_target({**MINIMAL, "DB_HOST": host}).database.host == host
