"""What backupd writes, and reading it back: keys, manifests, listing and choosing a backup.

This is the one module that knows the key format and the manifest schema; restore, list,
retention and verify all read storage through it.

A backup is two objects side by side:

- the dump, ``{prefix}/{YYYYMMDD}/{stem}_{YYYYMMDD_HHMMSS}_{run}{extension}``, where the stamp
  is the start time in the target's TIMEZONE (for people: the instant comes from the manifest),
  ``run`` is 8 random hex digits that no other run produces, and ``stem`` is
  ``backup_{safe name}`` (plus ``~{hash}`` of the real name when the name had to be changed to
  be safe) or ``globals``;
- its manifest, ``<key>.manifest.json``, written only after the dump is complete. Its presence
  is what makes a backup complete.

Keys written before run ids existed (``..._{YYYYMMDD_HHMMSS}{extension}``) parse too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from backupd import __version__
from backupd.errors import BackupdError
from backupd.storage.base import Storage, StoredObject

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = 2
GLOBALS = "globals"
"""The key stem (and manifest database name) under which ``DB_DATABASE=*`` stores
PostgreSQL's server globals, as ``.sql``; a database that is really named ``globals`` is
stored as ``backup_globals`` (before, as ``globals`` too, but as a ``.dump``)."""
INTERNAL_FOLDER = ".backupd"
"""Objects backupd keeps for itself under a target's folder (claims, probes): never backups."""
MANIFEST_READS_AT_ONCE = 16

_UNSAFE = re.compile(r"[^\w.-]+")
_NAME = re.compile(
    r"^(?P<stem>.+)_(?P<stamp>\d{8}_\d{6})(?:_(?P<run>[0-9a-f]{8}))?"
    r"(?P<extension>\.(?:dump|sql|bak)(?:\.(?:gz|zst))?(?:\.age)?)$"
)


class CatalogueError(BackupdError):
    """Something under a target's prefix is not what backupd wrote (a malformed manifest)."""

    step = "catalogue"


def safe_name(database: str) -> str:
    """A database name fit for a key segment: runs of other characters become ``_``."""
    return _UNSAFE.sub("_", database).strip("_") or "_"


def stem_for(database: str) -> str:
    """``backup_{safe name}``; when the name had to change, ``~`` and 8 hex digits of its
    SHA-256 follow, so that ``q a``, ``q_a`` and ``q/a`` never share a key."""
    safe = safe_name(database)
    if safe == database:
        return f"backup_{safe}"
    return f"backup_{safe}~{hashlib.sha256(database.encode()).hexdigest()[:8]}"


def new_run_id() -> str:
    """8 random hex digits: two runs, even in the same second, never produce the same key."""
    return secrets.token_hex(4)


def object_key(
    prefix: str,
    database: str,
    extension: str,
    started: datetime,
    run_id: str,
    *,
    server_globals: bool = False,
) -> str:
    """``{prefix}/{YYYYMMDD}/{stem}_{YYYYMMDD_HHMMSS}_{run_id}{extension}``, dated in
    ``started``'s zone (the target's TIMEZONE); the stem is ``GLOBALS`` for the
    ``server_globals`` object."""
    stem = GLOBALS if server_globals else stem_for(database)
    name = f"{stem}_{started:%Y%m%d_%H%M%S}_{run_id}{extension}"
    return "/".join(part for part in (prefix, f"{started:%Y%m%d}", name) if part)


def manifest_key(key: str) -> str:
    return key + MANIFEST_SUFFIX


@dataclass(frozen=True)
class ParsedKey:
    key: str
    stem: str
    stamp: str
    """``YYYYMMDD_HHMMSS`` in the zone the backup was made in (unknown from the key alone)."""
    run_id: str | None
    extension: str

    @property
    def is_globals(self) -> bool:
        """Whether this is PostgreSQL's server globals object (or, without a manifest to say
        the engine, could be): the ``GLOBALS`` stem on a ``.sql`` object. A PostgreSQL
        database named ``globals`` was stored under the same stem before, as a ``.dump``."""
        return self.stem == GLOBALS and self.extension.startswith(".sql")

    @property
    def series(self) -> str:
        """The stem of the database's series of backups, as ``stem_for`` names it: the
        globals object's own stem, and ``backup_globals`` for the old keys of a database
        named ``globals``."""
        return stem_for(GLOBALS) if self.stem == GLOBALS and not self.is_globals else self.stem


def parse_key(key: str, prefix: str) -> ParsedKey | None:
    """The parts of a backupd object key directly under ``prefix``, else None.

    None for manifests, for anything in a sibling folder that merely starts with the same text
    (``backups/app2`` for ``backups/app``), deeper or shallower keys, and backupd's own
    internal objects.
    """
    if prefix:
        if not key.startswith(prefix + "/"):
            return None
        key_rest = key[len(prefix) + 1 :]
    else:
        key_rest = key
    segments = key_rest.split("/")
    if len(segments) != 2:
        return None
    folder, name = segments
    match = _NAME.match(name)
    if match is None or not folder.isdigit() or match["stamp"][:8] != folder:
        return None
    stem = match["stem"]
    if stem != GLOBALS and not stem.startswith("backup_"):
        return None
    return ParsedKey(key, stem, match["stamp"], match["run"], match["extension"])


def object_metadata(engine: str, database: str, when: datetime, timezone: str) -> dict[str, str]:
    """User metadata fixed at upload start. S3 metadata is ASCII: other characters are %-encoded."""
    return {
        "backup-type": engine,
        "database": quote(database, safe=""),
        "upload-timestamp": when.isoformat(timespec="seconds"),
        "timezone": timezone,
        "uploaded-by": f"backupd/{__version__}",
    }


@dataclass(frozen=True)
class Manifest:
    """The sidecar of a complete backup (``<key>.manifest.json``, JSON).

    ``size`` and ``sha256`` are of the stored bytes. ``started``/``finished`` are aware
    datetimes; their instant is the backup's time. ``properties`` holds the database-level
    settings recorded at backup time (engine-specific; see the source modules).
    ``tables`` lists the database's tables as the dump saw them, ``{"schema", "name", "rows"}``
    each (None: not recorded); ``row_counts`` says how the rows were counted: ``"dump snapshot"``
    (exact, in the dump's own snapshot) or ``"own snapshot"`` (exact, in a consistent snapshot
    taken just before the dump's; a busy database may differ slightly).
    ``names_database`` is True for MySQL/MariaDB dumps whose SQL names the database
    (``CREATE DATABASE``/``USE``; backupd wrote those before manifest format 2).
    ``encryption`` is None unless the stored bytes are an age file; ``sha256`` and ``size`` are
    then those of the encrypted bytes.
    Unknown fields of newer manifests are kept in ``extra`` and written back unchanged.
    """

    key: str
    sha256: str
    size: int
    started: datetime
    finished: datetime
    duration_s: float
    target: str
    database: str
    engine: str
    server_version: str = ""
    tool_version: str = ""
    compression: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    names_database: bool = False
    tables: list[dict[str, Any]] | None = None
    row_counts: str | None = None
    encryption: dict[str, Any] | None = None
    """For an encrypted object: ``format`` (``age``), ``recipients`` (public keys, never an
    identity) and ``plaintext_size`` (bytes before encryption); see ``encryption.Encrypt``."""
    format: int = MANIFEST_FORMAT
    backupd_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        document = {k: v for k, v in asdict(self).items() if k != "extra"}
        document.update(self.extra)
        document["started"] = self.started.isoformat()
        document["finished"] = self.finished.isoformat()
        return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> Manifest:
        """Parse a manifest; raise CatalogueError naming ``key`` when it is not one."""
        try:
            document = json.loads(data)
            if not isinstance(document, dict):
                raise TypeError("not a JSON object")
            known = {f.name for f in fields(cls)} - {"extra"}
            values = {k: v for k, v in document.items() if k in known}
            values["started"] = _instant(values["started"])
            values["finished"] = _instant(values["finished"])
            if document.get("format", 1) < MANIFEST_FORMAT:
                # Format 1 dumps of MySQL/MariaDB were made with --databases.
                values["names_database"] = document.get("engine") in {"mysql", "mariadb"}
            extra = {k: v for k, v in document.items() if k not in known}
            manifest = cls(**values, extra=extra)
        except (ValueError, TypeError, KeyError) as error:
            raise CatalogueError(
                f"{manifest_key(key)} is not a backupd manifest ({error})"
            ) from None
        if manifest.key != key or not isinstance(manifest.size, int):
            raise CatalogueError(f"{manifest_key(key)} does not describe {key}")
        return manifest

    @property
    def total_rows(self) -> int | None:
        """The rows of every recorded table together; None when none were recorded."""
        if self.tables is None:
            return None
        return sum(int(table.get("rows", 0)) for table in self.tables)

    def summary(self) -> dict[str, Any]:
        """The manifest as plain JSON data (``list --json``)."""
        data: dict[str, Any] = json.loads(self.to_bytes())
        return data


def _instant(text: Any) -> datetime:
    moment = datetime.fromisoformat(str(text))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return moment


@dataclass(frozen=True)
class Backup:
    """One backup object under a target's prefix, and its manifest when it has one."""

    key: str
    size: int
    modified: datetime
    """When storage last wrote the object (aware)."""
    parsed: ParsedKey
    manifest: Manifest | None = None
    problem: str | None = None
    """Why a manifest that exists could not be read (the backup then counts as incomplete)."""

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    @property
    def database(self) -> str | None:
        """The database's real name (from the manifest); None when there is no manifest."""
        return self.manifest.database if self.manifest is not None else None

    @property
    def engine(self) -> str | None:
        return self.manifest.engine if self.manifest is not None else None

    @property
    def taken(self) -> datetime:
        """When the backup started (the manifest's instant; else when storage wrote it)."""
        return self.manifest.started if self.manifest is not None else self.modified

    @property
    def is_globals(self) -> bool:
        """PostgreSQL's server globals object (not a database named ``globals``)."""
        if self.manifest is not None and self.manifest.engine != "postgres":
            return False
        return self.parsed.is_globals

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "database": self.database,
            "engine": self.engine,
            "taken": self.taken.isoformat(),
            "size": self.size,
            "complete": self.complete,
            **({"problem": self.problem} if self.problem else {}),
            **({"manifest": self.manifest.summary()} if self.manifest else {}),
        }


def backups_among(
    objects: Iterable[StoredObject], prefix: str
) -> tuple[list[tuple[ParsedKey, StoredObject]], set[str]]:
    """The backupd objects directly under ``prefix`` and the set of manifest keys present."""
    found: list[tuple[ParsedKey, StoredObject]] = []
    manifests: set[str] = set()
    for item in objects:
        if item.key.endswith(MANIFEST_SUFFIX):
            manifests.add(item.key)
        elif (parsed := parse_key(item.key, prefix)) is not None:
            found.append((parsed, item))
    return found, manifests


def newest_first(backups: Iterable[Backup]) -> list[Backup]:
    return sorted(backups, key=lambda b: (b.taken.astimezone(UTC), b.key), reverse=True)


async def read_manifest(storage: Storage, key: str) -> Manifest:
    """The manifest of ``key``; raise StorageError if missing, CatalogueError if malformed."""
    return Manifest.from_bytes(await storage.get_bytes(manifest_key(key)), key)


@dataclass(frozen=True)
class Orphan:
    """A manifest whose object is missing: deleted by hand or by a lifecycle rule, or left by
    an interrupted prune of a release that deleted objects first."""

    key: str
    """The missing object's key."""
    parsed: ParsedKey
    manifest: StoredObject
    """The manifest as listed (its key, size and when storage wrote it)."""
    started: datetime | None = None
    """When the backup started, as its manifest says (None where it cannot be read)."""

    @property
    def taken(self) -> datetime:
        """As ``Backup.taken``: the manifest's instant, else when storage wrote the manifest."""
        return self.started if self.started is not None else self.manifest.modified


async def scan(storage: Storage, prefix: str) -> list[Backup]:
    """Every backupd backup directly under ``prefix``, newest first, manifests read.

    Lists the prefix once (paginated by the storage), then reads the manifests,
    ``MANIFEST_READS_AT_ONCE`` at a time. A manifest that cannot be parsed leaves its backup
    incomplete, with the reason in ``Backup.problem``; a storage failure raises StorageError.
    """
    return (await survey(storage, prefix))[0]


async def survey(storage: Storage, prefix: str) -> tuple[list[Backup], list[Orphan]]:
    """``scan``'s backups, and from the same listing the manifests directly under ``prefix``
    whose object is missing (read like the others: they are rare), oldest first."""
    listing = [item async for item in storage.list_objects(f"{prefix}/" if prefix else "")]
    found, manifests = backups_among(listing, prefix)
    objects = {item.key for _, item in found}
    lost = [
        (parsed, StoredObject(key, 0, item.modified), item)
        for item in listing
        if item.key.endswith(MANIFEST_SUFFIX)
        and (key := item.key.removesuffix(MANIFEST_SUFFIX)) not in objects
        and (parsed := parse_key(key, prefix)) is not None
    ]
    backups = await _with_manifests(storage, found + [(p, o) for p, o, _ in lost], manifests)
    orphans = [
        Orphan(b.key, b.parsed, item, b.manifest.started if b.manifest else None)
        for b, (_, _, item) in zip(backups[len(found) :], lost, strict=True)
    ]
    orphans.sort(key=lambda orphan: (orphan.taken, orphan.key))
    return newest_first(backups[: len(found)]), orphans


async def recent(
    storage: Storage, prefix: str, keys: Iterable[str], count: int
) -> dict[str, list[Backup]]:
    """For each of ``keys`` (backups under ``prefix``), the ``count`` newest backups of the
    same series (``ParsedKey.series``, globals apart), newest first, manifests read: one
    listing, then only those backups' manifests, read as ``scan`` reads them. A key that
    does not parse maps to ``[]``."""
    listing = [item async for item in storage.list_objects(f"{prefix}/" if prefix else "")]
    found, manifests = backups_among(listing, prefix)
    chosen: dict[str, list[tuple[ParsedKey, StoredObject]]] = {}
    for key in keys:
        if (parsed := parse_key(key, prefix)) is None:
            chosen[key] = []
            continue
        mine = [
            (p, i)
            for p, i in found
            if p.series == parsed.series and p.is_globals == parsed.is_globals
        ]
        chosen[key] = sorted(mine, key=lambda pi: pi[1].modified)[-count:]
    every = {i.key: (p, i) for pairs in chosen.values() for p, i in pairs}
    read = {b.key: b for b in await _with_manifests(storage, list(every.values()), manifests)}
    return {key: newest_first([read[i.key] for _, i in pairs]) for key, pairs in chosen.items()}


async def _with_manifests(
    storage: Storage, found: list[tuple[ParsedKey, StoredObject]], manifests: set[str]
) -> list[Backup]:
    """Each found object as a ``Backup``, in the same order, its manifest read when
    ``manifests`` (the keys listed) holds one: ``MANIFEST_READS_AT_ONCE`` reads in flight, since
    each costs a round trip to the store. The first read that fails (StorageError) stops the
    others and is raised."""
    gate = asyncio.Semaphore(MANIFEST_READS_AT_ONCE)

    async def load(parsed: ParsedKey, item: StoredObject) -> Backup:
        if manifest_key(item.key) not in manifests:
            return Backup(item.key, item.size, item.modified, parsed)
        async with gate:
            try:
                manifest = await read_manifest(storage, item.key)
            except CatalogueError as error:
                return Backup(item.key, item.size, item.modified, parsed, problem=str(error))
        return Backup(item.key, item.size, item.modified, parsed, manifest)

    reads = [asyncio.ensure_future(load(p, i)) for p, i in found]
    try:
        return list(await asyncio.gather(*reads))
    except BaseException:
        # The first failure ends the catalogue's answer: the reads still queued or in flight
        # are stopped, not left to go on against a store the caller is done with.
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
        raise


def series_for(database: str, backups: Iterable[Backup]) -> str:
    """The series (``ParsedKey.series``) of ``database``'s backups, by key alone: its stem,
    or the server globals object's for ``globals`` where no database of that name has a
    backup among ``backups`` (the rule ``backups_of`` follows by manifest)."""
    stem = stem_for(database)
    if database == GLOBALS and not any(b.parsed.series == stem for b in backups):
        return GLOBALS
    return stem


def engine_family(engine: str) -> str:
    """The engines whose dumps restore into one another share a family: MySQL and MariaDB
    are ``mysql``; every other engine is its own."""
    return "mysql" if engine in ("mysql", "mariadb") else engine


def of_engine(backups: Iterable[Backup], engine: str) -> list[Backup]:
    """Those of ``backups`` whose manifest says they were made by ``engine``'s family, in
    order; a backup without a manifest cannot say and is left out. Two deployments sharing a
    folder (a PostgreSQL and a MariaDB database both named ``shop``) are told apart so."""
    family = engine_family(engine)
    return [b for b in backups if b.engine is not None and engine_family(b.engine) == family]


def series_of(database: str, backups: Iterable[Backup]) -> set[str]:
    """Every series (``ParsedKey.series``) holding ``database``'s backups: ``series_for``'s,
    and those of the backups whose manifest names it (keys of older layouts, made before a
    name's stem gained its hash, say)."""
    listed = list(backups)
    named = {b.parsed.series for b in backups_of(listed, database)}
    return {series_for(database, listed)} | named


def backups_of(backups: Iterable[Backup], database: str | None) -> list[Backup]:
    """Those of ``backups`` that belong to ``database``, in order: by their manifest's name,
    the server globals object only where no database named ``globals`` has one."""
    listed = list(backups)
    mine = [b for b in listed if b.database == database and not b.is_globals]
    if not mine and database == GLOBALS:
        mine = [b for b in listed if b.is_globals]
    return mine


class ChoiceError(BackupdError):
    step = "restore"


def choose(
    backups: list[Backup],
    *,
    database: str | None,
    key: str | None = None,
    at: datetime | None = None,
    force: bool = False,
    engine: str | None = None,
) -> Backup:
    """The backup to restore: the one named by ``key``, else the newest complete backup of
    ``database`` taken at or before the instant ``at`` (or the newest), made by ``engine``'s
    family when given (``of_engine``). The server globals object is a backup of ``globals``
    only where no database of that name has one.

    Raise ChoiceError when there is none, or when ``key`` names an incomplete backup and
    ``force`` is not set.
    """
    if key is not None:
        named = [b for b in backups if b.key == key]
        if not named:
            raise ChoiceError(f"no backup with key {key!r}; `backupd list` shows the keys")
        if not named[0].complete and not force:
            reason = named[0].problem or "it has no manifest (an incomplete backup)"
            raise ChoiceError(f"{key}: {reason}; add --force to restore it anyway")
        if database is not None and named[0].database not in (None, database):
            raise ChoiceError(
                f"{key} is a backup of database {named[0].database!r}, not {database!r}"
            )
        return named[0]
    complete = [b for b in backups if b.complete]
    candidates = backups_of(complete if engine is None else of_engine(complete, engine), database)
    if at is not None:
        candidates = [b for b in candidates if b.taken <= at]
    if not candidates:
        when = f" at or before {at.isoformat()}" if at else ""
        raise ChoiceError(
            f"no complete backup of database {database!r}{when}; `backupd list` shows what there is"
        )
    return newest_first(candidates)[0]


def passed_over(backups: list[Backup], chosen: Backup, at: datetime | None) -> list[Backup]:
    """Objects of ``chosen``'s series newer than it (and not after ``at``) that are not
    complete backups: a manifest that cannot be read (damaged, cut short), or none. ``choose``
    skips them, so without a word a restore would bring back older data than the user asked."""
    return [
        b
        for b in backups
        if not b.complete
        and b.parsed.series == chosen.parsed.series
        and b.taken > chosen.taken
        and (at is None or b.taken <= at)
    ]
