"""Configuration as data: frozen pydantic models, one per concern.

``environment.py`` builds them from environment variables; inner code receives these models
and never reads ``os.environ``. Secrets are ``SecretStr`` and print as ``**********``.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import re
import socket
from email.utils import getaddresses
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)

from backupd.retention import Policy, duration_problem
from backupd.schedule import cron_problem

MIB = 1024 * 1024
GIB = 1024 * MIB
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * GIB
MIN_LOCAL_PART_SIZE = MIB
MAX_LOCAL_PART_SIZE = GIB
# Together with the interpreter and the storage client (about 70 MiB) these keep a backup
# under 100 MiB of memory: (2 + 1) parts of 8 MiB. Raise both on fast, distant links.
DEFAULT_PART_SIZE = 8 * MIB
DEFAULT_UPLOAD_CONCURRENCY = 2
MAX_CONCURRENT_LIMIT = 64
"""The most MAX_CONCURRENT_BACKUPS may be."""


SHOWN_CHARACTERS = 40
"""The most of a given value a problem line quotes."""


def shown(value: str) -> str:
    """``value`` quoted for a problem line; over ``SHOWN_CHARACTERS`` characters it is cut,
    and its length follows (``'AAAA...'... (300 characters)``), so the line stays readable."""
    if len(value) <= SHOWN_CHARACTERS:
        return repr(value)
    return f"{value[:SHOWN_CHARACTERS]!r}... ({len(value)} characters)"


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


class SSLMode(enum.StrEnum):
    """How the connection to the database is protected: libpq's ``sslmode`` names (PostgreSQL
    documentation, "SSL Support": "Protection Provided in Different Modes"), without ``allow``.
    Unset (None where a config holds one): the client tools' own defaults."""

    DISABLE = "disable"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"

    @property
    def verifies(self) -> bool:
        """Whether the server's certificate is checked against ``DB_SSL_CA``."""
        return self in (SSLMode.VERIFY_CA, SSLMode.VERIFY_FULL)


class Compression(enum.StrEnum):
    AUTO = "auto"
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


class ObjectLockMode(enum.StrEnum):
    GOVERNANCE = "GOVERNANCE"
    COMPLIANCE = "COMPLIANCE"


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


WORD_PATTERN = r"^[A-Za-z0-9_]+$"
"""A name part of database names (VERIFY_DRILL_DATABASE_PREFIX)."""
REPLICA_PATTERN = r"^[A-Za-z0-9_.@:-]+$"
"""A replica's name in claims (REPLICA_ID): a host name, a pod's, ``user@host:port``."""
PATTERN_WORDS = {
    WORD_PATTERN: "must hold only letters A-Z and a-z, digits and underscores",
    REPLICA_PATTERN: "must hold only letters A-Z and a-z, digits and . @ : _ -",
}
"""What each pattern asks for, in words: pydantic says "String should match pattern '...'"."""


def one_word(value: str) -> str:
    """A host name or login without surrounding blanks: a value written as a YAML block
    (``DB_HOST: |``, a Kubernetes ConfigMap) ends with a line break, which the resolver (or the
    server, for a login name) took as part of it: every backup failed, on a name that looked
    right, and ``check`` printed its lines broken. Raises ValueError when blank or holding a
    control character."""
    value = value.strip()
    if not value:
        raise ValueError("is blank")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


def host_alone(value: str, port_variable: str) -> str:
    """``value`` when it is not ``host:port`` (one colon, digits after it; an IPv6 address has
    several): a port written into the host name reached the resolver as part of the name, and
    the failure ("could not translate host name") did not point to the port's own variable.
    Raises ValueError naming ``port_variable``."""
    if re.fullmatch(r"[^:\[\]]+:[0-9]+", value):
        raise ValueError(f"must be a host name alone; set its port in {port_variable}")
    return value


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
    database: str = Field(
        alias="DB_DATABASE",
        min_length=1,
        description="Database to back up; a comma-separated list; or * for all",
    )
    ssl_mode: SSLMode | None = Field(
        None,
        alias="DB_SSL_MODE",
        description="TLS to the database: disable, prefer, require, verify-ca or verify-full "
        "(see TLS to the database); unset: the client tools' defaults",
    )
    ssl_ca: Path | None = Field(
        None,
        alias="DB_SSL_CA",
        description="PEM file of the CA certificate(s) the server's must chain to "
        "(verify-ca, verify-full)",
    )
    ssl_cert: Path | None = Field(
        None, alias="DB_SSL_CERT", description="PEM client certificate (with DB_SSL_KEY)"
    )
    ssl_key: Path | None = Field(
        None, alias="DB_SSL_KEY", description="The client certificate's private key file"
    )

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.engine]

    @field_validator("host", "user")
    @classmethod
    def _one_word(cls, value: str) -> str:
        return one_word(value)

    @field_validator("host")
    @classmethod
    def _no_port(cls, value: str) -> str:
        return host_alone(value, "DB_PORT")

    @field_validator("database")
    @classmethod
    def _database_list(cls, value: str) -> str:
        if any(ord(c) < 32 for c in value):
            raise ValueError("must not contain control characters")
        names = [name.strip() for name in value.split(",")]
        if value.strip() != "*" and (not all(names) or "*" in names):
            raise ValueError("must be a database name, a comma-separated list of names, or *")
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"names {', '.join(twice)} more than once")
        return value.strip()

    @property
    def all_databases(self) -> bool:
        """``DB_DATABASE=*``: every database on the server."""
        return self.database == "*"

    @property
    def databases(self) -> tuple[str, ...]:
        """The databases named in ``DB_DATABASE`` (empty for ``*``)."""
        return () if self.all_databases else tuple(n.strip() for n in self.database.split(","))


_HOST_NAME = re.compile(r"((?!-)[A-Za-z0-9-]{1,63}(?<!-)\.)*(?!-)[A-Za-z0-9-]{1,63}(?<!-)\.?")
_BUCKET = re.compile(r"[A-Za-z0-9._-]+")
_REGION = re.compile(r"(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)")
_NOT_A_HOST = "its host must be a DNS name (letters, digits, '-' and '.') or an IP address"


def _usable_host(host: str, netloc: str) -> bool:
    """A DNS name of at most 255 characters, or an IPv6 address written in brackets."""
    if f"[{host}]" in netloc.lower():
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return len(host) <= 255 and _HOST_NAME.fullmatch(host) is not None


def _resolvable(host: str, netloc: str) -> bool:
    """Whether the resolver can be asked for ``host`` at all: Python encodes a name with the
    IDNA codec before looking it up, which refuses an empty label (``seq..local``) or one
    over 63 characters with a UnicodeError (urllib3: LocationParseError) that no HTTP client
    turns into a connection error. An IPv6 address in brackets is not a name."""
    if f"[{host}]" in netloc.lower():
        return True
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def http_url_problem(url: str, example: str, unreadable: str | None = None) -> str | None:
    """What keeps ``url`` from being an HTTP address backupd can send to (``SEQ_URL``, the
    hook URLs), or None: ``http://`` or ``https://``, a host, a port from 1 to 65535 if any,
    no blanks. Looser than ``endpoint_problem``'s S3 rule: a Compose service name with ``_``
    or an internationalised name is a host aiohttp reaches. ``example`` shows the form;
    ``unreadable`` replaces the problem of a host that cannot be read (an unclosed ``[``)."""
    if not url.startswith(("http://", "https://")):
        return "must start with http:// or https://"
    if any(character.isspace() for character in url):
        return "must not contain blanks (spaces, tabs or line breaks)"
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed [ of an IPv6 address
        return unreadable or f"its host cannot be read; write it like {example}"
    if not parts.hostname:
        return f"names no host; write it like {example}"
    if not _resolvable(parts.hostname, parts.netloc):
        return (
            "its host has an empty part (two dots in a row) or a part over 63 characters, "
            f"which no name can have; write it like {example}"
        )
    try:
        port = parts.port
    except ValueError:  # not digits, or over 65535
        port = 0
    if port is not None and not 1 <= port <= 65535:
        return "its port must be a number from 1 to 65535"
    return None


def endpoint_problem(url: str) -> str | None:
    """What keeps ``url`` from being an S3 endpoint (``STORAGE_ENDPOINT_URL``), or None:
    ``http_url_problem``'s rule, and a host as botocore takes it.

    botocore refuses any other host when the client is made (``is_valid_endpoint_url`` and
    ``is_valid_ipv6_endpoint_url`` in ``botocore/utils.py``): dot-separated labels of letters,
    digits and ``-`` (at most 63 characters each, 255 in all, none starting or ending with
    ``-``; one trailing dot allowed), an IPv4 address, or an IPv6 address in brackets. The
    port, which botocore leaves to the HTTP client, is 1 to 65535. Blanks are refused
    anywhere: botocore refuses tabs and line breaks, and a space is never part of a URL.
    """
    example = "https://s3.example.com or http://minio:9000"
    if (problem := http_url_problem(url, example, _NOT_A_HOST)) is not None:
        return problem
    parts = urlsplit(url)
    return None if _usable_host(parts.hostname or "", parts.netloc) else _NOT_A_HOST


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
        ByteSize(DEFAULT_PART_SIZE),
        alias="STORAGE_PART_SIZE",
        description=(
            "Multipart part size, e.g. 16MiB; on r2 10,000 parts cap a dump (unset: grown for"
            " databases estimated over 39 GiB); local: 1MiB to 1GiB, default 16MiB"
        ),
    )
    upload_concurrency: int = Field(
        DEFAULT_UPLOAD_CONCURRENCY,
        alias="STORAGE_UPLOAD_CONCURRENCY",
        ge=1,
        le=64,
        description="Parts uploaded at once; memory is about part size x (this + 1); "
        "local: default 1",
    )
    object_lock_days: int | None = Field(
        None,
        alias="STORAGE_OBJECT_LOCK_DAYS",
        ge=1,
        le=36500,
        description="Write every backup and manifest under Object Lock for N days "
        "(the bucket must have Object Lock enabled)",
    )
    object_lock_mode: ObjectLockMode = Field(
        ObjectLockMode.GOVERNANCE,
        alias="STORAGE_OBJECT_LOCK_MODE",
        description="GOVERNANCE or COMPLIANCE (COMPLIANCE cannot be lifted, even by root)",
    )

    @property
    def is_aws(self) -> bool:
        return self.kind is StorageType.S3 and self.endpoint_url is None

    @field_validator("endpoint_url")
    @classmethod
    def _usable_endpoint(cls, value: str | None) -> str | None:
        problem = None if value is None else endpoint_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        """S3's bucket naming rules, as loose as S3-compatible stores need them: 3 to 63
        letters, digits, ``.``, ``-`` and ``_``. That is botocore's character set, checked
        before every request (``VALID_BUCKET`` in ``botocore/handlers.py``); AWS has allowed
        new buckets only lower case, digits, ``.`` and ``-`` since 2018, but older ones and
        other stores' may hold upper case and ``_``. A pasted ``s3://`` URL gets a hint."""
        if "://" in value:
            raise ValueError(
                "is a URL; give the bucket's name alone, without s3:// or a host "
                "(a folder goes in STORAGE_DESTINATION_FOLDER)"
            )
        if _BUCKET.fullmatch(value) is None:
            raise ValueError(
                "may hold only letters, digits, '.', '-' and '_' (S3's bucket naming rules)"
            )
        return value

    @field_validator("region")
    @classmethod
    def _region_name(cls, value: str) -> str:
        """A host label, botocore's rule for a region (``validate_region_name`` in
        ``botocore/utils.py``, checked when the client is made): at most 63 letters, digits and
        ``-``, neither starting nor ending with ``-``, and not digits alone."""
        if _REGION.fullmatch(value) is None:
            raise ValueError(
                "must be a region name like eu-central-1 (letters, digits and '-'; "
                "no spaces or brackets)"
            )
        return value

    @field_validator("object_lock_mode", mode="before")
    @classmethod
    def _upper_mode(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

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

    @field_validator("part_size")
    @classmethod
    def _part_size_in_range(cls, value: ByteSize) -> ByteSize:
        """1 MiB to 1 GiB. No store limits a file's parts, but each part is a buffer held
        whole in memory until it is written, STORAGE_UPLOAD_CONCURRENCY + 2 of them at most:
        above 1 GiB a backup may take gigabytes (100GiB fails with MemoryError), and below
        1 MiB handing each part to a worker thread costs more than writing it (1-byte parts
        crawl, 0 never ends). A file gains nothing from larger parts."""
        if not MIN_LOCAL_PART_SIZE <= value <= MAX_LOCAL_PART_SIZE:
            raise ValueError(
                "must be between 1MiB and 1GiB for STORAGE_TYPE=local "
                "(each part is a buffer in memory)"
            )
        return value


StorageConfig = S3Config | LocalConfig


class LayoutConfig(BaseModel):
    """Where objects go and how they are named and compressed."""

    model_config = _FROZEN

    folder: str = Field("backups/", alias="STORAGE_DESTINATION_FOLDER", description="Key prefix")
    timezone: str = Field(
        "UTC", alias="TIMEZONE", description="IANA zone for keys, mails, schedules and logs"
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
        """An IANA zone name. ``ZoneInfo`` opens it as a file below its search path or in the
        tzdata package, so a name that is not a zone can also fail as a file would: a folder of
        zones (``Europe``) with IsADirectoryError, a name over 255 bytes with OSError."""
        try:
            ZoneInfo(value)
        except IsADirectoryError:
            raise ValueError(
                f"{shown(value)} is a folder of time zones, not a time zone; "
                "name one, like Europe/Berlin"
            ) from None
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"{shown(value)} is not a time zone; use an IANA name like Europe/Berlin"
            ) from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _count(what: str) -> str:
    return f"Keep the newest backup of each of the last N {what} that have one"


class RetentionConfig(BaseModel):
    """Which backups pruning keeps; unset, nothing is ever deleted. Applies per database."""

    model_config = _FROZEN

    keep_last: int | None = Field(
        None, alias="RETENTION_KEEP_LAST", ge=0, description="Keep the N newest complete backups"
    )
    keep_hourly: int | None = Field(
        None, alias="RETENTION_KEEP_HOURLY", ge=0, description=_count("hours")
    )
    keep_daily: int | None = Field(
        None, alias="RETENTION_KEEP_DAILY", ge=0, description=_count("days")
    )
    keep_weekly: int | None = Field(
        None, alias="RETENTION_KEEP_WEEKLY", ge=0, description=_count("ISO weeks")
    )
    keep_monthly: int | None = Field(
        None, alias="RETENTION_KEEP_MONTHLY", ge=0, description=_count("months")
    )
    keep_yearly: int | None = Field(
        None, alias="RETENTION_KEEP_YEARLY", ge=0, description=_count("years")
    )
    keep_within: str | None = Field(
        None,
        alias="RETENTION_KEEP_WITHIN",
        description="Keep every backup newer than this: 36h, 30d, 6w, 6m, 1y",
    )
    abort_uploads_after: str = Field(
        "24h",
        alias="RETENTION_ABORT_UPLOADS_AFTER",
        description="With a policy: abort multipart uploads that sent no part for this long, "
        "and delete objects without a manifest older than this",
    )

    @field_validator("keep_within", "abort_uploads_after")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = duration_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value.strip().lower()

    @property
    def policy(self) -> Policy:
        return Policy(
            last=self.keep_last or 0,
            hourly=self.keep_hourly or 0,
            daily=self.keep_daily or 0,
            weekly=self.keep_weekly or 0,
            monthly=self.keep_monthly or 0,
            yearly=self.keep_yearly or 0,
            within=self.keep_within,
        )


class ScheduleConfig(BaseModel):
    """When a target runs under ``backupd run``."""

    model_config = _FROZEN

    cron: str = Field(
        "0 */12 * * *",
        alias="CRON_SCHEDULE",
        description="5-field cron, or 6 fields with seconds first; evaluated in TIMEZONE",
    )
    run_on_startup: bool = Field(
        True, alias="RUN_ON_STARTUP", description="Run once when the daemon starts"
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        problem = cron_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return " ".join(value.split())


class DaemonConfig(BaseModel):
    """Process-wide settings of ``backupd run``."""

    model_config = _FROZEN

    max_concurrent: int = Field(
        2,
        alias="MAX_CONCURRENT_BACKUPS",
        ge=1,
        le=MAX_CONCURRENT_LIMIT,
        description="Dumps running at once, all targets together",
    )
    shutdown_timeout: float = Field(
        30,
        alias="SHUTDOWN_TIMEOUT",
        ge=0,
        allow_inf_nan=False,
        description="Seconds running backups get to finish on SIGTERM",
    )
    http_port: int = Field(
        9180,
        alias="HTTP_PORT",
        ge=0,
        le=65535,
        description="Port of /healthz and /metrics; 0 turns it off",
    )
    http_host: str = Field(
        "0.0.0.0", alias="HTTP_HOST", description="Address /healthz and /metrics listen on"
    )

    @field_validator("http_host")
    @classmethod
    def _bare_address(cls, value: str) -> str:
        """An IPv6 address as URLs write it (``[::1]``) is the address without its brackets:
        ``backupd healthcheck`` took that form, ``run`` called it no address of this machine."""
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            return value[1:-1]
        return value


class Coordination(enum.StrEnum):
    NONE = "none"
    STORAGE = "storage"


def _host_name() -> str:
    return socket.gethostname() or "backupd"


class CoordinationConfig(BaseModel):
    """How several replicas of ``backupd run`` share one schedule (see ``coordination.py``)."""

    model_config = _FROZEN

    mode: Coordination = Field(
        Coordination.NONE,
        alias="COORDINATION",
        description="none, or storage: replicas claim each slot in the bucket, so it runs once",
    )
    replica_id: str = Field(
        default_factory=_host_name,
        alias="REPLICA_ID",
        min_length=1,
        max_length=128,
        pattern=REPLICA_PATTERN,
        description="This replica's name in claims",
    )
    lease: float = Field(
        60,
        alias="COORDINATION_LEASE",
        ge=2,
        le=3600,
        description="Seconds a claim holds without renewal (renewed every third), e.g. 60s",
    )

    @field_validator("lease", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        return value.strip().removesuffix("s") if isinstance(value, str) else value

    @property
    def enabled(self) -> bool:
        return self.mode is Coordination.STORAGE


class EmailTLS(enum.StrEnum):
    STARTTLS = "starttls"
    SSL = "ssl"
    NONE = "none"


class EmailOn(enum.StrEnum):
    ALWAYS = "always"
    FAILURE = "failure"


def mail_address_problem(text: str) -> str | None:
    """What keeps ``text`` from being one mail address (``name@example.com``, or
    ``Name <name@example.com>``), or None. The address needs a non-empty local part and, after
    an ``@``, a domain, and no blanks (RFC 5322's addr-spec, without its rare quoted and
    commented forms); ``email.utils.getaddresses`` takes a display name apart. A bare local
    part (``root``) is taken as it is: a local relay completes it with its own domain."""
    found = getaddresses([text])
    if len(found) > 1:
        return f"{text!r} holds more than one address"
    address = found[0][1] if found else ""
    bare = text.strip() if "<" not in text else address
    local, at, domain = address.rpartition("@") if "@" in address else (address, "@", "-")
    if not at or not local or not domain or "@" in local:
        return f"{text!r} is not a mail address (write it like name@example.com)"
    if any(character.isspace() for character in bare):
        return f"{text!r} is not a mail address: it holds a blank"
    return None


class EmailConfig(BaseModel):
    """Mail about each backup, over SMTP. Off unless ``EMAIL_SMTP`` is set."""

    model_config = _FROZEN

    smtp: str | None = Field(
        None, alias="EMAIL_SMTP", description="SMTP server host; unset: no mail"
    )
    port: int | None = Field(
        None, alias="EMAIL_PORT", ge=1, le=65535, description="SMTP port (465 for ssl, else 587)"
    )
    sender: str | None = Field(None, alias="EMAIL_FROM", description="From address")
    to: str | None = Field(None, alias="EMAIL_TO", description="Recipients, comma-separated")
    user: str | None = Field(None, alias="EMAIL_USER", description="SMTP login")
    password: SecretStr | None = Field(None, alias="EMAIL_PASSWORD", description="SMTP password")
    tls: EmailTLS | None = Field(
        None,
        alias="EMAIL_TLS",
        description="starttls, ssl or none (forced); unset: STARTTLS demanded with credentials",
    )
    on: EmailOn = Field(EmailOn.ALWAYS, alias="EMAIL_ON", description="always or failure")

    @field_validator("smtp")
    @classmethod
    def _relay_host(cls, value: str | None) -> str | None:
        """A host name or address the resolver can be asked for; a port goes in EMAIL_PORT."""
        if value is None:
            return None
        value = host_alone(value.strip(), "EMAIL_PORT")
        if "://" in value:
            raise ValueError(
                "must be a host name alone, not a URL; set its port in EMAIL_PORT and "
                "implicit TLS (smtps://) with EMAIL_TLS=ssl"
            )
        if not value or not _resolvable(value, value):
            raise ValueError(
                "its host has an empty part (two dots in a row) or a part over 63 characters, "
                "which no name can have"
            )
        return value

    @field_validator("sender", "to")
    @classmethod
    def _without_surrounding_blanks(cls, value: str | None) -> str | None:
        """A value written as a YAML block (``EMAIL_FROM: |``, a Kubernetes ConfigMap) ends
        with a line break, which no mail header may hold: every mail, and ``check
        --send-test``, failed on it while ``check`` said the relay was fine."""
        return value.strip() if value is not None else None

    @property
    def enabled(self) -> bool:
        return self.smtp is not None

    @property
    def recipients(self) -> list[str]:
        return [address.strip() for address in (self.to or "").split(",") if address.strip()]

    @property
    def effective_tls(self) -> EmailTLS:
        if self.tls is not None:
            return self.tls
        return EmailTLS.SSL if self.port == 465 else EmailTLS.STARTTLS

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 465 if self.effective_tls is EmailTLS.SSL else 587


class HooksConfig(BaseModel):
    """HTTP notifications: a JSON webhook per backup, and a dead-man's-switch ping per run."""

    model_config = _FROZEN

    webhook_url: SecretStr | None = Field(
        None, alias="NOTIFY_WEBHOOK_URL", description="Gets a JSON POST per backup"
    )
    ping_url: SecretStr | None = Field(
        None,
        alias="HEALTHCHECK_PING_URL",
        description="healthchecks.io-style: /start, then the bare URL or /fail",
    )

    @field_validator("webhook_url", "ping_url")
    @classmethod
    def _http_url(cls, value: SecretStr | None) -> SecretStr | None:
        # The problem never quotes the URL: it may hold a token. A space is let through (the
        # HTTP client sends it encoded); tabs and line breaks are not.
        if value is not None:
            url = value.get_secret_value().replace(" ", "%20")
            if problem := http_url_problem(url, "https://hooks.example.com/..."):
                raise ValueError(problem)
        return value


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


def url_spellings(url: str) -> list[str]:
    """``url`` as written and as the HTTP clients that send to it write it in their errors:
    requests (seqlog's posts to Seq) and yarl (aiohttp's), which percent-encode what a URL may
    not hold and decode what needs no encoding, each in its own way: a password ``pa|s%7E``
    reads ``pa%7Cs~``, a query ``key=a b`` reads ``key=a%20b`` or ``key=a+b``. Masked only as
    written, a secret was printed in a spelling anybody can read back."""
    from requests.utils import requote_uri
    from yarl import URL

    spellings = [url, requote_uri(url)]
    with contextlib.suppress(ValueError):
        spellings.append(str(URL(url)))
    return list(dict.fromkeys(spellings))


class LogConfig(BaseModel):
    """Where log lines go: stdout always, Seq when ``SEQ_URL`` is set."""

    model_config = _FROZEN

    level: str = Field("INFO", alias="LOG_LEVEL", description="DEBUG, INFO, WARNING or ERROR")
    format: LogFormat = Field(LogFormat.TEXT, alias="LOG_FORMAT", description="text or json")
    seq_url: str | None = Field(None, alias="SEQ_URL", description="Seq server URL; unset: no Seq")
    seq_api_key: SecretStr | None = Field(None, alias="SEQ_API_KEY", description="Seq API key")
    environment: str = Field(
        "production", alias="APP_ENV", description="Environment property in Seq"
    )
    timezone: str = Field("UTC", alias="TIMEZONE", description="Zone of log timestamps")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return LayoutConfig._known_zone(value)

    @field_validator("seq_url")
    @classmethod
    def _seq_address(cls, value: str | None) -> str | None:
        if value is not None and (problem := http_url_problem(value, "http://seq:5341")):
            raise ValueError(problem)
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def secrets(self) -> list[str]:
        """What of the Seq settings must never be shown: the API key, and of a ``SEQ_URL`` that
        carries credentials (a proxy's basic auth, ``?apiKey=``) its password, its query and
        the URL itself, which the HTTP clients' errors quote (``401 Client Error: ... for url:
        http://u:p@seq/...``), each as written and as each client writes it
        (``url_spellings``). A URL without them stays readable: it says where logs go."""
        hidden = [self.seq_api_key.get_secret_value()] if self.seq_api_key is not None else []
        if self.seq_url is not None:
            parts = urlsplit(self.seq_url)
            if parts.password or parts.query:
                for url in url_spellings(self.seq_url):
                    parts = urlsplit(url)
                    hidden += [url, parts.password or "", parts.query]
        return list(dict.fromkeys(secret for secret in hidden if secret))

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"must be DEBUG, INFO, WARNING or ERROR (got {value!r})")
        return level


class MSSQLConfig(BaseModel):
    """SQL Server writes its backup file itself, into a directory both it and backupd can read."""

    model_config = _FROZEN

    backup_dir: str = Field(
        "/var/opt/mssql/backup",
        alias="MSSQL_BACKUP_DIR",
        description="Shared backup directory as SQL Server sees it",
    )
    local_dir: Path | None = Field(
        None,
        alias="MSSQL_LOCAL_DIR",
        description="The same directory as backupd sees it (default: MSSQL_BACKUP_DIR)",
    )
    trust_server_certificate: bool = Field(
        False,
        alias="MSSQL_TRUST_SERVER_CERTIFICATE",
        description="Pass -C to sqlcmd (self-signed server certificates)",
    )
    compression: bool = Field(
        True,
        alias="MSSQL_COMPRESSION",
        description="BACKUP ... WITH COMPRESSION (Express Edition rejects it)",
    )

    @property
    def effective_local_dir(self) -> Path:
        return self.local_dir if self.local_dir is not None else Path(self.backup_dir)


class EncryptionConfig(BaseModel):
    """age recipients the backups are encrypted to; the identity is for ``restore`` only.

    ``recipients`` is filled by the loader from both variables, each recipient checked.
    """

    model_config = _FROZEN

    recipients_text: str | None = Field(
        None,
        alias="ENCRYPTION_RECIPIENTS",
        description="age recipients (age1...) or SSH public keys, comma-separated; "
        "unset: no encryption",
    )
    recipients_file: Path | None = Field(
        None,
        alias="ENCRYPTION_RECIPIENTS_FILE",
        description="A recipients file in age's format (one per line, # comments)",
    )
    identity_file: Path | None = Field(
        None,
        alias="ENCRYPTION_IDENTITY_FILE",
        description="age identity file for backupd restore (default for --identity) and "
        "for drills of encrypted backups; never needed to back up",
    )
    recipients: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.recipients)


class LimitsConfig(BaseModel):
    """Bounds on how long a child may go without progress."""

    model_config = _FROZEN

    stall_timeout: float = Field(
        600,
        alias="RESTORE_STALL_TIMEOUT",
        ge=0,
        allow_inf_nan=False,
        description="Seconds a dump or restore may move no data before it is stopped; 0: never",
    )


class RowCounts(enum.StrEnum):
    """Whether a backup records its tables' row counts (see ``Manifest.row_counts``)."""

    EXACT = "exact"
    OFF = "off"


class VerifyConfig(BaseModel):
    """Proving that backups restore: read-back checks and restore drills (``backupd verify``)."""

    model_config = _FROZEN

    row_counts: RowCounts = Field(
        RowCounts.EXACT,
        alias="VERIFY_ROW_COUNTS",
        description=(
            "exact: count every table's rows beside each dump, for drills and anomaly checks"
            " (one more read of every table); off: record no counts"
        ),
    )

    schedule: str | None = Field(
        None,
        alias="VERIFY_SCHEDULE",
        description="Cron (in TIMEZONE) for `verify` under `backupd run`; unset: never",
    )
    drill: bool = Field(
        False,
        alias="VERIFY_DRILL",
        description="Scheduled verifies also restore into a scratch database and check it",
    )
    drill_prefix: str = Field(
        "backupd_drill_",
        alias="VERIFY_DRILL_DATABASE_PREFIX",
        min_length=1,
        max_length=40,
        pattern=WORD_PATTERN,
        description="Name prefix of the scratch database a drill restores into",
    )
    host: str | None = Field(
        None,
        alias="VERIFY_DB_HOST",
        description="Server for drills (default: the target's DB_HOST)",
    )
    port: int | None = Field(
        None, alias="VERIFY_DB_PORT", ge=1, le=65535, description="Port of VERIFY_DB_HOST"
    )
    user: str | None = Field(
        None, alias="VERIFY_DB_USER", description="Login on VERIFY_DB_HOST (default: DB_USER)"
    )
    password: SecretStr | None = Field(
        None, alias="VERIFY_DB_PASSWORD", description="Password on VERIFY_DB_HOST"
    )

    @field_validator("host", "user")
    @classmethod
    def _one_word(cls, value: str | None) -> str | None:
        return None if value is None else one_word(value)

    @field_validator("host")
    @classmethod
    def _no_port(cls, value: str | None) -> str | None:
        return None if value is None else host_alone(value, "VERIFY_DB_PORT")

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        problem = cron_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return " ".join(value.split())


class AnomalyConfig(BaseModel):
    """Warnings when a backup is much smaller or larger than the ones before it."""

    model_config = _FROZEN

    window: int = Field(
        7,
        alias="ANOMALY_WINDOW",
        ge=3,
        le=100,
        description="How many earlier backups of a database the median is taken over",
    )
    shrink: float = Field(
        0.5,
        alias="ANOMALY_SHRINK",
        gt=0,
        lt=1,
        description="Warn below this fraction of the median (size, rows)",
    )
    growth: float = Field(
        3.0,
        alias="ANOMALY_GROWTH",
        gt=1,
        allow_inf_nan=False,
        description="Warn above this multiple of the median (size, rows)",
    )


class TargetConfig(BaseModel):
    """Everything needed to back up one target's databases."""

    model_config = ConfigDict(frozen=True)

    name: str
    named: bool = False
    """Whether the target was named in BACKUPD_TARGETS; its name then joins the object key."""
    database: DatabaseConfig
    storage: S3Config | LocalConfig = Field(discriminator="kind")
    layout: LayoutConfig
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig.model_validate({}))
    email: EmailConfig = Field(default_factory=lambda: EmailConfig.model_validate({}))
    hooks: HooksConfig = Field(default_factory=lambda: HooksConfig.model_validate({}))
    mssql: MSSQLConfig = Field(default_factory=lambda: MSSQLConfig.model_validate({}))
    encryption: EncryptionConfig = Field(
        default_factory=lambda: EncryptionConfig.model_validate({})
    )
    retention: RetentionConfig = Field(default_factory=lambda: RetentionConfig.model_validate({}))
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig.model_validate({}))
    verify: VerifyConfig = Field(default_factory=lambda: VerifyConfig.model_validate({}))
    anomaly: AnomalyConfig = Field(default_factory=lambda: AnomalyConfig.model_validate({}))

    @property
    def variable_prefix(self) -> str:
        """What this target's own variables start with: ``ORDERS_`` for the target ``orders``
        of BACKUPD_TARGETS, nothing for the unnamed one."""
        return f"{self.name.upper()}_" if self.named else ""

    @property
    def key_prefix(self) -> str:
        """Where this target's objects go: the folder, plus the target's name when named."""
        return "/".join(p for p in (self.layout.folder, self.name if self.named else "") if p)


def secrets_of(target: TargetConfig) -> list[str]:
    """Every secret value of a target, for masking text that leaves the process."""
    values = [
        target.database.password,
        target.email.password,
        target.hooks.webhook_url,
        target.hooks.ping_url,
        target.verify.password,
    ]
    if isinstance(target.storage, S3Config):
        values += [target.storage.access_key_id, target.storage.secret_access_key]
    return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    targets: tuple[TargetConfig, ...]
    daemon: DaemonConfig = Field(default_factory=lambda: DaemonConfig.model_validate({}))
    coordination: CoordinationConfig = Field(
        default_factory=lambda: CoordinationConfig.model_validate({})
    )
    logs: LogConfig = Field(default_factory=lambda: LogConfig.model_validate({}))
