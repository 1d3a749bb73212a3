"""The variable reference, generated from the configuration models so that it cannot drift.

``python -m backupd.reference`` prints the Markdown table the README carries.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ByteSize, SecretStr

from backupd.config import (
    AnomalyConfig,
    CoordinationConfig,
    DaemonConfig,
    DatabaseConfig,
    EmailConfig,
    EncryptionConfig,
    HooksConfig,
    LayoutConfig,
    LimitsConfig,
    LocalConfig,
    LogConfig,
    MSSQLConfig,
    RetentionConfig,
    S3Config,
    ScheduleConfig,
    VerifyConfig,
)

MODELS: tuple[type[BaseModel], ...] = (
    DatabaseConfig,
    S3Config,
    LocalConfig,
    LayoutConfig,
    ScheduleConfig,
    RetentionConfig,
    EmailConfig,
    HooksConfig,
    MSSQLConfig,
    EncryptionConfig,
    LimitsConfig,
    VerifyConfig,
    AnomalyConfig,
    DaemonConfig,
    CoordinationConfig,
    LogConfig,
)
# Read by the loader itself rather than by a model field.
EXTRA = {
    "STORAGE_TYPE": ("`s3`", "s3, r2 or local", False),
    "BACKUPD_TARGETS": (
        "none",
        "Names of several targets: ORDERS_DB_HOST, ... fall back to DB_HOST, ...",
        False,
    ),
}


# Where "required" or "none" would mislead.
DEFAULTS = {
    "DB_PORT": "by engine",
    "STORAGE_BUCKET_NAME": "required for s3, r2",
    "STORAGE_LOCAL_PATH": "required for local",
    "STORAGE_ACCESS_KEY_ID": "AWS chain (s3)",
    "STORAGE_SECRET_ACCESS_KEY": "AWS chain (s3)",
    "EMAIL_PORT": "465 for ssl, else 587",
    "EMAIL_TLS": "ssl on 465, else STARTTLS if offered",
    "EMAIL_FROM": "required for mail",
    "EMAIL_TO": "required for mail",
    "MSSQL_LOCAL_DIR": "MSSQL_BACKUP_DIR",
    "VERIFY_DB_PORT": "by engine",
    "REPLICA_ID": "host name",
    "COORDINATION_LEASE": "`60s`",
}


def _default(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, ByteSize):
        return f"`{value.human_readable()}`"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def rows() -> list[tuple[str, str, str, bool]]:
    """(variable, default, meaning, secret) for every variable, in model order, once each."""
    seen: dict[str, tuple[str, str, str, bool]] = {}
    for model in MODELS:
        for field in model.model_fields.values():
            if field.alias is None or field.alias in seen:
                continue
            if field.alias in DEFAULTS:
                default = DEFAULTS[field.alias]
            elif field.is_required():
                default = "required"
            else:
                default = _default(field.get_default(call_default_factory=True))
            secret = "SecretStr" in str(field.annotation) or field.annotation is SecretStr
            seen[field.alias] = (field.alias, default, field.description or "", secret)
        if model is S3Config:
            for name, (default, meaning, secret) in EXTRA.items():
                seen.setdefault(name, (name, default, meaning, secret))
    return list(seen.values())


def table() -> str:
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, default, meaning, secret in rows():
        note = " (secret; also `_FILE`)" if secret else ""
        lines.append(f"| `{name}` | {default} | {meaning}{note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
