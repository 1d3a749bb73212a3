"""Which variables backupd reads, a warning for each one it would silently ignore, and how a
message about one target names them.

The known names come from the configuration models themselves (every field's alias, found by
walking ``TargetConfig`` and ``Settings``), so a setting added as a model field is known at once.
Added to them: what the loader reads by hand (``STORAGE_TYPE``, ``BACKUPD_TARGETS``),
``<NAME>_FILE`` for every secret, and with ``BACKUPD_TARGETS`` each target's
``<TARGET>_<NAME>`` form of every per-target setting.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping

from pydantic import BaseModel

from backupd.config import Settings, TargetConfig, secrets_of
from backupd.environment import SECRET_NAMES, TARGET_NAME
from backupd.process import mask

# Names with these prefixes are backupd's: one it does not read is a mistake worth a warning.
PREFIXES = (
    "BACKUPD_",
    "DB_",
    "STORAGE_",
    "EMAIL_",
    "SEQ_",
    "CRON_",
    "MSSQL_",
    "RETENTION_",
    "ENCRYPTION_",
    "VERIFY_",
)
READ_BY_LOADER = frozenset({"STORAGE_TYPE", "BACKUPD_TARGETS"})
# Kubernetes injects these for every Service (a Service named "db" gives DB_SERVICE_HOST,
# DB_PORT_5432_TCP_ADDR, ...): not settings anybody wrote, so never warned about.
KUBERNETES_SERVICE = re.compile(
    r".+_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_\w+)?)"
)
# libpq reads these from its environment, but the tools backupd runs get a minimal one
# (``process.INHERITED_ENV``): set where the older tool honoured them, they now change nothing.
LIBPQ_TLS = {
    "PGSSLMODE": "DB_SSL_MODE",
    "PGSSLROOTCERT": "DB_SSL_CA",
    "PGSSLCERT": "DB_SSL_CERT",
    "PGSSLKEY": "DB_SSL_KEY",
}
# An upper-case name with an underscore standing alone in a text (not part of a longer one), or
# a family of names written with a star (``RETENTION_KEEP_*``). The settings of one word,
# COMPRESSION and TIMEZONE, are SQL's words too: a tool's error quoting a statement (SQL
# Server's ``BACKUP ... WITH COMPRESSION``) keeps them as written.
NAME_IN_TEXT = re.compile(r"(?<![A-Za-z0-9_])[A-Z][A-Z0-9]*_[A-Z0-9_]*(?:_\*)?(?![A-Za-z0-9_*])")
SUGGESTION_CUTOFF = 0.6
# A name without a backupd prefix, written in the .env file, is named only when this close to one.
CLOSE_CUTOFF = 0.85


def _models(annotation: object) -> Iterator[type[BaseModel]]:
    """Every model class inside an annotation (``A | B``, ``Optional[A]``, ``tuple[A, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for argument in typing.get_args(annotation):
            yield from _models(argument)


def aliases(model: type[BaseModel]) -> set[str]:
    """The variable names a model and the models inside it read (their fields' aliases)."""
    names: set[str] = set()
    for field in model.model_fields.values():
        if field.alias is not None:
            names.add(field.alias)
        for inner in _models(field.annotation):
            if inner is not model:
                names |= aliases(inner)
    return names


@functools.cache
def target_settings() -> frozenset[str]:
    """Settings a target reads, each also as ``<TARGET>_<NAME>``."""
    names = aliases(TargetConfig) | {"STORAGE_TYPE"}
    return frozenset(names | {f"{name}_FILE" for name in names & SECRET_NAMES})


def is_per_target(name: str) -> bool:
    """Whether ``name`` is a setting each target reads for itself, or a family of them
    (``RETENTION_KEEP_*``); False for a process-wide one (``SEQ_URL``) or any other word."""
    stem = name.removesuffix("*")
    if stem == name:
        return name in target_settings()
    return any(setting.startswith(stem) for setting in target_settings())


def _values(value: object) -> Iterator[str]:
    """Every text inside a dumped model (``model_dump``'s dicts and lists)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _values(inner)
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from _values(inner)


@functools.lru_cache(maxsize=256)
def data_names(target: TargetConfig) -> frozenset[str]:
    """The names written in ``target``'s own settings, as values (a database called
    ``DB_HOST``, a folder ``STORAGE_TYPE/``): data that a message quotes, not a variable.
    Secrets are left out (``model_dump`` stars them): they are masked, never spelled."""
    texts = _values(target.model_dump(mode="json"))
    return frozenset(name for text in texts for name in NAME_IN_TEXT.findall(text))


def for_target(text: str, target: TargetConfig, data: Iterable[str] = ()) -> str:
    """``text`` with each per-target setting it names spelled as ``target`` reads it: for the
    target ``orders`` of BACKUPD_TARGETS, ``DB_PASSWORD`` becomes ``ORDERS_DB_PASSWORD`` and
    ``RETENTION_KEEP_*`` becomes ``ORDERS_RETENTION_KEEP_*``. Process-wide settings
    (``SEQ_URL``), names inside longer ones and every other word stay as they are, and so does
    the whole text for the unnamed target. So do the names the message quotes as data: those
    written in the target's own settings (``data_names``: a database ``DB_HOST`` stays
    ``database DB_HOST``) and ``data`` (a database the server listed for ``DB_DATABASE=*``).

    Messages keep the unprefixed names; this is applied once, where a message about one target
    leaves the process (``told``)."""
    if not target.named:
        return text
    quoted = data_names(target).union(*(NAME_IN_TEXT.findall(item) for item in data))

    def spelled(found: re.Match[str]) -> str:
        name = found[0]
        return target.variable_prefix + name if is_per_target(name) and name not in quoted else name

    return NAME_IN_TEXT.sub(spelled, text)


def told(text: str, target: TargetConfig, data: Iterable[str] = ()) -> str:
    """``text``, a message about ``target``, as it leaves the process (logs, mails, webhooks,
    ``check``): its secrets masked, then its settings named as the target reads them
    (``for_target``, ``data`` as there), then masked again. Masked first, a secret holding a
    variable's name is found as it was written; masked last, a secret that a spelled name
    makes (a password ``ORDERS`` in ``ORDERS_DB_PASSWORD``) is hidden too."""
    secrets = secrets_of(target)
    return mask(for_target(mask(text, secrets), target, data), secrets)


def known_names(targets: Iterable[str] = ()) -> frozenset[str]:
    """Every variable backupd reads, given the target names of ``BACKUPD_TARGETS``."""
    per_target = target_settings()
    names = set(per_target) | aliases(Settings) | READ_BY_LOADER
    names |= {f"{name}_FILE" for name in names & SECRET_NAMES}
    for target in targets:
        names |= {f"{target.upper()}_{name}" for name in per_target}
    return frozenset(names)


def _targets(env: Mapping[str, str]) -> list[str]:
    raw = env.get("BACKUPD_TARGETS", "")
    return [name.strip() for name in raw.split(",") if TARGET_NAME.match(name.strip())]


def _suggestion(name: str, known: frozenset[str], cutoff: float) -> str | None:
    matches = difflib.get_close_matches(name, sorted(known), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def _without_target(name: str, target_prefixes: tuple[str, ...]) -> str | None:
    for prefix in target_prefixes:
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return None


BLANK_PROTECTIONS = {
    "ENCRYPTION_RECIPIENTS": "not encrypted",
    "ENCRYPTION_RECIPIENTS_FILE": "not encrypted",
    "STORAGE_OBJECT_LOCK_DAYS": "not locked",
}
"""Settings whose blank value, read as unset as every blank value is, leaves a target's backups
without a protection somebody meant to give them: a ``${AGE_RECIPIENTS}`` that Compose or a
shell expanded to nothing stored them in clear, without a word."""


def blank_protections(env: Mapping[str, str], settings: Settings) -> list[str]:
    """One warning per protection (``BLANK_PROTECTIONS``) that a target lacks while a variable
    that would give it is set but blank, e.g. ``"ENCRYPTION_RECIPIENTS is set but empty: the
    backups are not encrypted"``. A target that has the protection from another variable is
    not warned about."""
    warnings = []
    for target in settings.targets:
        lacking = {
            "not encrypted": not target.encryption.recipients,
            "not locked": getattr(target.storage, "object_lock_days", None) is None,
        }
        of = f" of target {target.name}" if target.named else ""
        for setting, outcome in BLANK_PROTECTIONS.items():
            for name in dict.fromkeys((target.variable_prefix + setting, setting)):
                if lacking[outcome] and name in env and not env[name].strip():
                    warnings.append(
                        f"{name} is set but empty: the backups{of} are {outcome} (give it a value,"
                        " or remove the variable)"
                    )
    return list(dict.fromkeys(warnings))


def unknown_variables(env: Mapping[str, str], from_file: Iterable[str] = ()) -> list[str]:
    """One warning per variable that looks like backupd's but is not read, sorted by name.

    Looked at: every name with a backupd prefix (``DB_``, ``STORAGE_``, ... or a target's
    ``<TARGET>_``); names from the ``.env`` file (``from_file``) without such a prefix only
    when they are very close to a known one (``TIMEZON``); libpq's TLS variables
    (``LIBPQ_TLS``), which never reach the tools. E.g.
    ``"DB_PASS is not a backupd setting; did you mean DB_PASSWORD?"``.
    """
    targets = _targets(env)
    known = known_names(targets)
    prefixes = PREFIXES + tuple(f"{target.upper()}_" for target in targets)
    file_names = set(from_file)
    warnings = []
    process_wide = aliases(Settings) - target_settings()
    for name in sorted(env):
        if name in LIBPQ_TLS:
            warnings.append(
                f"{name} is not passed to pg_dump, psql or pg_restore (backupd gives them "
                f"only its own settings): set {LIBPQ_TLS[name]} instead"
            )
            continue
        if name in known or KUBERNETES_SERVICE.fullmatch(name):
            continue
        unprefixed = _without_target(name, prefixes[len(PREFIXES) :])
        if unprefixed in process_wide:
            warnings.append(
                f"{name} is not a backupd setting; {unprefixed} applies to all targets: "
                "set it without a target's prefix"
            )
            continue
        if name.upper() in known and (name.upper().startswith(prefixes) or name in file_names):
            # Names are read as written: ``db_password`` in the .env file was silently ignored.
            warnings.append(f"{name} is not a backupd setting; did you mean {name.upper()}?")
            continue
        if name.startswith(prefixes):
            guess = _suggestion(name, known, SUGGESTION_CUTOFF)
        elif name in file_names:
            guess = _suggestion(name, known, CLOSE_CUTOFF)
            if guess is None:
                continue
        else:
            continue
        hint = f"; did you mean {guess}?" if guess else ""
        warnings.append(f"{name} is not a backupd setting{hint}")
    return warnings
