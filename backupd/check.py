"""``backupd check``: what each target would do, and whether its database, dump tool and storage
answer. Results are data; the CLI prints them."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from backupd import encryption
from backupd.claims import self_test
from backupd.config import CoordinationConfig, Engine, S3Config, TargetConfig
from backupd.errors import BackupdError
from backupd.notify.check import notification_findings
from backupd.schedule import Schedule, fires_after
from backupd.sources import FileSource, Source, source_for
from backupd.storage import Storage, open_claim_store, open_storage
from backupd.tasks import until_done
from backupd.variables import told


@dataclass(frozen=True)
class Finding:
    ok: bool
    target: str
    what: str
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.target} {self.what}: {self.detail}"


def describe_target(target: TargetConfig, now: datetime) -> str:
    """One line: what is backed up, where to, and when it next runs, twice (so the interval
    shows: six fields are read as seconds first, and ``0 2 * * * *`` runs hourly)."""
    db = target.database
    where = (
        f"{target.storage.kind} bucket {target.storage.bucket}"
        if isinstance(target.storage, S3Config)
        else (f"folder {target.storage.path}")
    )
    schedule = Schedule(target.schedule.cron, target.layout.timezone)
    fires = fires_after(schedule, now)
    upcoming, then = (next(fires).astimezone(schedule.tz) for _ in range(2))
    return (
        f"{db.engine} {db.database} at {db.host}:{db.effective_port} -> {where} under "
        f"{target.key_prefix or '/'}/; schedule '{schedule.expression}' ({schedule.timezone}), "
        f"next {upcoming:%Y-%m-%d %H:%M:%S%z}, then {then:%Y-%m-%d %H:%M:%S%z}"
    )


async def _shared_volume(
    target: TargetConfig, finding: Callable[[bool, str, str], Finding]
) -> Finding:
    """SQL Server's backup directory must exist where backupd can write, read and delete."""
    folder = target.mssql.effective_local_dir
    probe = folder / f".backupd-probe-{secrets.token_hex(6)}"

    def write_and_delete() -> None:
        try:
            probe.write_bytes(b"backupd write probe\n")
        except OSError:
            with contextlib.suppress(OSError):  # created, and then no room for its bytes
                probe.unlink()
            raise
        probe.unlink()

    try:
        await asyncio.to_thread(write_and_delete)
    except OSError as error:
        return finding(
            False, "shared volume", f"MSSQL_LOCAL_DIR {folder}: {error.strerror or error}"
        )
    return finding(True, "shared volume", f"MSSQL_LOCAL_DIR {folder} is writable")


async def _databases(
    target: TargetConfig,
    source: Source | FileSource,
    finding: Callable[[bool, str, str], Finding],
    logged_in: bool,
) -> list[Finding]:
    """Each database named in DB_DATABASE must exist on the server."""
    db = target.database
    where = f"{db.host}:{db.effective_port}"
    findings = []
    for name in db.databases:
        try:
            if isinstance(source, FileSource):
                exists = await source.database_state(name) != "missing"
            else:
                exists = await source.database_exists(name)
        except BackupdError as error:
            if not logged_in:
                return []  # the login itself failed, and says so in its own line
            return [finding(False, "database", f"cannot tell whether {name} exists: {error}")]
        if exists:
            findings.append(finding(True, "database", f"{name} exists on {where}"))
        else:
            findings.append(
                finding(
                    False, "database", f"database {name} does not exist on {where} (DB_DATABASE)"
                )
            )
    return findings


async def _object_lock(
    config: S3Config, storage: Storage, finding: Callable[[bool, str, str], Finding]
) -> Finding:
    """STORAGE_OBJECT_LOCK_DAYS needs a bucket created with Object Lock enabled."""
    if await storage.object_lock_enabled():
        return finding(
            True,
            "object lock",
            f"enabled; backups and manifests are written locked ({config.object_lock_mode}) "
            f"for {config.object_lock_days} day(s)",
        )
    return finding(
        False,
        "object lock",
        f"STORAGE_OBJECT_LOCK_DAYS is set but bucket {config.bucket} does not have Object Lock "
        "enabled; enable it on the bucket (it needs versioning) or unset the variable",
    )


async def _encryption(
    target: TargetConfig, finding: Callable[[bool, str, str], Finding]
) -> list[Finding]:
    """Encrypting to ENCRYPTION_RECIPIENTS, and decrypting that with ENCRYPTION_IDENTITY_FILE
    (what restores and drills use): a wrong or missing identity file fails here, not in a
    drill at night."""
    settings = target.encryption
    try:
        if settings.enabled:
            said = await encryption.probe(settings.recipients, settings.identity_file)
        elif settings.identity_file is not None:
            await encryption.probe_identity(settings.identity_file)
            said = f"{settings.identity_file} is readable (no ENCRYPTION_RECIPIENTS to try it on)"
        else:
            return []
    except BackupdError as error:
        return [finding(False, "encryption", str(error))]
    return [finding(True, "encryption", said)]


async def check_target(target: TargetConfig, send_test: bool = False) -> list[Finding]:
    """Findings about everything a run of ``target`` touches; ``send_test`` also sends one of
    each notification it has configured."""

    def finding(ok: bool, what: str, detail: str) -> Finding:
        return Finding(ok, target.name, what, told(detail, target))

    findings = [finding(True, "config", describe_target(target, datetime.now(UTC)))]
    if target.retention.policy.enabled:
        findings.append(finding(True, "retention", target.retention.policy.describe()))
    db = target.database
    source = source_for(target)
    try:
        info = await source.probe()
        findings.append(
            finding(
                True,
                "database",
                f"{db.engine} {info.server_version} at {db.host}:{db.effective_port}",
            )
        )
        findings.append(finding(True, "dump tool", info.tool_version))
    except BackupdError as error:
        findings.append(finding(False, error.step, str(error)))
    logged_in = all(f.ok for f in findings)
    findings += await _databases(target, source, finding, logged_in)
    if db.engine is Engine.MSSQL:
        findings.append(await _shared_volume(target, finding))
    findings += await _encryption(target, finding)
    probe_key = "/".join(
        p for p in (target.key_prefix, f".backupd-probe-{secrets.token_hex(6)}") if p
    )
    try:
        async with open_storage(target.storage) as storage:
            await write_probe(storage, probe_key)
            findings.append(
                finding(
                    True, "storage", f"wrote and deleted a probe object in {storage.description}"
                )
            )
            if isinstance(target.storage, S3Config) and target.storage.object_lock_days:
                findings.append(await _object_lock(target.storage, storage, finding))
    except BackupdError as error:
        findings.append(finding(False, "storage", str(error)))
    findings += await notification_findings(target, finding, send_test)
    return findings


PROBE_CLEANUP = 10.0
"""Seconds an interrupted check still spends deleting its probe object."""


async def write_probe(storage: Storage, key: str) -> None:
    """Write, then delete, a small probe object at ``key``. Interrupted (SIGTERM) while
    either request is in flight, it still deletes the probe (the write may have landed),
    for at most ``PROBE_CLEANUP`` seconds, and is then cancelled. Raises StorageError."""
    try:
        await storage.put_bytes(key, b"backupd write probe\n", "text/plain")
        await storage.delete(key)
    except asyncio.CancelledError:
        with contextlib.suppress(BackupdError, TimeoutError):
            await until_done(asyncio.wait_for(storage.delete(key), PROBE_CLEANUP))
        raise


async def check_coordination(target: TargetConfig, coordination: CoordinationConfig) -> Finding:
    """``COORDINATION=storage``: the self-test ``backupd run`` does at start."""
    assert isinstance(target.storage, S3Config), "environment.py refuses local storage"
    try:
        async with open_claim_store(target.storage) as store:
            await self_test(store, target.layout.folder, coordination.replica_id)
            where = store.description
    except BackupdError as error:
        return Finding(False, target.name, "coordination", told(str(error), target))
    return Finding(
        True,
        target.name,
        "coordination",
        f"{where} honours If-None-Match and If-Match; replica {coordination.replica_id}",
    )
