"""Loading the configuration from environment variables (and a ``.env`` file).

The variable names are those of the tool backupd replaces (``DB_HOST``, ``STORAGE_BUCKET_NAME``,
...), so an existing ``.env`` keeps working. With ``BACKUPD_TARGETS=orders,billing`` each
target reads ``ORDERS_DB_HOST`` first and falls back to ``DB_HOST``. Every problem is collected
and reported at once, one line per variable; this is the only module that reads variables.
"""

from __future__ import annotations

import enum
import errno
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from backupd import envfile
from backupd.config import (
    PATTERN_WORDS,
    AnomalyConfig,
    CoordinationConfig,
    DaemonConfig,
    DatabaseConfig,
    EmailConfig,
    EncryptionConfig,
    Engine,
    HooksConfig,
    LayoutConfig,
    LimitsConfig,
    LocalConfig,
    LogConfig,
    MSSQLConfig,
    RetentionConfig,
    S3Config,
    ScheduleConfig,
    Settings,
    SSLMode,
    StorageType,
    TargetConfig,
    VerifyConfig,
    mail_address_problem,
    shown,
)
from backupd.errors import ConfigError
from backupd.recipients import parse_recipient_list, parse_recipients_file

SECRET_NAMES = frozenset(
    {
        "DB_PASSWORD",
        "STORAGE_ACCESS_KEY_ID",
        "STORAGE_SECRET_ACCESS_KEY",
        "EMAIL_PASSWORD",
        "SEQ_API_KEY",
        "NOTIFY_WEBHOOK_URL",
        "HEALTHCHECK_PING_URL",
        "VERIFY_DB_PASSWORD",
    }
)
# Errors quote the given value only for these: a secret pasted into the wrong variable stays hidden.
ECHOED_NAMES = frozenset(
    {
        "DB_TYPE",
        "DB_SSL_MODE",
        "STORAGE_TYPE",
        "COMPRESSION",
        "STORAGE_PART_SIZE",
        "EMAIL_TLS",
        "EMAIL_ON",
        "LOG_FORMAT",
        "STORAGE_OBJECT_LOCK_MODE",
        "COORDINATION",
    }
)


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
        """The file's text without its final line break. It must be UTF-8 and hold no NUL
        character: a secret goes into a child's environment or a request, where none can."""
        try:
            text = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            self.problems.append(f"{var}: cannot read {path}: {exc.strerror or exc}")
            return None
        except UnicodeDecodeError:
            self.problems.append(f"{var}: {path} is not UTF-8 text")
            return None
        if "\x00" in text:
            self.problems.append(
                f"{var}: {path} contains a NUL character, which no setting can hold"
            )
            return None
        return text

    def gather(self, model: type[BaseModel]) -> dict[str, str]:
        values: dict[str, str] = {}
        for field in model.model_fields.values():
            if field.alias is None:
                continue
            value = self.get(field.alias)
            if value is not None:
                values[field.alias] = canonical_choice(field.annotation, value)
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
        if error["type"] == "string_pattern_mismatch":
            message = PATTERN_WORDS.get(error["ctx"]["pattern"], message)
        given = error.get("input")
        if alias in ECHOED_NAMES and isinstance(given, str) and repr(given) not in message:
            message += f" (got {given!r})"
        return f"{self.source.get(alias, self.name_for(alias))}: {message}"

    def name_for(self, alias: str) -> str:
        return " or ".join(self.candidates(alias)) if self.prefix else alias


def canonical_choice(annotation: Any, value: str) -> str:
    """``value`` spelled as the choice it names when ``annotation`` is a set of choices (an
    enum, or one or None) and it names one in another case or between blanks (``DB_TYPE=
    Postgres``, ``EMAIL_TLS= STARTTLS``); a yes/no without its blanks (``RUN_ON_STARTUP=" true"``,
    as numbers already are); anything else unchanged, for the model to judge."""
    for choices in (annotation, *get_args(annotation)):
        if choices is bool:
            return value.strip()
        if isinstance(choices, type) and issubclass(choices, enum.StrEnum):
            for choice in choices:
                if choice.value.casefold() == value.strip().casefold():
                    return choice.value
    return value


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
    endpoint = reader.get("STORAGE_ENDPOINT_URL")
    if endpoint is not None:
        problem = endpoint_path_problem(kind, endpoint, reader.get("STORAGE_BUCKET_NAME"))
        if problem is not None:
            var = reader.source.get("STORAGE_ENDPOINT_URL", reader.name_for("STORAGE_ENDPOINT_URL"))
            problems.append(f"{var}: {problem}")
    return problems


def endpoint_path_problem(kind: StorageType, endpoint: str, bucket: str | None) -> str | None:
    """What is wrong with the path of an S3 endpoint URL, or None.

    botocore puts the endpoint's path in front of ``/{bucket}/{key}`` in every request. With
    the bucket's name there (Cloudflare's dashboard shows R2's S3 API URL as
    ``https://<account id>.r2.cloudflarestorage.com/<bucket>``), each object is written under
    ``<bucket>/`` plus its key, while a listing asks for an object named after the bucket
    (NoSuchKey): backups "succeed" and ``check`` passes, but list, restore, verify and
    retention never find them. R2's endpoint has no path at all; another store may sit
    behind a proxy's path, which is kept unless it names the bucket."""
    try:
        path = urlsplit(endpoint).path.strip("/")
    except ValueError:
        return None  # the endpoint's own rule names what is wrong with it
    if not path:
        return None
    if kind is StorageType.R2 or (bucket is not None and bucket in path.split("/")):
        return (
            f"must not have a path (/{path}): give the endpoint alone, like "
            "https://<account id>.r2.cloudflarestorage.com; the bucket goes in "
            "STORAGE_BUCKET_NAME and a folder in STORAGE_DESTINATION_FOLDER"
        )
    return None


def local_path_problem(path: Path) -> str | None:
    """What is wrong with a STORAGE_LOCAL_PATH: a file in the way, a missing parent folder
    (backupd creates the last level only, so a typo is not silently created), or a path the
    system refuses to look at: too long (ENAMETOOLONG: over NAME_MAX bytes in one name or
    PATH_MAX in all, 255 and 4096 on Linux) or behind a folder backupd may not enter; else None.
    """
    try:
        if path.exists():
            return None if path.is_dir() else f"{path} is a file, not a folder"
        if not path.parent.is_dir():
            return (
                f"{path}: its parent folder {path.parent} does not exist "
                "(backupd creates only the last level)"
            )
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            return (
                f"{shown(str(path))} is longer than the file system allows "
                "(usually 255 bytes in one name, 4096 in all)"
            )
        return f"cannot use {path}: {error.strerror or error}"
    return None


def _load_storage(reader: _Reader) -> S3Config | LocalConfig | None:
    raw_kind = (reader.get("STORAGE_TYPE") or "s3").lower()
    try:
        kind = StorageType(raw_kind)
    except ValueError:
        var = reader.source.get("STORAGE_TYPE", "STORAGE_TYPE")
        reader.problems.append(f"{var}: must be one of s3, r2, local (got {raw_kind!r})")
        return None
    if kind is StorageType.LOCAL:
        for name in ("STORAGE_OBJECT_LOCK_DAYS", "STORAGE_OBJECT_LOCK_MODE"):
            if reader.get(name) is not None:
                reader.problems.append(
                    f"{reader.source[name]}: Object Lock needs an S3 bucket; "
                    "STORAGE_TYPE=local cannot lock files"
                )
        config: S3Config | LocalConfig | None = reader.validate(LocalConfig)
        if isinstance(config, LocalConfig):
            problem = local_path_problem(config.path)
            if problem is not None:
                var = reader.source.get("STORAGE_LOCAL_PATH", "STORAGE_LOCAL_PATH")
                reader.problems.append(f"{var}: {problem}")
        return config
    reader.problems.extend(_storage_problems(kind, reader))
    extra: dict[str, Any] = {"kind": kind}
    if kind is StorageType.R2:
        extra["STORAGE_REGION"] = "auto"
    config = reader.validate(S3Config, extra)
    return config


def load_target(
    env: Mapping[str, str], name: str = "default", prefix: str = "", named: bool = False
) -> TargetConfig:
    """Build one target from ``env``; raise ConfigError listing every problem found."""
    reader = _Reader(env, prefix)
    database = reader.validate(DatabaseConfig)
    storage = _load_storage(reader)
    layout = reader.validate(LayoutConfig)
    schedule = reader.validate(ScheduleConfig)
    email = reader.validate(EmailConfig)
    hooks = reader.validate(HooksConfig)
    mssql = reader.validate(MSSQLConfig)
    encryption = _load_encryption(reader)
    retention = reader.validate(RetentionConfig)
    limits = reader.validate(LimitsConfig)
    verify = reader.validate(VerifyConfig)
    anomaly = reader.validate(AnomalyConfig)
    if email is not None and email.enabled:
        reader.problems += _email_problems(email, reader)
    if database is not None:
        reader.problems += _tls_problems(database, reader)
    if reader.problems or storage is None:
        raise ConfigError(sorted(set(reader.problems), key=reader.problems.index))
    return TargetConfig(
        name=name,
        named=named,
        database=database,
        storage=storage,
        layout=layout,
        schedule=schedule,
        email=email,
        hooks=hooks,
        mssql=mssql,
        encryption=encryption,
        retention=retention,
        limits=limits,
        verify=verify,
        anomaly=anomaly,
    )


def _load_encryption(reader: _Reader) -> EncryptionConfig:
    """The recipients of both variables, each checked: a problem names the variable and the
    item or line, never the value (a secret key pasted by mistake stays hidden)."""
    config: EncryptionConfig | None = reader.validate(EncryptionConfig)
    if config is None:
        return EncryptionConfig.model_validate({})  # the problem is recorded already
    recipients: list[str] = []
    if config.recipients_text is not None:
        found, problems = parse_recipient_list(config.recipients_text)
        variable = reader.source.get("ENCRYPTION_RECIPIENTS", "ENCRYPTION_RECIPIENTS")
        reader.problems += [f"{variable}: {problem}" for problem in problems]
        recipients += found
    if config.recipients_file is not None:
        variable = reader.source.get("ENCRYPTION_RECIPIENTS_FILE", "ENCRYPTION_RECIPIENTS_FILE")
        path = config.recipients_file
        try:
            found, problems = parse_recipients_file(path.read_text(encoding="utf-8"))
        except OSError as exc:
            found, problems = [], [f"cannot read it: {exc.strerror or exc}"]
        except UnicodeDecodeError:
            found, problems = [], ["is not UTF-8 text"]
        reader.problems += [f"{variable}: {path} {problem}" for problem in problems]
        recipients += found
    return config.model_copy(update={"recipients": tuple(dict.fromkeys(recipients))})


PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
TLS_FILE_PEEK = 1024 * 1024
"""The most of a certificate file read to find its first PEM certificate."""


def tls_file_problem(path: Path, certificate: bool) -> str | None:
    """What keeps ``path`` from being a file the client tools can read: missing, a folder,
    or unreadable by backupd (the tools run as backupd's user); with ``certificate``, also one
    holding no PEM certificate (a DER file, a key in its place), which libpq and the MariaDB
    client refuse with a less telling error. A key file is opened but never read: its contents
    never reach a message. Else None."""
    try:
        if path.is_dir():
            return f"{path} is a folder, not a file"
        with path.open("rb") as file:
            head = file.read(TLS_FILE_PEEK) if certificate else b""
    except OSError as error:
        if error.errno == errno.ENOENT:
            return f"{path} does not exist"
        return f"cannot read {path}: {error.strerror or error}"
    if certificate and PEM_CERTIFICATE not in head:
        return f"{path} holds no PEM certificate (a {PEM_CERTIFICATE.decode()} block)"
    return None


# MariaDB Connector/C (the MariaDB 10.11 client tools, tested): ``ssl`` alone, with or without
# ``ssl-ca``, goes on unencrypted when the server offers no TLS; only
# ``ssl-verify-server-cert`` refuses that, and it always checks the host name too.
MARIADB_UNENFORCEABLE = {
    SSLMode.REQUIRE: (
        "require cannot be enforced by the MariaDB client tools: without certificate "
        "verification they go on unencrypted when the server offers no TLS; use verify-full "
        "with DB_SSL_CA, or prefer"
    ),
    SSLMode.VERIFY_CA: (
        "verify-ca cannot be had with the MariaDB client tools: they enforce TLS only together "
        "with the host-name check; use verify-full (the certificate must name DB_HOST)"
    ),
}


def _tls_problems(database: DatabaseConfig, reader: _Reader) -> list[str]:
    """Rules that span the ``DB_SSL_*`` variables and ``DB_TYPE`` (see the README's "TLS to
    the database"): each file readable, a certificate and its key together, a CA exactly when
    the mode verifies (libpq's verify-ca and verify-full need one: backupd never falls back to
    ``~/.postgresql/root.crt``), no client certificate with TLS off, the modes the engine's
    client tools can enforce, and nothing for SQL Server, whose sqlcmd has no such options."""

    def name(alias: str) -> str:
        return reader.source.get(alias, reader.name_for(alias))

    files = {
        "DB_SSL_CA": database.ssl_ca,
        "DB_SSL_CERT": database.ssl_cert,
        "DB_SSL_KEY": database.ssl_key,
    }
    mode = database.ssl_mode
    if database.engine is Engine.MSSQL:
        given = ["DB_SSL_MODE"] * (mode is not None) + [a for a, p in files.items() if p]
        return [
            f"{name(alias)}: not used for DB_TYPE=mssql (sqlcmd takes no such settings; "
            "see MSSQL_TRUST_SERVER_CERTIFICATE)"
            for alias in given
        ]
    problems = [
        f"{name(alias)}: {problem}"
        for alias, path in files.items()
        if path is not None
        and (problem := tls_file_problem(path, certificate=alias != "DB_SSL_KEY")) is not None
    ]
    if (database.ssl_cert is None) != (database.ssl_key is None):
        problems.append(f"{name('DB_SSL_CERT')}: set both DB_SSL_CERT and DB_SSL_KEY, or neither")
    if mode is not None and mode.verifies and database.ssl_ca is None:
        problems.append(
            f"{name('DB_SSL_CA')}: required for DB_SSL_MODE={mode} (the CA certificate the "
            "server's must chain to)"
        )
    if database.ssl_ca is not None and (mode is None or not mode.verifies):
        problems.append(
            f"{name('DB_SSL_CA')}: used only with DB_SSL_MODE=verify-ca or verify-full "
            f"(DB_SSL_MODE is {mode or 'unset'})"
        )
    if mode is SSLMode.DISABLE and database.ssl_cert is not None:
        problems.append(
            f"{name('DB_SSL_CERT')}: a client certificate needs TLS, which DB_SSL_MODE=disable "
            "turns off"
        )
    if (
        database.engine is not Engine.POSTGRES
        and mode is not None
        and mode in MARIADB_UNENFORCEABLE
    ):
        problems.append(f"{name('DB_SSL_MODE')}: {MARIADB_UNENFORCEABLE[mode]}")
    return problems


def _email_problems(email: EmailConfig, reader: _Reader) -> list[str]:
    """With EMAIL_SMTP set, mail needs a sender and recipients, and credentials need TLS."""
    problems = []
    if not email.sender:
        problems.append(f"{reader.name_for('EMAIL_FROM')}: required when EMAIL_SMTP is set")
    if not email.recipients:
        problems.append(f"{reader.name_for('EMAIL_TO')}: required when EMAIL_SMTP is set")
    named = [("EMAIL_FROM", email.sender)] if email.sender else []
    named += [("EMAIL_TO", address) for address in email.recipients]
    problems += [
        f"{reader.name_for(variable)}: {problem}"
        for variable, address in named
        if (problem := mail_address_problem(address)) is not None
    ]
    if (email.user is None) != (email.password is None):
        variable = reader.name_for("EMAIL_PASSWORD")
        problems.append(f"{variable}: set both EMAIL_USER and EMAIL_PASSWORD, or neither")
    return problems


TARGET_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def target_names(raw: str) -> tuple[list[str], list[str]]:
    """The names in ``BACKUPD_TARGETS`` and the problems with them."""
    names = [name.strip() for name in raw.split(",") if name.strip()]
    problems = [
        f"BACKUPD_TARGETS: {name!r} is not a valid target name (letters, digits and _ only)"
        for name in names
        if not TARGET_NAME.match(name)
    ]
    upper = [name.upper() for name in names]
    problems += [
        f"BACKUPD_TARGETS: {name!r} is named twice"
        for name in sorted(set(upper))
        if upper.count(name) > 1
    ]
    if not names:
        problems.append("BACKUPD_TARGETS: set but names no target")
    return names, problems


def load_settings(env: Mapping[str, str]) -> Settings:
    """Load the whole configuration from a mapping of environment variables."""
    problems: list[str] = []
    targets: list[TargetConfig] = []
    raw_names = env.get("BACKUPD_TARGETS", "")
    if raw_names.strip():
        names, problems = target_names(raw_names)
        wanted = [(name, name.upper(), True) for name in names if TARGET_NAME.match(name)]
    else:
        wanted = [("default", "", False)]
    for name, prefix, named in wanted:
        try:
            targets.append(load_target(env, name, prefix, named))
        except ConfigError as error:
            problems += error.problems
    reader = _Reader(env)
    daemon = reader.validate(DaemonConfig)
    logs = reader.validate(LogConfig)
    coordination = reader.validate(CoordinationConfig)
    problems += reader.problems
    if coordination is not None and coordination.enabled:
        problems += coordination_problems(targets)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))  # TIMEZONE is read twice
    return Settings(targets=tuple(targets), daemon=daemon, logs=logs, coordination=coordination)


def coordination_problems(targets: list[TargetConfig]) -> list[str]:
    """COORDINATION=storage needs every target in an object store with conditional writes.

    A local folder is refused rather than emulated: replicas on several hosts would share it
    over a network file system, where exclusive creates and locks are not reliably atomic, and
    replicas on one host gain nothing from coordinating.
    """
    return [
        f"{target.variable_prefix}STORAGE_TYPE: "
        "COORDINATION=storage needs s3 or r2 (conditional writes); a local folder cannot be "
        "shared safely between replicas: run one replica with COORDINATION=none"
        for target in targets
        if isinstance(target.storage, LocalConfig)
    ]


def read_environment(
    environ: Mapping[str, str], dotenv: Path | None, required: bool = False
) -> dict[str, str]:
    """The process environment over an optional ``.env`` file: real variables win.

    The file is read literally (``envfile``); a malformed line is a ConfigError. ``required``
    (an explicit ``--env-file``) makes a missing file a ConfigError too; otherwise a missing
    file is no file.
    """
    merged: dict[str, str] = {}
    if dotenv is not None and (required or dotenv.exists()):
        if not dotenv.exists():
            raise ConfigError([f"--env-file {dotenv}: no such file"])
        parsed = envfile.read(dotenv, f"--env-file {dotenv}" if required else None)
        if parsed.problems:
            raise ConfigError(parsed.problems)
        merged.update(parsed.values)
    merged.update(environ)
    return merged
