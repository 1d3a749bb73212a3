"""Configuration: frozen pydantic models, loaded once from the environment.

The variable names are those of the tool backupd replaces (``DB_HOST``, ``STORAGE_BUCKET_NAME``,
...), so an existing ``.env`` keeps working. Every problem is collected and reported at once,
one line per variable. Inner code receives these models and never reads ``os.environ``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from backupd.errors import ConfigError

MIB = 1024 * 1024
GIB = 1024 * MIB
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * GIB


class Engine(enum.StrEnum):
    POSTGRES = "postgres"
    MYSQL = "mysql"
    MARIADB = "mariadb"
    MSSQL = "mssql"


DEFAULT_PORTS = {
    Engine.POSTGRES: 5432,
    Engine.MYSQL: 3306,
    Engine.MARIADB: 3306,
    Engine.MSSQL: 1433,
}


class Compression(enum.StrEnum):
    AUTO = "auto"
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


class StorageType(enum.StrEnum):
    S3 = "s3"
    R2 = "r2"
    LOCAL = "local"


_FROZEN = ConfigDict(
    frozen=True,
    extra="forbid",
    populate_by_name=False,
    hide_input_in_errors=True,
    validate_default=True,
)


class DatabaseConfig(BaseModel):
    """Which database to dump, and how to log in."""

    model_config = _FROZEN

    engine: Engine = Field(
        Engine.POSTGRES, alias="DB_TYPE", description="postgres, mysql, mariadb or mssql"
    )
    host: str = Field(alias="DB_HOST", min_length=1, description="Database server host name")
    port: int | None = Field(
        None,
        alias="DB_PORT",
        ge=1,
        le=65535,
        description="Server port (5432, 3306 or 1433 by engine)",
    )
    user: str = Field(alias="DB_USER", min_length=1, description="Login name")
    password: SecretStr | None = Field(None, alias="DB_PASSWORD", description="Login password")
    database: str = Field(alias="DB_DATABASE", min_length=1, description="Database to back up")

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.engine]

    @field_validator("database")
    @classmethod
    def _no_control_characters(cls, value: str) -> str:
        if any(ord(c) < 32 for c in value):
            raise ValueError("must not contain control characters")
        return value


class S3Config(BaseModel):
    """An S3-compatible bucket: AWS S3, Cloudflare R2, MinIO, ..."""

    model_config = _FROZEN

    kind: Literal[StorageType.S3, StorageType.R2] = StorageType.S3
    endpoint_url: str | None = Field(
        None,
        alias="STORAGE_ENDPOINT_URL",
        description="S3 API endpoint (required for r2; any S3-compatible service)",
    )
    access_key_id: SecretStr | None = Field(
        None, alias="STORAGE_ACCESS_KEY_ID", description="Access key id"
    )
    secret_access_key: SecretStr | None = Field(
        None, alias="STORAGE_SECRET_ACCESS_KEY", description="Secret access key"
    )
    bucket: str = Field(
        alias="STORAGE_BUCKET_NAME", min_length=3, max_length=63, description="Bucket name"
    )
    region: str = Field(
        "us-east-1", alias="STORAGE_REGION", description="Region (s3 only; r2 is always auto)"
    )
    part_size: ByteSize = Field(
        ByteSize(16 * MIB),
        alias="STORAGE_PART_SIZE",
        description="Multipart part size, e.g. 16MiB; on r2 it caps a dump at 10,000 parts",
    )
    upload_concurrency: int = Field(
        4, alias="STORAGE_UPLOAD_CONCURRENCY", ge=1, le=64, description="Parts uploaded at once"
    )

    @property
    def is_aws(self) -> bool:
        return self.kind is StorageType.S3 and self.endpoint_url is None

    @field_validator("endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("part_size")
    @classmethod
    def _part_size_in_range(cls, value: ByteSize) -> ByteSize:
        if not MIN_PART_SIZE <= value <= MAX_PART_SIZE:
            raise ValueError("must be between 5MiB and 5GiB (S3's limits for a part)")
        return value


class LocalConfig(BaseModel):
    """A folder on a mounted volume."""

    model_config = _FROZEN

    kind: Literal[StorageType.LOCAL] = StorageType.LOCAL
    path: Path = Field(alias="STORAGE_LOCAL_PATH", description="Folder for STORAGE_TYPE=local")
    part_size: ByteSize = Field(ByteSize(16 * MIB), alias="STORAGE_PART_SIZE")
    upload_concurrency: int = Field(1, alias="STORAGE_UPLOAD_CONCURRENCY", ge=1, le=64)


StorageConfig = S3Config | LocalConfig


class LayoutConfig(BaseModel):
    """Where objects go and how they are named and compressed."""

    model_config = _FROZEN

    folder: str = Field("backups/", alias="STORAGE_DESTINATION_FOLDER", description="Key prefix")
    timezone: str = Field(
        "UTC", alias="TIMEZONE", description="IANA zone for keys, mails and schedules"
    )
    compression: Compression = Field(
        Compression.AUTO, alias="COMPRESSION", description="auto, none, gzip or zstd"
    )

    @field_validator("folder")
    @classmethod
    def _clean_folder(cls, value: str) -> str:
        cleaned = value.strip("/")
        if any(part in {".", ".."} for part in cleaned.split("/")) or "//" in cleaned:
            raise ValueError("must be a plain path like backups/ (no '.', '..' or empty segments)")
        return cleaned

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name like Europe/Berlin"
            ) from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class TargetConfig(BaseModel):
    """Everything needed to back up one database."""

    model_config = ConfigDict(frozen=True)

    name: str
    database: DatabaseConfig
    storage: S3Config | LocalConfig = Field(discriminator="kind")
    layout: LayoutConfig


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    targets: tuple[TargetConfig, ...]


SECRET_NAMES = frozenset({"DB_PASSWORD", "STORAGE_ACCESS_KEY_ID", "STORAGE_SECRET_ACCESS_KEY"})
# Errors quote the given value only for these: a secret pasted into the wrong variable stays hidden.
ECHOED_NAMES = frozenset({"DB_TYPE", "STORAGE_TYPE", "COMPRESSION", "STORAGE_PART_SIZE"})


class _Reader:
    """Looks variables up, remembering which name supplied each value for error messages."""

    def __init__(self, env: Mapping[str, str], prefix: str = "") -> None:
        self.env = env
        self.prefix = prefix
        self.source: dict[str, str] = {}
        self.problems: list[str] = []

    def candidates(self, name: str) -> list[str]:
        return [f"{self.prefix}_{name}", name] if self.prefix else [name]

    def get(self, name: str) -> str | None:
        for var in self.candidates(name):
            value = self.env.get(var, "")
            file_var = f"{var}_FILE"
            file_path = self.env.get(file_var, "") if name in SECRET_NAMES else ""
            if value and file_path:
                self.problems.append(f"{var}: set either {var} or {file_var}, not both")
                return None
            if file_path:
                self.source[name] = file_var
                return self._read_secret_file(file_var, file_path)
            if value:
                self.source[name] = var
                return value
        return None

    def _read_secret_file(self, var: str, path: str) -> str | None:
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            self.problems.append(f"{var}: cannot read {path}: {exc.strerror or exc}")
        except UnicodeDecodeError:
            self.problems.append(f"{var}: {path} is not UTF-8 text")
        return None

    def gather(self, model: type[BaseModel]) -> dict[str, str]:
        values: dict[str, str] = {}
        for field in model.model_fields.values():
            if field.alias is None:
                continue
            value = self.get(field.alias)
            if value is not None:
                values[field.alias] = value
        return values

    def validate(self, model: type[BaseModel], extra: Mapping[str, Any] | None = None) -> Any:
        raw: dict[str, Any] = {**self.gather(model), **(extra or {})}
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            for error in exc.errors():
                self.problems.append(self.describe(error))
            return None

    def describe(self, error: Any) -> str:
        alias = str(error["loc"][0]) if error["loc"] else "?"
        if error["type"] == "missing":
            return f"{self.name_for(alias)}: required but not set"
        message = str(error["msg"]).removeprefix("Value error, ")
        message = message.replace("Input should be", "must be")
        given = error.get("input")
        if alias in ECHOED_NAMES and isinstance(given, str) and repr(given) not in message:
            message += f" (got {given!r})"
        return f"{self.source.get(alias, self.name_for(alias))}: {message}"

    def name_for(self, alias: str) -> str:
        return " or ".join(self.candidates(alias)) if self.prefix else alias


def _storage_problems(kind: StorageType, reader: _Reader) -> list[str]:
    """Rules that span several storage variables."""
    problems: list[str] = []
    has_id = reader.get("STORAGE_ACCESS_KEY_ID") is not None
    has_secret = reader.get("STORAGE_SECRET_ACCESS_KEY") is not None
    if kind is StorageType.R2:
        if reader.get("STORAGE_ENDPOINT_URL") is None:
            problems.append(
                f"{reader.name_for('STORAGE_ENDPOINT_URL')}: required for STORAGE_TYPE=r2 "
                "(https://<account id>.r2.cloudflarestorage.com)"
            )
        if not (has_id and has_secret):
            problems.append(
                f"{reader.name_for('STORAGE_ACCESS_KEY_ID')}: r2 needs both STORAGE_ACCESS_KEY_ID "
                "and STORAGE_SECRET_ACCESS_KEY"
            )
    elif has_id != has_secret:
        problems.append(
            f"{reader.name_for('STORAGE_ACCESS_KEY_ID')}: "
            "set both STORAGE_ACCESS_KEY_ID and STORAGE_SECRET_ACCESS_KEY, or neither"
        )
    return problems


def _load_storage(reader: _Reader) -> S3Config | LocalConfig | None:
    raw_kind = (reader.get("STORAGE_TYPE") or "s3").lower()
    try:
        kind = StorageType(raw_kind)
    except ValueError:
        var = reader.source.get("STORAGE_TYPE", "STORAGE_TYPE")
        reader.problems.append(f"{var}: must be one of s3, r2, local (got {raw_kind!r})")
        return None
    if kind is StorageType.LOCAL:
        config: S3Config | LocalConfig | None = reader.validate(LocalConfig)
        return config
    reader.problems.extend(_storage_problems(kind, reader))
    extra: dict[str, Any] = {"kind": kind}
    if kind is StorageType.R2:
        extra["STORAGE_REGION"] = "auto"
    config = reader.validate(S3Config, extra)
    return config


def load_target(env: Mapping[str, str], name: str = "default", prefix: str = "") -> TargetConfig:
    """Build one target from ``env``; raise ConfigError listing every problem found."""
    reader = _Reader(env, prefix)
    database = reader.validate(DatabaseConfig)
    storage = _load_storage(reader)
    layout = reader.validate(LayoutConfig)
    if reader.problems or storage is None:
        raise ConfigError(sorted(set(reader.problems), key=reader.problems.index))
    return TargetConfig(name=name, database=database, storage=storage, layout=layout)


def load_settings(env: Mapping[str, str]) -> Settings:
    """Load the whole configuration from a mapping of environment variables."""
    return Settings(targets=(load_target(env),))


def read_environment(environ: Mapping[str, str], dotenv: Path | None) -> dict[str, str]:
    """The process environment over an optional ``.env`` file: real variables win."""
    merged: dict[str, str] = {}
    if dotenv is not None and dotenv.is_file():
        from dotenv import dotenv_values

        merged.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    merged.update(environ)
    return merged
