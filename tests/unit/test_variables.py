"""Variables backupd would silently ignore are named, with the closest known one."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from backupd import reference
from backupd.config import TargetConfig
from backupd.environment import load_settings
from backupd.variables import (
    aliases,
    blank_protections,
    for_target,
    known_names,
    told,
    unknown_variables,
)
from tests.unit.test_config import MINIMAL


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


def target_named(names: str) -> TargetConfig:
    """The first target of ``BACKUPD_TARGETS=names``."""
    return load_settings({**MINIMAL, "BACKUPD_TARGETS": names}).targets[0]


@pytest.mark.parametrize(
    ("text", "spelled"),
    [
        (
            "cannot log in to PostgreSQL at db:5432: ... (DB_USER, DB_PASSWORD)",
            "cannot log in to PostgreSQL at db:5432: ... (ORDERS_DB_USER, ORDERS_DB_PASSWORD)",
        ),
        ("MSSQL_LOCAL_DIR /bak: No space", "ORDERS_MSSQL_LOCAL_DIR /bak: No space"),
        ("STORAGE_PART_SIZE=8.0 MiB", "ORDERS_STORAGE_PART_SIZE=8.0 MiB"),
        ("(DB_SSL_MODE=disable: ...)", "(ORDERS_DB_SSL_MODE=disable: ...)"),
        ("set DB_PASSWORD_FILE", "set ORDERS_DB_PASSWORD_FILE"),
        (
            "(VERIFY_DB_USER, VERIFY_DB_PASSWORD)",
            "(ORDERS_VERIFY_DB_USER, ORDERS_VERIFY_DB_PASSWORD)",
        ),
        ("set RETENTION_KEEP_* first", "set ORDERS_RETENTION_KEEP_* first"),
        # process-wide settings are the same for every target
        (
            "SEQ_URL: refused; COORDINATION=storage; HTTP_PORT",
            "SEQ_URL: refused; COORDINATION=storage; HTTP_PORT",
        ),
        ("SEQ_* and BACKUPD_TARGETS", "SEQ_* and BACKUPD_TARGETS"),
        # already the target's own, or part of a longer word: a database, a path, a file
        ("ORDERS_DB_HOST and BILLING_DB_HOST", "ORDERS_DB_HOST and BILLING_DB_HOST"),
        (
            "database MY_DB_HOST, /srv/DB_HOSTx, Db_Host",
            "database MY_DB_HOST, /srv/DB_HOSTx, Db_Host",
        ),
        ("no variable here", "no variable here"),
        # words of one piece are SQL's too: a tool's error quoting a statement keeps them
        (
            "BACKUP DATABASE failed: WITH COPY_ONLY, COMPRESSION; SET TIMEZONE",
            "BACKUP DATABASE failed: WITH COPY_ONLY, COMPRESSION; SET TIMEZONE",
        ),
    ],
)
def test_a_message_about_a_named_target_names_its_own_variables(text: str, spelled: str) -> None:
    assert for_target(text, target_named("orders")) == spelled


def test_a_message_about_the_unnamed_target_names_the_variables_as_they_are() -> None:
    text = "does not exist (STORAGE_BUCKET_NAME); set RETENTION_KEEP_* (DB_USER, DB_PASSWORD)"

    assert for_target(text, load_settings(MINIMAL).targets[0]) == text


def test_a_target_name_is_spelled_in_capitals_as_its_variables_are() -> None:
    assert for_target("(DB_HOST)", target_named("eu_orders")) == "(EU_ORDERS_DB_HOST)"
    assert for_target("(DB_HOST)", target_named("default")) == "(DEFAULT_DB_HOST)"
    assert for_target("(DB_HOST)", target_named("verify")) == "(VERIFY_DB_HOST)"


def test_a_secret_is_masked_before_the_names_in_a_message_are_spelled() -> None:
    """A password holding a variable's name is still found as it was written."""
    env = {**MINIMAL, "BACKUPD_TARGETS": "orders", "ORDERS_DB_PASSWORD": "pw DB_HOST pw"}
    target = load_settings(env).targets[0]

    assert told("said 'pw DB_HOST pw' (DB_HOST)", target) == "said '******' (ORDERS_DB_HOST)"


@pytest.mark.parametrize("password", ["ORDERS", "ORDERS_DB_PASSWORD", "RS_DB_US"])
def test_a_secret_that_a_spelled_name_makes_is_masked_too(password: str) -> None:
    """The names are spelled after masking: one that holds the password is masked again."""
    env = {**MINIMAL, "BACKUPD_TARGETS": "orders", "ORDERS_DB_PASSWORD": password}
    target = load_settings(env).targets[0]

    said = told("refused (DB_USER, DB_PASSWORD)", target)

    assert password not in said
    assert said.startswith("refused (")


@pytest.mark.parametrize(
    ("env", "text", "spelled"),
    [
        (
            {"ORDERS_DB_DATABASE": "DB_HOST"},
            "database DB_HOST does not exist on h:5432 (DB_DATABASE)",
            "database DB_HOST does not exist on h:5432 (ORDERS_DB_DATABASE)",
        ),
        (
            {"ORDERS_DB_DATABASE": "app,EMAIL_TO"},
            "ERROR 1049 (42000): Unknown database 'EMAIL_TO' (DB_DATABASE)",
            "ERROR 1049 (42000): Unknown database 'EMAIL_TO' (ORDERS_DB_DATABASE)",
        ),
        (
            {"ORDERS_STORAGE_DESTINATION_FOLDER": "STORAGE_TYPE/"},
            "cannot write STORAGE_TYPE/orders/x.dump (STORAGE_BUCKET_NAME)",
            "cannot write STORAGE_TYPE/orders/x.dump (ORDERS_STORAGE_BUCKET_NAME)",
        ),
        (
            {"ORDERS_DB_USER": "DB_HOST"},
            'role "DB_HOST" does not exist (DB_USER, DB_PASSWORD)',
            'role "DB_HOST" does not exist (ORDERS_DB_USER, ORDERS_DB_PASSWORD)',
        ),
    ],
)
def test_a_name_written_in_the_targets_own_settings_is_quoted_as_it_is(
    env: dict[str, str], text: str, spelled: str
) -> None:
    """A database, folder or login named like a setting is the user's data, not a variable."""
    target = load_settings({**MINIMAL, "BACKUPD_TARGETS": "orders", **env}).targets[0]

    assert told(text, target) == spelled


def test_a_database_the_server_listed_is_quoted_as_it_is() -> None:
    """DB_DATABASE=*: the database a message is about is passed as data."""
    env = {**MINIMAL, "BACKUPD_TARGETS": "orders", "ORDERS_DB_DATABASE": "*"}
    target = load_settings(env).targets[0]
    text = "database DB_PORT does not exist on h:5432 (DB_DATABASE)"

    assert told(text, target, ["DB_PORT"]) == (
        "database DB_PORT does not exist on h:5432 (ORDERS_DB_DATABASE)"
    )


RECIPIENT = "age1hwzyjyf6pyekp84zmu9hddm3ru8hzc9uyg3v283y6uxdr8599gkq44etqw"


def test_a_protection_set_blank_is_warned_about_where_the_target_lacks_it() -> None:
    two = {**MINIMAL, "BACKUPD_TARGETS": "orders,crm", "ORDERS_ENCRYPTION_RECIPIENTS": ""}
    crm_encrypted = {**two, "CRM_ENCRYPTION_RECIPIENTS": RECIPIENT}

    assert blank_protections(two, load_settings(two)) == [
        "ORDERS_ENCRYPTION_RECIPIENTS is set but empty: the backups of target orders are not"
        " encrypted (give it a value, or remove the variable)"
    ]
    assert blank_protections(crm_encrypted, load_settings(crm_encrypted)) == [
        "ORDERS_ENCRYPTION_RECIPIENTS is set but empty: the backups of target orders are not"
        " encrypted (give it a value, or remove the variable)"
    ]
    # the shared variable blank, one target encrypted by its own: only the other is warned of
    shared = {**MINIMAL, "BACKUPD_TARGETS": "orders,crm", "ENCRYPTION_RECIPIENTS": ""}
    shared["CRM_ENCRYPTION_RECIPIENTS"] = RECIPIENT
    assert blank_protections(shared, load_settings(shared)) == [
        "ENCRYPTION_RECIPIENTS is set but empty: the backups of target orders are not"
        " encrypted (give it a value, or remove the variable)"
    ]
    locked = {**MINIMAL, "STORAGE_OBJECT_LOCK_DAYS": ""}
    assert blank_protections(locked, load_settings(locked)) == [
        "STORAGE_OBJECT_LOCK_DAYS is set but empty: the backups are not locked (give it a"
        " value, or remove the variable)"
    ]
    assert blank_protections(MINIMAL, load_settings(MINIMAL)) == []
