from __future__ import annotations

from datetime import UTC, datetime

import pytest

from backupd.cli import UsageError, targets_to_prune
from backupd.config import ObjectLockMode, S3Config
from backupd.environment import load_settings, load_target
from backupd.errors import ConfigError
from backupd.retention import Policy
from backupd.storage.s3 import lock_arguments

MINIMAL = {
    "DB_HOST": "db.internal",
    "DB_USER": "backup",
    "DB_DATABASE": "app",
    "STORAGE_BUCKET_NAME": "my-backups",
}


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_target(env)
    return caught.value.problems


def test_no_retention_setting_means_no_policy() -> None:
    retention = load_target(MINIMAL).retention
    assert retention.policy == Policy()
    assert not retention.policy.enabled
    assert retention.abort_uploads_after == "24h"


def test_every_rule_reaches_the_policy() -> None:
    env = {
        **MINIMAL,
        "RETENTION_KEEP_LAST": "3",
        "RETENTION_KEEP_HOURLY": "24",
        "RETENTION_KEEP_DAILY": "7",
        "RETENTION_KEEP_WEEKLY": "4",
        "RETENTION_KEEP_MONTHLY": "12",
        "RETENTION_KEEP_YEARLY": "2",
        "RETENTION_KEEP_WITHIN": " 30D ",
        "RETENTION_ABORT_UPLOADS_AFTER": "2d",
    }
    retention = load_target(env).retention
    assert retention.policy == Policy(3, 24, 7, 4, 12, 2, "30d")
    assert retention.abort_uploads_after == "2d"


def test_retention_is_per_target_with_the_shared_fallback() -> None:
    env = {
        **MINIMAL,
        "BACKUPD_TARGETS": "orders,billing",
        "RETENTION_KEEP_DAILY": "7",
        "BILLING_RETENTION_KEEP_DAILY": "30",
        "BILLING_RETENTION_KEEP_MONTHLY": "12",
    }
    orders, billing = load_settings(env).targets
    assert orders.retention.policy == Policy(daily=7)
    assert billing.retention.policy == Policy(daily=30, monthly=12)


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("RETENTION_KEEP_WITHIN", "30", "RETENTION_KEEP_WITHIN: '30' is not a duration"),
        ("RETENTION_KEEP_WITHIN", "0h", "RETENTION_KEEP_WITHIN: '0h' is zero"),
        ("RETENTION_KEEP_WITHIN", "9999y", "RETENTION_KEEP_WITHIN: '9999y' is longer than"),
        ("RETENTION_ABORT_UPLOADS_AFTER", "soon", "RETENTION_ABORT_UPLOADS_AFTER: 'soon' is not"),
        ("RETENTION_KEEP_DAILY", "-1", "RETENTION_KEEP_DAILY: must be greater than or equal to 0"),
        ("RETENTION_KEEP_LAST", "many", "RETENTION_KEEP_LAST: must be a valid integer"),
        ("STORAGE_OBJECT_LOCK_DAYS", "0", "STORAGE_OBJECT_LOCK_DAYS: must be greater than"),
        ("STORAGE_OBJECT_LOCK_MODE", "strict", "STORAGE_OBJECT_LOCK_MODE: must be 'GOVERNANCE'"),
    ],
)
def test_bad_retention_settings_name_their_variable(
    variable: str, value: str, problem: str
) -> None:
    problems = problems_of({**MINIMAL, variable: value})
    assert len(problems) == 1
    assert problems[0].startswith(problem)


def test_object_lock_needs_a_bucket() -> None:
    env = {"DB_HOST": "h", "DB_USER": "u", "DB_DATABASE": "app", "STORAGE_TYPE": "local"}
    env |= {"STORAGE_LOCAL_PATH": "/backups", "STORAGE_OBJECT_LOCK_DAYS": "30"}
    assert problems_of(env) == [
        "STORAGE_OBJECT_LOCK_DAYS: Object Lock needs an S3 bucket; "
        "STORAGE_TYPE=local cannot lock files"
    ]


def test_object_lock_writes_mode_and_retain_until_date() -> None:
    now = datetime(2026, 11, 29, 2, tzinfo=UTC)
    plain = load_target(MINIMAL).storage
    assert isinstance(plain, S3Config)
    assert lock_arguments(plain, now) == {}
    locked = load_target(
        {**MINIMAL, "STORAGE_OBJECT_LOCK_DAYS": "30", "STORAGE_OBJECT_LOCK_MODE": "compliance"}
    ).storage
    assert isinstance(locked, S3Config)
    assert locked.object_lock_mode is ObjectLockMode.COMPLIANCE
    assert lock_arguments(locked, now) == {
        "ObjectLockMode": "COMPLIANCE",
        "ObjectLockRetainUntilDate": datetime(2026, 12, 29, 2, tzinfo=UTC),
    }


def test_prune_picks_the_targets_with_a_policy() -> None:
    env = {
        **MINIMAL,
        "BACKUPD_TARGETS": "orders,billing",
        "ORDERS_RETENTION_KEEP_DAILY": "7",
    }
    settings = load_settings(env)
    assert [t.name for t in targets_to_prune(settings, None)] == ["orders"]
    assert [t.name for t in targets_to_prune(settings, "orders")] == ["orders"]
    with pytest.raises(UsageError, match="target billing has no retention policy"):
        targets_to_prune(settings, "billing")
    with pytest.raises(UsageError, match="no target named 'shop'"):
        targets_to_prune(settings, "shop")
    with pytest.raises(UsageError, match="no target has a retention policy"):
        targets_to_prune(load_settings(MINIMAL), None)
