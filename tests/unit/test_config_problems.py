"""Values that used to pass validation and fail later (a traceback, or a run failing "at
internal"): each is now one problem line at load, naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupd import envfile
from backupd.config import MIB, S3Config, StorageType
from backupd.environment import load_settings, load_target
from backupd.errors import ConfigError

BASE = {
    "DB_HOST": "db.internal",
    "DB_USER": "backup",
    "DB_DATABASE": "app",
}
S3 = {
    **BASE,
    "STORAGE_BUCKET_NAME": "my-backups",
    "STORAGE_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "STORAGE_SECRET_ACCESS_KEY": "storage-Secret-99",
}


def local(tmp_path: Path) -> dict[str, str]:
    return {**BASE, "STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(tmp_path)}


def s3_storage(env: dict[str, str]) -> S3Config:
    storage = load_target(env).storage
    assert isinstance(storage, S3Config)
    return storage


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return caught.value.problems


def only_problem(env: dict[str, str]) -> str:
    problems = problems_of(env)
    assert len(problems) == 1, problems
    return problems[0]


# TIMEZONE


@pytest.mark.parametrize("zone", ["Europe", "America", "Etc"])
def test_a_folder_of_time_zones_is_not_a_time_zone(zone: str) -> None:
    problem = only_problem({**S3, "TIMEZONE": zone})

    assert problem.startswith("TIMEZONE: ")
    assert f"{zone!r} is a folder of time zones, not a time zone" in problem


@pytest.mark.parametrize(
    "zone", ["A" * 300, "Mars/Olympus", "Europe/", "../etc", "/etc/localtime", "zone.tab"]
)
def test_a_name_no_zone_has_is_not_a_time_zone(zone: str) -> None:
    problem = only_problem({**S3, "TIMEZONE": zone})

    assert problem.startswith("TIMEZONE: ")
    assert "is not a time zone; use an IANA name like Europe/Berlin" in problem


def test_an_overlong_zone_name_is_shortened_in_its_problem() -> None:
    problem = only_problem({**S3, "TIMEZONE": "A" * 300})

    assert "A" * 41 not in problem
    assert "(300 characters)" in problem


# STORAGE_ENDPOINT_URL


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("minio:9000", "must start with http:// or https://"),
        ("http://", "names no host"),
        ("https:///bucket", "names no host"),
        ("http://bad host:9000", "must not contain blanks"),
        ("http://minio:9000 ", "must not contain blanks"),
        ("http://minio_1:9000", "host must be a DNS name"),
        ("http://-minio:9000", "host must be a DNS name"),
        ("http://[::1:9000", "host must be a DNS name"),
        ("http://minio:port", "port must be a number from 1 to 65535"),
        ("http://minio:99999", "port must be a number from 1 to 65535"),
        ("http://minio:0", "port must be a number from 1 to 65535"),
    ],
)
def test_an_endpoint_url_botocore_refuses_is_a_problem(url: str, says: str) -> None:
    problem = only_problem({**S3, "STORAGE_ENDPOINT_URL": url})

    assert problem.startswith("STORAGE_ENDPOINT_URL: ")
    assert says in problem


@pytest.mark.parametrize(
    "url",
    [
        "https://s3.eu-central-1.amazonaws.com",
        "http://127.0.0.1:9000",
        "http://minio:9000/",
        "http://[::1]:9000",
        "https://abc123.r2.cloudflarestorage.com",
        "https://s3.example.com.",
    ],
)
def test_an_endpoint_url_botocore_takes_is_accepted(url: str) -> None:
    assert s3_storage({**S3, "STORAGE_ENDPOINT_URL": url}).endpoint_url == url


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("r2", "https://abc123.r2.cloudflarestorage.com/my-backups"),
        ("r2", "https://abc123.r2.cloudflarestorage.com/my-backups/"),
        ("r2", "https://abc123.r2.cloudflarestorage.com/backups"),
        ("s3", "http://minio:9000/my-backups"),
        ("s3", "https://s3.example.com/s3/my-backups/"),
    ],
)
def test_an_endpoint_url_with_a_path_naming_the_bucket_is_a_problem(kind: str, url: str) -> None:
    """Cloudflare's dashboard shows R2's S3 API URL with the bucket's name after it. botocore
    puts that path in front of ``/{bucket}/{key}``: objects were written under another key
    and every listing failed (NoSuchKey), so backups and ``check`` passed while list, restore,
    verify and retention found nothing."""
    problem = only_problem({**S3, "STORAGE_TYPE": kind, "STORAGE_ENDPOINT_URL": url})

    assert problem.startswith("STORAGE_ENDPOINT_URL: must not have a path (/")
    assert "STORAGE_BUCKET_NAME" in problem


@pytest.mark.parametrize("url", ["https://gateway.example.com/s3", "http://minio:9000//"])
def test_an_s3_endpoint_behind_a_proxy_path_is_accepted(url: str) -> None:
    assert s3_storage({**S3, "STORAGE_ENDPOINT_URL": url}).endpoint_url == url


# STORAGE_REGION


@pytest.mark.parametrize(
    "region", ["eu central 1", "EU (Frankfurt)", "eu-central-1 ", "-eu", "eu-", "123", "a" * 64]
)
def test_a_region_botocore_refuses_is_a_problem(region: str) -> None:
    problem = only_problem({**S3, "STORAGE_REGION": region})

    assert problem.startswith("STORAGE_REGION: ")
    assert "must be a region name like eu-central-1" in problem


@pytest.mark.parametrize("region", ["eu-central-1", "us-gov-west-1", "auto", "garage", "EU1"])
def test_a_region_botocore_takes_is_accepted(region: str) -> None:
    assert s3_storage({**S3, "STORAGE_REGION": region}).region == region


def test_r2_ignores_the_region_it_never_uses() -> None:
    env = {
        **S3,
        "STORAGE_TYPE": "r2",
        "STORAGE_ENDPOINT_URL": "https://abc.r2.cloudflarestorage.com",
        "STORAGE_REGION": "eu central 1",
    }

    storage = s3_storage(env)

    assert storage.kind is StorageType.R2
    assert storage.region == "auto"


# STORAGE_BUCKET_NAME


@pytest.mark.parametrize(
    "bucket", ["s3://my-bucket", "S3://my-bucket/backups", "https://b.example"]
)
def test_a_bucket_given_as_a_url_is_a_problem_with_a_hint(bucket: str) -> None:
    problem = only_problem({**S3, "STORAGE_BUCKET_NAME": bucket})

    assert problem.startswith("STORAGE_BUCKET_NAME: ")
    assert "is a URL; give the bucket's name alone" in problem


@pytest.mark.parametrize("bucket", ["my,bucket", "bücket", "my bucket", "mine ", "a/b"])
def test_a_bucket_name_botocore_refuses_is_a_problem(bucket: str) -> None:
    problem = only_problem({**S3, "STORAGE_BUCKET_NAME": bucket})

    assert problem.startswith("STORAGE_BUCKET_NAME: ")
    assert "only letters, digits, '.', '-' and '_'" in problem
    assert bucket.strip() not in problem


@pytest.mark.parametrize("bucket", ["my-backups", "backups.example.com", "Legacy_Bucket", "abc"])
def test_a_bucket_name_s3_compatible_stores_take_is_accepted(bucket: str) -> None:
    assert s3_storage({**S3, "STORAGE_BUCKET_NAME": bucket}).bucket == bucket


# STORAGE_PART_SIZE with STORAGE_TYPE=local


@pytest.mark.parametrize("size", ["0", "1", "512KiB", "2GiB", "100GiB", "99999999999999999999"])
def test_a_local_part_size_out_of_range_is_a_problem(tmp_path: Path, size: str) -> None:
    problem = only_problem({**local(tmp_path), "STORAGE_PART_SIZE": size})

    assert problem.startswith("STORAGE_PART_SIZE: must be between 1MiB and 1GiB")
    assert f"(got {size!r})" in problem


@pytest.mark.parametrize(
    ("size", "parsed"), [("1MiB", MIB), ("64MiB", 64 * MIB), ("1GiB", 1024 * MIB)]
)
def test_a_local_part_size_in_range_is_accepted(tmp_path: Path, size: str, parsed: int) -> None:
    storage = load_target({**local(tmp_path), "STORAGE_PART_SIZE": size}).storage

    assert storage.part_size == parsed


# NUL characters


def test_a_nul_in_an_env_file_value_names_the_line_and_variable_but_not_the_value() -> None:
    parsed = envfile.parse("DB_USER=u\nDB_PASSWORD=se\x00cret\n", "app.env")

    assert parsed.problems == [
        "app.env line 2: DB_PASSWORD: the value contains a NUL character, which no variable "
        "can hold"
    ]
    assert "DB_PASSWORD" not in parsed.values


def test_a_nul_in_a_quoted_env_file_value_is_a_problem() -> None:
    assert envfile.parse("DB_HOST='a\x00b'\n").problems == [
        ".env line 1: DB_HOST: the value contains a NUL character, which no variable can hold"
    ]


def test_a_nul_in_a_secret_file_is_a_problem_naming_the_variable(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_bytes(b"se\x00cret\n")

    problem = only_problem({**S3, "DB_PASSWORD_FILE": str(secret)})

    assert problem == (
        f"DB_PASSWORD_FILE: {secret} contains a NUL character, which no setting can hold"
    )


# STORAGE_LOCAL_PATH


def test_a_local_path_with_an_overlong_name_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 300)

    problem = only_problem({**local(tmp_path), "STORAGE_LOCAL_PATH": str(path)})

    assert problem.startswith("STORAGE_LOCAL_PATH: ")
    assert "longer than the file system allows" in problem
    assert "x" * 100 not in problem


def test_a_local_path_longer_than_path_max_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path.joinpath(*["y" * 200] * 25)

    problem = only_problem({**local(tmp_path), "STORAGE_LOCAL_PATH": str(path)})

    assert problem.startswith("STORAGE_LOCAL_PATH: ")
    assert "longer than the file system allows" in problem


# SEQ_URL, NOTIFY_WEBHOOK_URL, HEALTHCHECK_PING_URL


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("seq.local:5341", "must start with http:// or https://"),
        ("http://", "names no host; write it like http://seq:5341"),
        ("http://seq :5341", "must not contain blanks"),
        ("http://seq:port", "port must be a number from 1 to 65535"),
    ],
)
def test_a_seq_url_without_a_usable_host_is_a_problem(url: str, says: str) -> None:
    problem = only_problem({**S3, "SEQ_URL": url})

    assert problem.startswith("SEQ_URL: ")
    assert says in problem


@pytest.mark.parametrize("url", ["http://seq:5341", "https://logs.example.com/seq/"])
def test_a_seq_url_with_a_host_is_accepted(url: str) -> None:
    assert load_settings({**S3, "SEQ_URL": url}).logs.seq_url == url


@pytest.mark.parametrize("variable", ["NOTIFY_WEBHOOK_URL", "HEALTHCHECK_PING_URL"])
def test_a_hook_url_without_a_host_is_a_problem_that_never_quotes_it(variable: str) -> None:
    problem = only_problem({**S3, variable: "https:///hook-Token-77"})

    assert problem.startswith(f"{variable}: ")
    assert "names no host" in problem
    assert "Token-77" not in problem


# EMAIL_FROM, EMAIL_TO

MAIL = {**S3, "EMAIL_SMTP": "smtp.example.com"}


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("EMAIL_FROM", "Backups <>", "is not a mail address"),
        ("EMAIL_FROM", "ops@example.com, dev@example.com", "holds more than one address"),
        ("EMAIL_FROM", "ops @example.com", "holds a blank"),
        ("EMAIL_FROM", "ops@", "is not a mail address"),
        ("EMAIL_TO", "ops@example.com,no body", "'no body' is not a mail address"),
        ("EMAIL_TO", "@example.com", "is not a mail address"),
    ],
)
def test_a_mail_address_without_local_part_and_domain_is_a_problem(
    variable: str, value: str, says: str
) -> None:
    env = {**MAIL, "EMAIL_FROM": "backupd@example.com", "EMAIL_TO": "ops@example.com"}
    problem = only_problem({**env, variable: value})

    assert problem.startswith(f"{variable}: ")
    assert says in problem


def test_mail_addresses_with_display_names_or_without_a_domain_are_accepted() -> None:
    env = {
        **MAIL,
        "EMAIL_FROM": "Backups <backupd@example.com>",
        "EMAIL_TO": "ops@example.com, root@localhost, root",
    }
    bare = {**env, "EMAIL_FROM": "backupd"}  # a local relay completes it

    assert load_settings(env).targets[0].email.recipients == [
        "ops@example.com",
        "root@localhost",
        "root",
    ]
    assert load_settings(bare).targets[0].email.sender == "backupd"


# Choices (DB_TYPE, COMPRESSION, ...)


def test_a_choice_is_taken_in_any_case() -> None:
    settings = load_settings(
        {
            **S3,
            "DB_TYPE": "MariaDB",
            "COMPRESSION": "ZSTD",
            "LOG_FORMAT": "JSON",
            "STORAGE_OBJECT_LOCK_MODE": "governance",
            "STORAGE_OBJECT_LOCK_DAYS": "3",
            "VERIFY_ROW_COUNTS": "Off",
        }
    )
    target = settings.targets[0]

    assert target.database.engine == "mariadb"
    assert target.layout.compression == "zstd"
    assert settings.logs.format == "json"
    assert isinstance(target.storage, S3Config)
    assert target.storage.object_lock_mode == "GOVERNANCE"
    assert target.verify.row_counts == "off"


def test_a_choice_a_switch_or_a_level_between_blanks_is_taken_as_a_number_is() -> None:
    settings = load_settings(
        {
            **S3,
            "DB_TYPE": " mysql ",
            "DB_PORT": " 3307 ",
            "RUN_ON_STARTUP": " true",
            "LOG_LEVEL": " info",
        }
    )

    assert settings.targets[0].database.engine == "mysql"
    assert settings.targets[0].database.effective_port == 3307
    assert settings.targets[0].schedule.run_on_startup is True
    assert settings.logs.level == "INFO"


def test_a_name_that_is_no_choice_in_any_case_is_still_a_problem() -> None:
    problem = only_problem({**S3, "DB_TYPE": "PostgreSQL"})

    assert problem == (
        "DB_TYPE: must be 'postgres', 'mysql', 'mariadb' or 'mssql' (got 'PostgreSQL')"
    )


@pytest.mark.parametrize(
    "variable", ["SHUTDOWN_TIMEOUT", "RESTORE_STALL_TIMEOUT", "ANOMALY_GROWTH"]
)
@pytest.mark.parametrize("value", ["inf", "Infinity", "nan"])
def test_a_bound_must_be_a_finite_number(variable: str, value: str) -> None:
    problem = only_problem({**S3, variable: value})

    assert problem.startswith(f"{variable}: must be a finite number"), problem


@pytest.mark.parametrize(
    "url", ["http://seq_server:5341", "https://hooks.bücher.de/x", "http://[::1]:8080/h"]
)
def test_an_http_address_aiohttp_reaches_is_accepted_beyond_s3s_rule(url: str) -> None:
    settings = load_settings({**S3, "SEQ_URL": url, "NOTIFY_WEBHOOK_URL": url})

    assert settings.logs.seq_url == url
    hook = settings.targets[0].hooks.webhook_url
    assert hook is not None and hook.get_secret_value() == url


@pytest.mark.parametrize("variable", ["SEQ_URL", "NOTIFY_WEBHOOK_URL", "HEALTHCHECK_PING_URL"])
@pytest.mark.parametrize(
    "host", ["seq..internal", ".internal", f"{'a' * 64}.internal", "hooks.example..com"]
)
def test_a_url_host_no_resolver_can_be_asked_for_is_a_problem(
    tmp_path: Path, variable: str, host: str
) -> None:
    """An empty label (a doubled dot) or one over 63 characters: the IDNA encoding before the
    look-up raised UnicodeError, a traceback from ``check`` and, for Seq, from the end of a
    successful ``once`` (exit 1)."""
    url = f"https://{host}:5341/Tok3n-s3cret"

    (problem,) = problems_of({**local(tmp_path), variable: url})

    assert problem.startswith(f"{variable}: its host has an empty part")
    assert "Tok3n-s3cret" not in problem


@pytest.mark.parametrize(
    "url",
    ["http://seq_server:5341", "https://hooks.example.com./x", "http://[::1]:5341", "http://séq"],
)
def test_a_url_host_the_resolver_takes_is_accepted(tmp_path: Path, url: str) -> None:
    settings = load_settings({**local(tmp_path), "SEQ_URL": url, "NOTIFY_WEBHOOK_URL": url})
    assert settings.logs.seq_url == url


@pytest.mark.parametrize(
    ("smtp", "says"),
    [
        ("smtp..example.com", "EMAIL_SMTP: its host has an empty part"),
        (f"{'m' * 64}.example.com", "EMAIL_SMTP: its host has an empty part"),
        (
            "smtp.example.com:587",
            "EMAIL_SMTP: must be a host name alone; set its port in EMAIL_PORT",
        ),
        ("smtp://smtp.example.com", "EMAIL_SMTP: must be a host name alone, not a URL"),
        ("smtps://smtp.example.com:465", "EMAIL_SMTP: must be a host name alone, not a URL"),
    ],
)
def test_an_smtp_relay_no_resolver_can_be_asked_for_is_a_problem(
    tmp_path: Path, smtp: str, says: str
) -> None:
    """``check`` printed a traceback (UnicodeError from the IDNA encoding) for the first two."""
    mail = {"EMAIL_SMTP": smtp, "EMAIL_FROM": "a@example.com", "EMAIL_TO": "b@example.com"}

    (problem,) = problems_of({**local(tmp_path), **mail})

    assert problem.startswith(says)


@pytest.mark.parametrize("smtp", ["relay.internal", "127.0.0.1", "::1", " relay ", "mail_relay"])
def test_an_smtp_relay_the_resolver_takes_is_accepted(tmp_path: Path, smtp: str) -> None:
    mail = {"EMAIL_SMTP": smtp, "EMAIL_FROM": "a@example.com", "EMAIL_TO": "b@example.com"}
    assert load_target({**local(tmp_path), **mail}).email.smtp == smtp.strip()
