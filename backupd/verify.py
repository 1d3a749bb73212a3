"""Proof of restorability: read backups back, and restore them into a scratch database.

``verify_target`` is one async function per target. For each chosen backup it streams the
stored bytes back through SHA-256 and a byte count and compares them with the manifest (no
decompression, no decryption, no local disk; memory stays at one download chunk). With a drill
it also restores the newest backup of each database into a scratch database, checks every
table the manifest recorded, measures how long the restore took, and drops the scratch
database whatever happens: failure, cancellation, SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from backupd.catalogue import (
    Backup,
    Orphan,
    engine_family,
    safe_name,
    series_of,
    survey,
)
from backupd.config import Engine, TargetConfig, VerifyConfig
from backupd.encryption import check_identity, identity_for
from backupd.encryption import is_encrypted as encrypted_key
from backupd.errors import BackupdError, ConnectError
from backupd.progress import Progress
from backupd.restore import Request, restore_into
from backupd.sources import FileSource, Source, source_for
from backupd.storage import Storage, open_storage
from backupd.tasks import until_done

log = logging.getLogger(__name__)

DRIFT_ROWS = 10
DRIFT_FRACTION = 0.01
"""Row counts taken in their own snapshot (MySQL/MariaDB) may differ from the dump by the rows
written in between: a drill accepts max(10 rows, 1 %) of difference for them."""

T = TypeVar("T")


class VerifyError(BackupdError):
    step = "verify"


@dataclass(frozen=True)
class Selection:
    """Which backups to verify: the newest of each database (default), of ``database`` only,
    the one ``key``, or ``every`` backup; ``drill`` also restores the newest of each."""

    database: str | None = None
    key: str | None = None
    every: bool = False
    drill: bool = False


@dataclass
class Drill:
    """How a restore drill went."""

    scratch: str
    restore_s: float = 0.0
    tables: int = 0
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None
    """Why the drill asked for did not run (an encrypted backup without an identity file)."""


@dataclass
class Checked:
    """One backup checked: the stored bytes against the manifest, and maybe a drill."""

    target: str
    database: str
    key: str | None
    size: int = 0
    problem: str | None = None
    drill: Drill | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and (self.drill is None or not self.drill.problems)

    def failure(self) -> str | None:
        """One line naming the key and what is wrong, or None."""
        if self.problem is not None:
            return self.problem
        if self.drill is not None and self.drill.problems:
            return f"drill of {self.key}: " + "; ".join(self.drill.problems)
        return None


# --- pure decisions ------------------------------------------------------------------------


def verdicts(results: Sequence[Checked]) -> dict[str, bool]:
    """Whether each database checked passed (every backup of it checked did), and under ``*``
    whether the target as a whole did: its backups were listed, each database had one, and
    there was something to check. The run passed when all of them did."""
    passed = {"*": bool(results)}
    for checked in results:
        passed[checked.database] = passed.get(checked.database, True) and checked.ok
    return passed


def chosen(
    backups: list[Backup],
    configured: tuple[str, ...],
    selection: Selection,
    orphans: Sequence[Orphan] = (),
) -> tuple[list[Backup], list[str]]:
    """The backups to verify (newest first), and the problems found choosing them.

    Default: per database (by the key's series, so a backup whose manifest is missing still
    counts as that database's), the newest backup of each ``configured`` database (of every
    database found where none is configured, ``*``); configured databases without any backup
    are problems. Backups of other databases under the folder are never chosen, but ``key``
    may name any. ``key``: that backup; ``every``: all of them. A manifest whose object
    is missing (``orphans``) is a problem wherever it would have been chosen: named by
    ``key``, under ``every``, or newer than its database's newest object.
    """
    missing = {o.key: f"{o.key}: its object is missing (its manifest remains)" for o in orphans}
    if selection.key is not None:
        named = [b for b in backups if b.key == selection.key]
        if not named and selection.key in missing:
            return [], [missing[selection.key]]
        return named, ([] if named else [f"no backup with key {selection.key}"])
    # Only the configured databases' backups (every one for ``*``): another deployment may
    # share the folder, and its backups are not this target's to judge.
    # ``--database`` names any database, configured or not (the user's explicit choice).
    wanted = (selection.database,) if selection.database is not None else configured
    if wanted:
        series = {name: series_of(name, backups) for name in wanted}
        mine = set().union(*series.values())
        # A key of a wanted database's series whose manifest names another database is that
        # one's (``q a``'s old key reads like ``q_a``'s).
        backups = [
            b
            for b in backups
            if b.parsed.series in mine and (b.database is None or b.database in wanted)
        ]
        orphans = [o for o in orphans if o.parsed.series in mine]
    if selection.every:
        problems = [missing[o.key] for o in orphans]
        return backups, problems if backups or problems else ["no backups to verify"]
    # One group per database: by its manifest, else by the database that the manifests of
    # its series name (so an incomplete newest backup is its database's), else by its series.
    owner = {b.parsed.series: _named(b) for b in reversed(backups) if b.manifest is not None}

    def group(series_name: str, backup: Backup | None = None) -> str:
        if backup is not None and backup.manifest is not None:
            return _named(backup)
        return owner.get(series_name, f"series {series_name}")

    newest: dict[str, Backup] = {}
    for backup in backups:  # newest first
        newest.setdefault(group(backup.parsed.series, backup), backup)
    problems = [
        missing[o.key]
        for o in orphans
        if (g := group(o.parsed.series)) not in newest or o.taken > newest[g].taken
    ]
    problems += [
        f"no backup of database {name} under this target"
        for name in wanted
        if not any(b.parsed.series in series[name] for b in newest.values())
        and not any(o.parsed.series in series[name] for o in orphans)
    ]
    return list(newest.values()), problems


def _named(backup: Backup) -> str:
    """The group of a backup with a manifest: its database, or the server globals object."""
    return "server globals" if backup.is_globals else f"database {backup.database}"


def integrity_problem(backup: Backup, size: int, sha256: str) -> str | None:
    """Why the bytes read back are not the ones the manifest records, or None."""
    if backup.manifest is None:
        reason = backup.problem or "it has no manifest (an incomplete or damaged backup)"
        return f"{backup.key}: {reason}"
    expected = backup.manifest
    if size != expected.size or sha256 != expected.sha256:
        return (
            f"{backup.key}: read back {size} bytes with sha256 {sha256}, but the manifest "
            f"records {expected.size} bytes with sha256 {expected.sha256}: the object is "
            "damaged or was altered"
        )
    return None


def _name(table: dict[str, Any]) -> str:
    return f"{table['schema']}.{table['name']}" if table.get("schema") else str(table["name"])


def table_problems(
    recorded: list[dict[str, Any]], restored: list[dict[str, Any]], exact: bool
) -> list[str]:
    """What a restored database lacks against what the backup recorded: every recorded table
    must exist with its recorded rows (``exact``), or within max(DRIFT_ROWS, DRIFT_FRACTION)
    of them. Tables the restore has beyond the record are no problem."""
    found = {(t.get("schema"), t["name"]): int(t["rows"]) for t in restored}
    problems = []
    for table in recorded:
        rows = int(table["rows"])
        have = found.get((table.get("schema"), table["name"]))
        if have is None:
            problems.append(f"table {_name(table)} is missing after the restore")
            continue
        allowed = 0 if exact else max(DRIFT_ROWS, int(rows * DRIFT_FRACTION))
        if abs(have - rows) > allowed:
            problems.append(f"table {_name(table)} has {have} rows; the backup recorded {rows}")
    return problems


def drill_target(target: TargetConfig) -> TargetConfig:
    """The target with its database login replaced by the VERIFY_DB_* settings that are set:
    drills run there (or on the target's own server)."""
    verify = target.verify
    changes: dict[str, Any] = {}
    if verify.host is not None:
        changes["host"] = verify.host
        changes["port"] = verify.port
    elif verify.port is not None:
        changes["port"] = verify.port
    if verify.user is not None:
        changes["user"] = verify.user
    if verify.password is not None:
        changes["password"] = verify.password
    if not changes:
        return target
    return target.model_copy(update={"database": target.database.model_copy(update=changes)})


def drill_login_settings(settings: tuple[str, ...], verify: VerifyConfig) -> tuple[str, ...]:
    """The variables a refused login of a drill with a login of its own (VERIFY_DB_*) points
    at, given those the backups' login would (``settings``, DB_*): VERIFY_DB_USER and
    VERIFY_DB_PASSWORD, which change the drill's login and leave the backups' alone;
    VERIFY_DB_HOST and VERIFY_DB_PORT too when they chose the drill's server (a port follows
    its host), else DB_HOST and DB_PORT, the server the drill shares with the backups."""
    own = {"DB_USER", "DB_PASSWORD"}
    if verify.host is not None:
        own |= {"DB_HOST", "DB_PORT"}
    elif verify.port is not None:
        own.add("DB_PORT")
    return tuple(f"VERIFY_{name}" if name in own else name for name in settings)


def _login_said(error: BackupdError, where: TargetConfig, target: TargetConfig) -> str:
    """``error`` as a drill reports it: a refused login on the drill's own login names its
    VERIFY_DB_* variables (``drill_login_settings``), not the backups' DB_* ones."""
    if isinstance(error, ConnectError) and where is not target:
        return str(ConnectError(error.bare, drill_login_settings(error.settings, target.verify)))
    return str(error)


def scratch_name(prefix: str, database: str) -> str:
    """``{prefix}{safe name}_{8 hex}``, at most 63 bytes (PostgreSQL's limit, in bytes: a
    name of non-ASCII letters, which ``safe_name`` keeps, takes two to four bytes each), cut
    between characters."""
    head = f"{prefix}{safe_name(database)}".encode()[:54].decode("utf-8", "ignore")
    return f"{head}_{secrets.token_hex(4)}"


def is_encrypted(backup: Backup) -> bool:
    recorded = backup.manifest.encryption if backup.manifest is not None else None
    return bool(recorded) or encrypted_key(backup.key)


def drill_skip_reason(backup: Backup, engine: Engine, identity: Path | None) -> str | None:
    """Why a backup cannot be drilled here (it is still read back), or None. An encrypted
    backup needs the identity file (ENCRYPTION_IDENTITY_FILE) to be drilled."""
    if backup.is_globals:
        return "server globals are not restored by drills"
    if engine is Engine.MSSQL:
        return "drills restore PostgreSQL, MySQL and MariaDB backups"
    if is_encrypted(backup) and identity is None:
        return "it is encrypted and ENCRYPTION_IDENTITY_FILE is not set"
    if backup.manifest is None:
        return "it has no manifest"
    return None


# --- I/O -----------------------------------------------------------------------------------


async def read_back(storage: Storage, key: str) -> tuple[int, str]:
    """Stream ``key`` through SHA-256: (bytes, hex digest). Raise StorageError."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in storage.download(key):
        size += len(chunk)
        await asyncio.to_thread(digest.update, chunk)  # hashlib releases the GIL
    return size, digest.hexdigest()


async def check_one(target: TargetConfig, storage: Storage, backup: Backup) -> Checked:
    database = backup.database or backup.parsed.stem
    if backup.manifest is None:
        return Checked(
            target.name, database, backup.key, backup.size, integrity_problem(backup, 0, "")
        )
    try:
        size, sha256 = await read_back(storage, backup.key)
    except BackupdError as error:
        return Checked(target.name, database, backup.key, problem=f"{backup.key}: {error}")
    return Checked(target.name, database, backup.key, size, integrity_problem(backup, size, sha256))


async def drill(
    target: TargetConfig, storage: Storage, backup: Backup, progress: Progress | None = None
) -> Drill:
    """Restore ``backup`` into a fresh scratch database, check its tables against the
    manifest, and drop it again whatever happens."""
    where = drill_target(target)
    assert backup.manifest is not None and backup.database is not None
    scratch = scratch_name(target.verify.drill_prefix, backup.database)
    result = Drill(scratch)
    source = source_for(where)
    assert not isinstance(source, FileSource)
    request = Request(database=backup.database, into=scratch)
    if progress is not None:
        request = replace(request, progress=progress)
    try:  # an identity that cannot decrypt fails before anything is created
        identity = identity_for(
            backup.key, target.encryption.identity_file, "ENCRYPTION_IDENTITY_FILE"
        )
        if identity is not None:
            await check_identity(storage.download(backup.key), identity, backup.key)
    except BackupdError as error:
        result.problems.append(str(error))
        return result
    try:  # so does a server that refuses the login: there is nothing to drop then
        await source.database_state(scratch)
    except BackupdError as error:
        result.problems.append(f"the restore failed: {_login_said(error, where, target)}")
        return result
    request = replace(request, identity=identity)
    log.info("drill: restoring %s into %s", backup.key, scratch)
    clock = time.monotonic()
    try:
        try:
            await restore_into(storage, where, backup, request)
        except BackupdError as error:
            result.problems.append(f"the restore failed: {_login_said(error, where, target)}")
            return result
        result.restore_s = round(time.monotonic() - clock, 3)
        recorded = backup.manifest.tables
        if recorded is None:
            log.warning("%s records no tables: the drill checked the restore only", backup.key)
            return result
        restored = await source.count_rows(scratch)
        exact = backup.manifest.row_counts == "dump snapshot"
        result.tables = len(recorded)
        result.problems += table_problems(recorded, restored, exact)
    except BackupdError as error:
        result.problems.append(str(error))
    finally:
        await until_done(_drop(source, scratch))
    return result


async def _drop(source: Source, scratch: str) -> None:
    try:
        await source.drop_database(scratch)
    except BackupdError as error:
        log.error("drill: could not drop the scratch database %s: %s", scratch, error)


async def verify_target(
    target: TargetConfig, selection: Selection, progress: Progress | None = None
) -> list[Checked]:
    """Verify ``target``'s backups as ``selection`` says; one ``Checked`` per backup (and one
    per problem choosing them). Never raises for what it finds; raises StorageError only when
    the target's storage cannot be listed."""
    async with open_storage(target.storage) as storage:
        backups, orphans = await survey(storage, target.key_prefix)
        if selection.key is None:
            # Another engine's backups are another deployment's (a database of the same name
            # sharing the folder); one without a manifest cannot say, and stays.
            family = engine_family(target.database.engine)
            backups = [b for b in backups if b.engine is None or engine_family(b.engine) == family]
        picked, problems = chosen(backups, target.database.databases, selection, orphans)
        results = [
            Checked(target.name, selection.database or "*", None, problem=p) for p in problems
        ]
        drilled: set[str] = set()
        for backup in picked:  # newest first: the first of each database is drilled
            checked = await check_one(target, storage, backup)
            results.append(checked)
            if selection.drill and checked.ok and backup.parsed.series not in drilled:
                drilled.add(backup.parsed.series)
                checked.drill = await _maybe_drill(target, storage, backup, progress)
    return results


async def _maybe_drill(
    target: TargetConfig, storage: Storage, backup: Backup, progress: Progress | None
) -> Drill | None:
    reason = drill_skip_reason(backup, target.database.engine, target.encryption.identity_file)
    if reason is None:
        return await drill(target, storage, backup, progress)
    if backup.is_globals:
        return None
    log.warning("drill of %s skipped: %s (its bytes were verified)", backup.key, reason)
    return Drill("", skipped=reason)  # said in the report too: a drill was asked for
