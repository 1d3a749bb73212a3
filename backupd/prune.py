"""Pruning: apply a target's retention policy to its own backups in storage.

What may be deleted is decided here once, and narrowly:

- only this target's own backups, as the catalogue reads them (keys under the target's prefix
  that parse as backupd keys) of the databases it backs up (every one for ``*``); a foreign
  object, a sibling folder sharing a prefix string, another target's objects, another
  database's backups are never candidates;
- a complete backup (object and manifest) only when the policy keeps it by no rule
  (``retention.decide``); the manifest goes first and the object last, so an interrupted prune
  leaves an incomplete object the next prune finishes, never a manifest without its object;
- an object without a manifest, a manifest without its object, or a multipart upload, only
  once it is older than ``RETENTION_ABORT_UPLOADS_AFTER`` (an upload: once it has sent no part
  for that long), so a ``kill -9`` mid-upload leaves no garbage forever, and a backup still
  being written, however long it runs, is never touched; and only of the databases it backs
  up, told by the key's series;
- nothing under Object Lock: a locked object (or manifest) keeps its backup, with one info line.

``prune_target`` is one coroutine per target, so a caller can wrap it (a claim, a lock).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo

from backupd import catalogue
from backupd.catalogue import manifest_key
from backupd.config import TargetConfig
from backupd.errors import BackupdError, StorageError
from backupd.logs import escape_controls
from backupd.retention import Candidate, Decision, before, decide
from backupd.storage import Storage, open_storage
from backupd.storage.base import Lock, PendingUpload, Removal
from backupd.variables import told

log = logging.getLogger(__name__)

LOCK_QUERIES = 16
"""Object Lock look-ups (HEAD requests) in flight at once."""


class PruneError(BackupdError):
    step = "prune"


@dataclass(frozen=True)
class Leftover:
    """An object without a manifest, a manifest without its object, or a multipart upload,
    and what prune does with it."""

    key: str
    since: datetime
    size: int
    kind: str  # "incomplete", "unreadable", "no object", "upload" or "unlisted upload"
    delete: bool
    upload: PendingUpload | None = None

    def line(self) -> str:
        verdict = ("ABORT" if self.kind == "upload" else "DELETE") if self.delete else "KEEP"
        why = _LEFTOVER[self.kind]
        if self.kind not in _NEVER:
            why += f", {'older' if self.delete else 'newer'} than the cleanup age"
        label = f"({self.kind})"
        return f"{verdict:<6}  {self.since:%Y-%m-%d %H:%M:%S%z}  {label:<16}  {self.key}  {why}"


_OBJECTS = {"incomplete", "no object"}
"""Leftovers that are stored objects (deleted), as opposed to uploads (aborted)."""

_LEFTOVER = {
    "upload": "multipart upload",
    "incomplete": "no manifest",
    "no object": "a manifest whose object is gone",
    "unreadable": "its manifest cannot be read; never deleted",
    "unlisted upload": "multipart upload whose parts cannot be listed "
    "(s3:ListMultipartUploadParts); kept, as it may still be written",
}
_NEVER = {"unreadable", "unlisted upload"}
"""Leftovers kept whatever their age."""


@dataclass
class PruneResult:
    target: str
    dry_run: bool
    decisions: list[Decision] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    """Backups removed (object and manifest)."""
    removed_leftovers: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def doomed(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def stored_backups(self) -> int:
        """Complete backups left (all of them in a dry run)."""
        return len(self.decisions) - (0 if self.dry_run else len(self.deleted))

    @property
    def stored_bytes(self) -> int:
        gone = set() if self.dry_run else set(self.deleted)
        return sum(size for key, size in self.sizes.items() if key not in gone)

    def lines(self) -> list[str]:
        """One line per backup (KEEP or DELETE and why) and per leftover, newest first; a
        name's control characters show escaped, as in logs."""
        rows = [
            f"{d.verdict:<6}  {d.candidate.taken:%Y-%m-%d %H:%M:%S%z}  "
            f"{escape_controls(d.candidate.database):<16}  {d.candidate.key}  {d.why}"
            for d in self.decisions
        ]
        return rows + [item.line() for item in self.leftovers]

    def summary(self) -> str:
        locked = sum(any(r.startswith("locked") for r in d.reasons) for d in self.decisions)
        doomed = len(self.doomed)
        leftovers = sum(item.delete for item in self.leftovers)
        if self.dry_run:
            head = f"dry run: would delete {doomed} of {len(self.decisions)} backup(s)"
            tail = f" and {leftovers} leftover(s)"
        else:
            head = f"deleted {len(self.deleted)} of {len(self.decisions)} backup(s)"
            tail = f" and {len(self.removed_leftovers)} leftover(s)"
        failed = f"; {len(self.failed)} could not be deleted" if self.failed else ""
        held = f"; {locked} kept by Object Lock" if locked else ""
        return f"{self.target}: {head}{tail}{held}{failed}"


GLOBALS_GROUP = "(globals)"


def group_of(backup: catalogue.Backup) -> str:
    """The set a complete backup belongs to: its database's, or the server globals' own (even
    when a database is named ``globals``)."""
    return GLOBALS_GROUP if backup.is_globals else str(backup.database)


def candidates(backups: list[catalogue.Backup], tz: tzinfo) -> list[Candidate]:
    """The complete backups among ``backups``, as the keep decision sees them."""
    return [
        Candidate(
            b.key,
            group_of(b),
            b.taken.astimezone(tz),
            b.manifest.finished.astimezone(tz) if b.manifest is not None else None,
        )
        for b in backups
        if b.complete
    ]


def own_backups(
    backups: list[catalogue.Backup], target: TargetConfig, database: str | None = None
) -> list[catalogue.Backup]:
    """The complete backups the target's policy judges: made by its engine's family, of
    ``database`` when named (the user's explicit choice, configured or not), else of the
    configured databases (any, with ``DB_DATABASE=*``, the server globals included). Another
    deployment may share the folder, and a database dropped from DB_DATABASE keeps what it
    has."""
    complete = catalogue.of_engine([b for b in backups if b.complete], target.database.engine)
    if database is not None:
        return catalogue.backups_of(complete, database)
    if target.database.all_databases:
        return complete
    configured = set(target.database.databases)
    return [b for b in complete if b.database in configured and not b.is_globals]


def keep_column(
    backups: list[catalogue.Backup], target: TargetConfig, now: datetime
) -> dict[str, str]:
    """What the policy says of each complete backup it judges (``KEEP daily 2026-11-28``,
    ``DELETE``; see ``own_backups``), for ``backupd list``; Object Lock is not consulted
    there (no request per backup)."""
    if not target.retention.policy.enabled:
        return {}
    own = own_backups(backups, target)
    decisions = decide(
        candidates(own, target.layout.tz), target.retention.policy, now, target.layout.tz
    )
    return {d.candidate.key: f"KEEP {d.why}" if d.keep else "DELETE" for d in decisions}


async def _locks(storage: Storage, keys: list[str]) -> dict[str, Lock]:
    """Each key's retention, when the bucket has Object Lock at all (one request otherwise)."""
    if not keys or not await storage.object_lock_enabled():
        return {}
    slots = asyncio.Semaphore(LOCK_QUERIES)

    async def one(key: str) -> Lock:
        async with slots:
            return await storage.lock_of(key)

    found = await asyncio.gather(*(one(key) for key in keys))
    return dict(zip(keys, found, strict=True))


def _hold_locked(
    decisions: list[Decision], locks: dict[str, Lock], now: datetime
) -> list[Decision]:
    """Backups to delete whose object or manifest is locked are kept, saying until when."""
    held = []
    for decision in decisions:
        key = decision.candidate.key
        until = [
            lock.until
            for lock in (locks.get(key), locks.get(manifest_key(key)))
            if lock is not None and lock.until is not None and lock.holds(now)
        ]
        if decision.keep or not until:
            held.append(decision)
            continue
        reason = f"locked until {max(until):%Y-%m-%d %H:%M %Z}"
        held.append(Decision(decision.candidate, True, (reason,)))
    return held


async def plan(
    storage: Storage,
    target: TargetConfig,
    now: datetime,
    database: str | None = None,
) -> tuple[PruneResult, dict[str, Lock]]:
    """What a prune would do, without deleting anything."""
    retention = target.retention
    tz = target.layout.tz
    backups, orphans = await catalogue.survey(storage, target.key_prefix)
    result = PruneResult(target.name, dry_run=True)
    complete = own_backups(backups, target, database)
    result.sizes = {b.key: b.size for b in complete}
    decisions = decide(candidates(complete, tz), retention.policy, now, tz)
    if database is None:
        cutoff = before(now, retention.abort_uploads_after, tz)
        ours = _configured_series(target, backups)
        # A manifest that exists but cannot be read (a newer format?) is never a leftover.
        result.leftovers = [
            Leftover(
                b.key,
                b.modified.astimezone(tz),
                b.size,
                "unreadable" if b.problem else "incomplete",
                b.problem is None and b.modified < cutoff,
            )
            for b in backups
            if not b.complete and ours(b.parsed)
        ]
        result.leftovers += [
            Leftover(
                o.manifest.key,
                o.manifest.modified.astimezone(tz),
                o.manifest.size,
                "no object",
                o.manifest.modified < cutoff,
            )
            for o in orphans
            if ours(o.parsed)
        ]
        result.leftovers += [
            await _upload_leftover(storage, u, cutoff, tz)
            async for u in storage.list_uploads(target.key_prefix + "/")
            if (parsed := catalogue.parse_key(u.key, target.key_prefix)) is not None
            and ours(parsed)
        ]
    doomed = [d.candidate.key for d in decisions if not d.keep]
    doomed += [item.key for item in result.leftovers if item.delete and item.kind != "upload"]
    locks = await _locks(storage, doomed + [manifest_key(key) for key in doomed])
    result.decisions = _hold_locked(decisions, locks, now)
    result.leftovers = [
        replace(item, delete=False)
        if item.delete and locks.get(item.key, Lock()).holds(now)
        else item
        for item in result.leftovers
    ]
    return result, locks


async def _upload_leftover(
    storage: Storage, upload: PendingUpload, cutoff: datetime, tz: tzinfo
) -> Leftover:
    """An upload is left over once it has made no progress for the cleanup age, whenever it
    started: one still running (a dump longer than the age, another replica's, a ``backupd
    once`` beside the service) keeps sending parts. Only an upload that started before the
    cutoff is asked for its parts; one whose parts cannot be listed (the permission refused) is
    kept, with a warning: aborting it on a guess could cut a running backup short."""
    active = upload.initiated
    if active < cutoff:
        try:
            active = await storage.last_activity(upload)
        except StorageError as error:  # a refused ListParts: no guess either way
            log.warning("%s", error)
            return Leftover(upload.key, active.astimezone(tz), 0, "unlisted upload", False, upload)
    return Leftover(upload.key, active.astimezone(tz), 0, "upload", active < cutoff, upload)


def _configured_series(
    target: TargetConfig, backups: list[catalogue.Backup]
) -> Callable[[catalogue.ParsedKey], bool]:
    """Whether a key without a manifest (a leftover) is of a database this target backs up:
    any with ``DB_DATABASE=*``, else one of the configured databases' series
    (``catalogue.series_of``: their stems, and the series their backups' manifests name,
    older layouts included). Another deployment sharing the folder keeps its leftovers, as it
    keeps its backups."""
    if target.database.all_databases:
        return lambda parsed: True
    series = {s for name in target.database.databases for s in catalogue.series_of(name, backups)}
    return lambda parsed: parsed.series in series


def _removal(key: str, locks: dict[str, Lock]) -> Removal:
    # On a versioned (Object Lock) bucket, deleting the version removes the bytes; a plain
    # delete would only hide them behind a delete marker.
    return Removal(key, locks[key].version_id if key in locks else None)


async def _delete(storage: Storage, result: PruneResult, locks: dict[str, Lock]) -> None:
    """Manifests first, then the objects of the backups whose manifest is gone: stopped in
    between, a backup is left incomplete (an object without a manifest, which the next prune
    removes as a leftover), never a manifest without its object."""
    doomed = [d.candidate.key for d in result.doomed]
    leftovers = [i.key for i in result.leftovers if i.delete and i.kind in _OBJECTS]
    failed = await storage.delete_many([_removal(manifest_key(key), locks) for key in doomed])
    unlisted = [key for key in doomed if manifest_key(key) not in failed]
    failed |= await storage.delete_many([_removal(key, locks) for key in unlisted + leftovers])
    result.deleted = [key for key in unlisted if key not in failed]
    result.removed_leftovers = [key for key in leftovers if key not in failed]
    for item in result.leftovers:
        if item.delete and item.upload is not None:
            await storage.abort_upload(item.upload)
            result.removed_leftovers.append(item.key)
    result.failed = failed


async def prune(
    storage: Storage,
    target: TargetConfig,
    *,
    database: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneResult:
    """Apply ``target``'s policy to its backups in ``storage``; see the module's rules.

    Raises PruneError when the target has no policy, StorageError when the store fails.
    A key that could not be deleted is in ``failed`` with the store's reason.
    """
    if not target.retention.policy.enabled:
        raise PruneError(
            f"target {target.name} has no retention policy (RETENTION_KEEP_*): nothing to prune"
        )
    result, locks = await plan(storage, target, now or datetime.now(UTC), database)
    locked = [d for d in result.decisions if any(r.startswith("locked") for r in d.reasons)]
    if locked:
        log.info(
            "%s: %d backup(s) past retention stay under Object Lock (%s ...)",
            target.name,
            len(locked),
            locked[0].why,
        )
    if dry_run:
        return result
    result.dry_run = False
    await _delete(storage, result, locks)
    for key, reason in result.failed.items():
        log.warning("%s: could not delete %s: %s", target.name, key, told(reason, target))
    return result


async def prune_target(
    target: TargetConfig,
    *,
    database: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneResult:
    """``prune`` with the target's own storage opened and closed around it."""
    async with open_storage(target.storage) as storage:
        return await prune(storage, target, database=database, dry_run=dry_run, now=now)


@dataclass(frozen=True)
class PruneFailure:
    """A prune after a run that did not do all its work: what stopped it, in one line, and
    what it did do when it got as far as deleting (``result``, else None)."""

    reason: str
    result: PruneResult | None = None


def failure_of(result: PruneResult) -> PruneFailure | None:
    """A prune whose deletes the store refused key by key is a failure too: DeleteObjects
    answers 200 and lists each key it did not delete (AWS S3 does so for a policy without
    s3:DeleteObject), so the request raises nothing while storage keeps growing."""
    if not result.failed:
        return None
    key, why = next(iter(result.failed.items()))
    return PruneFailure(
        f"the store refused to delete {len(result.failed)} key(s), first {key}: {why}", result
    )


async def prune_after_run(target: TargetConfig) -> PruneResult | PruneFailure:
    """Prune after a successful run. A failure is logged and returned, never raised: a prune
    that fails never fails the backup before it, nor takes the service down."""
    try:
        result = await prune_target(target)
    except BackupdError as error:
        failure = PruneFailure(str(error))
    except Exception as error:  # isolation: a failed prune never takes the service down
        log.debug("details", exc_info=True)
        failure = PruneFailure(f"unexpected error: {error!r}")
    else:
        log.info("%s", result.summary())  # ``backupd prune`` prints it below its table instead
        refused = failure_of(result)
        if refused is None:
            return result
        failure = refused
    log.error("%s: pruning FAILED: %s", target.name, told(failure.reason, target))
    return failure
