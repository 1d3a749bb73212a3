"""Variables backupd would silently ignore are named, with the closest known one."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from backupd import reference
from backupd.variables import aliases, known_names, unknown_variables


@pytest.mark.parametrize(
    ("env", "warning"),
    [
        ({"DB_PASS": "x"}, "DB_PASS is not a backupd setting; did you mean DB_PASSWORD?"),
        (
            {"STORAGE_REGON": "x"},
            "STORAGE_REGON is not a backupd setting; did you mean STORAGE_REGION?",
        ),
        ({"EMAIL_SERVER": "x"}, "EMAIL_SERVER is not a backupd setting; did you mean EMAIL_USER?"),
        ({"CRON_SCHEDUL": "x"}, "CRON_SCHEDULE"),
        ({"SEQ_API": "x"}, "did you mean SEQ_API_KEY?"),
        ({"MSSQL_BACKUP_DIRECTORY": "x"}, "did you mean MSSQL_BACKUP_DIR?"),
        ({"DB_PASWORD_FILE": "x"}, "did you mean DB_PASSWORD_FILE?"),
        ({"RETENTION_ZZZZZZZZZZZZ": "x"}, "RETENTION_ZZZZZZZZZZZZ is not a backupd setting"),
        (
            {"BACKUPD_TARGETS": "orders", "ORDERS_DB_HOTS": "x"},
            "ORDERS_DB_HOTS is not a backupd setting; did you mean ORDERS_DB_HOST?",
        ),
        (
            {"BACKUPD_TARGETS": "eu_orders", "EU_ORDERS_HTTP_PORT": "1"},
            "EU_ORDERS_HTTP_PORT is not a backupd setting; HTTP_PORT applies to all targets",
        ),
        ({"BACKUPD_TARGET": "a"}, "did you mean BACKUPD_TARGETS?"),
    ],
)
def test_unknown_variable_is_named_with_the_closest_known_one(
    env: dict[str, str], warning: str
) -> None:
    warnings = unknown_variables(env)

    assert len(warnings) == 1
    assert warning in warnings[0]


@pytest.mark.parametrize(
    "env",
    [
        {"DB_PASSWORD": "x", "DB_PASSWORD_FILE": "/run/secrets/db"},
        {"STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": "/b", "BACKUPD_TARGETS": "a"},
        {"BACKUPD_TARGETS": "orders", "ORDERS_DB_HOST": "x", "ORDERS_STORAGE_TYPE": "r2"},
        {
            "BACKUPD_TARGETS": "orders",
            "ORDERS_EMAIL_PASSWORD_FILE": "/s",
            "ORDERS_CRON_SCHEDULE": "x",
        },
        {"PATH": "/bin", "HOME": "/root", "TIMEZON": "UTC", "POSTGRES_PASSWORD": "x"},
        {"HTTP_PORT": "1", "LOG_LEVEL": "x", "SEQ_URL": "x", "SEQ_API_KEY_FILE": "/s"},
        # injected by Kubernetes for a Service named "db"
        {"DB_SERVICE_HOST": "10.0.0.1", "DB_SERVICE_PORT": "5432", "DB_PORT_5432_TCP_ADDR": "x"},
    ],
)
def test_known_and_foreign_variables_give_no_warning(env: dict[str, str]) -> None:
    assert unknown_variables(env) == []


def test_a_name_from_the_env_file_is_named_only_when_close_to_a_known_one() -> None:
    env = {"TIMEZON": "UTC", "POSTGRES_PASSWORD": "x", "COMPRESION": "zstd"}

    warnings = unknown_variables(env, from_file=env)

    assert warnings == [
        "COMPRESION is not a backupd setting; did you mean COMPRESSION?",
        "TIMEZON is not a backupd setting; did you mean TIMEZONE?",
    ]


def test_without_named_targets_a_target_prefix_is_not_known() -> None:
    assert "ORDERS_DB_HOST" not in known_names()
    assert "ORDERS_DB_HOST" in known_names(["orders"])
    assert "ORDERS_HTTP_PORT" not in known_names(["orders"])


def test_every_documented_variable_is_known() -> None:
    documented = {name for name, *_ in reference.rows()}

    assert documented <= known_names()


def test_a_field_added_to_a_model_is_known_through_its_alias() -> None:
    class Inner(BaseModel):
        keep: int = Field(7, alias="RETENTION_KEEP_DAILY")

    class Outer(BaseModel):
        retention: Inner | None = None
        drills: tuple[Inner, ...] = ()
        name: str = Field("x", alias="VERIFY_EVERY")

    assert aliases(Outer) == {"RETENTION_KEEP_DAILY", "VERIFY_EVERY"}


def test_a_known_name_written_in_lower_case_is_named_with_its_spelling() -> None:
    """Names are read as written: ``db_password`` in the .env file was ignored without a word,
    and only "DB_HOST: required but not set" told anything."""
    from_file = {"db_password": "x", "Db_Host": "db", "timezone": "UTC"}
    env = {**from_file, "storage_bucket_name": "b", "http_proxy": "http://proxy:3128"}

    warnings = unknown_variables(env, from_file=from_file)

    assert warnings == [
        "Db_Host is not a backupd setting; did you mean DB_HOST?",
        "db_password is not a backupd setting; did you mean DB_PASSWORD?",
        "storage_bucket_name is not a backupd setting; did you mean STORAGE_BUCKET_NAME?",
        "timezone is not a backupd setting; did you mean TIMEZONE?",
    ]
