"""Several replicas, one schedule: the claim on a slot, as data. Pure functions, no I/O.

Before a replica starts a (target, kind, slot) it creates that slot's claim object with
``If-None-Match: *``; the replica whose write succeeds runs the slot. Every replica computes the
same slot times from the same schedule, so the claim names agree. The holder renews its claim
every lease/3 with ``If-Match`` on the ETag it last saw; a replica that finds a claim whose lease
has expired takes it over with the same kind of conditional write and a fencing token one higher.
``claims.py`` does the I/O; this module decides names, contents and times (clock injected).

The scheme is the one Terraform's S3 state lock and delta-rs rely on: the object store's atomic
conditional writes are the only distributed primitive, so no lock service is needed.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from backupd.catalogue import INTERNAL_FOLDER
from backupd.errors import CoordinationError

CLAIMS_FOLDER = f"{INTERNAL_FOLDER}/claims"
STALE_AFTER = timedelta(days=1)
"""Claims not written for this long are deleted by the sweep after a run (``sweepable``), save
each target's newest slot. Longer than any lease (``COORDINATION_LEASE`` is at most an hour,
renewed every third), so a claim under a live lease is never old enough."""
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class Kind(enum.StrEnum):
    """What a slot runs; each kind has its own claims, so a prune never blocks a backup."""

    BACKUP = "backup"
    PRUNE = "prune"
    VERIFY = "verify"


_SLOT_CLAIM = re.compile(
    rf"^(?P<target>[A-Za-z0-9_.-]+)/(?P<kind>{'|'.join(kind.value for kind in Kind)})/"
    r"\d{8}T\d{6}Z\.json$"
)
"""A slot's claim, its name relative to ``claims_prefix`` (as ``claim_key`` writes it)."""


class State(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    """The holder finished the slot (whatever the result): nobody takes it over."""


def claims_prefix(folder: str) -> str:
    """``{folder}/.backupd/claims/``: where a storage's claims live (``folder`` may be empty)."""
    return "/".join(part for part in (folder.strip("/"), CLAIMS_FOLDER) if part) + "/"


_JOB = re.compile(r"^[0-9a-f]{8}$")


def job_of(engine: str, host: str, port: int, databases: str) -> str:
    """8 hex digits naming what a target backs up (engine, server, databases), the same on
    every replica of one deployment. Two deployments sharing a folder and a target name (the
    unnamed ``default`` of each, say) but backing up other databases thus claim other keys:
    with one key, the slot one of them claimed would be skipped by the other as "claimed
    elsewhere", and its databases not backed up at all."""
    facts = "\0".join((engine, host.lower().rstrip("."), str(port), databases))
    return hashlib.sha256(facts.encode()).hexdigest()[:8]


def claim_key(folder: str, target: str, kind: Kind, slot: datetime, job: str | None = None) -> str:
    """``{folder}/.backupd/claims/{target}.{job}/{kind}/{YYYYMMDDTHHMMSSZ}.json``, the slot in
    UTC; without ``job`` (``job_of``), ``{target}`` alone.

    ``slot`` is the scheduled instant (aware; whole seconds, as cron gives them). Raises
    ValueError for a naive ``slot``, a target name that is not a plain key segment or a
    ``job`` that is not 8 hex digits.
    """
    if slot.tzinfo is None:
        raise ValueError("a slot must be an aware datetime")
    if not _NAME.match(target):
        raise ValueError(f"target name {target!r} is not a plain key segment")
    if job is not None and not _JOB.match(job):
        raise ValueError(f"job {job!r} is not 8 hex digits")
    moment = slot.astimezone(UTC)
    segment = f"{target}.{job}" if job is not None else target
    return f"{claims_prefix(folder)}{segment}/{kind.value}/{moment:%Y%m%dT%H%M%SZ}.json"


@dataclass(frozen=True)
class Claim:
    """One replica's hold on one slot, as stored (JSON) in the claim object.

    ``token`` is the fencing token: 1 when the claim is created, one higher at every takeover.
    ``nonce`` is random per attempt, so a replica recognises its own write when a retried request
    answers 412. ``writing`` is the key the holder is uploading, so that a replica taking the slot
    over can abort the dead holder's multipart upload. ``lease`` is the holder's
    ``COORDINATION_LEASE`` in seconds (None in claims written before it was recorded), so that a
    watcher with a shorter lease does not find a live holder silent. Times are UTC.
    """

    target: str
    kind: Kind
    slot: datetime
    replica: str
    nonce: str
    token: int
    expires: datetime
    state: State = State.RUNNING
    writing: str | None = None
    lease: float | None = None

    def to_bytes(self) -> bytes:
        document = {
            "format": 1,
            "target": self.target,
            "kind": self.kind.value,
            "slot": _iso(self.slot),
            "replica": self.replica,
            "nonce": self.nonce,
            "token": self.token,
            "expires": _iso(self.expires),
            "state": self.state.value,
            "writing": self.writing,
            "lease": self.lease,
        }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_claim(data: bytes, key: str) -> Claim:
    """The claim stored at ``key``; raises CoordinationError naming ``key`` when malformed."""
    try:
        document: Any = json.loads(data)
        if not isinstance(document, dict):
            raise TypeError("not a JSON object")
        writing = document.get("writing")
        lease = document.get("lease")
        if lease is not None and (
            not isinstance(lease, int | float) or isinstance(lease, bool) or lease <= 0
        ):
            raise ValueError("lease must be a positive number of seconds")
        return Claim(
            target=_text(document, "target"),
            kind=Kind(document["kind"]),
            slot=_moment(document, "slot"),
            replica=_text(document, "replica"),
            nonce=_text(document, "nonce"),
            token=_count(document, "token"),
            expires=_moment(document, "expires"),
            state=State(document["state"]),
            writing=writing if isinstance(writing, str) and writing else None,
            lease=float(lease) if lease is not None else None,
        )
    except (ValueError, TypeError, KeyError) as error:
        raise CoordinationError(
            f"claim {key} is malformed ({type(error).__name__}: {error}); the slot is not run "
            "by this replica: delete the object to let a replica claim it afresh"
        ) from None


def _text(document: dict[str, Any], name: str) -> str:
    value = document[name]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def _count(document: dict[str, Any], name: str) -> int:
    value = document[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer")
    return value


def _moment(document: dict[str, Any], name: str) -> datetime:
    value = datetime.fromisoformat(_text(document, name))
    if value.tzinfo is None:
        raise ValueError(f"{name} has no UTC offset")
    return value.astimezone(UTC)


def new_claim(
    target: str, kind: Kind, slot: datetime, replica: str, nonce: str, now: datetime, lease: float
) -> Claim:
    """A fresh claim (token 1) held by ``replica`` until ``now`` + ``lease`` seconds."""
    return Claim(
        target=target,
        kind=kind,
        slot=slot.astimezone(UTC),
        replica=replica,
        nonce=nonce,
        token=1,
        expires=expiry(now, lease),
        lease=lease,
    )


def expiry(now: datetime, lease: float) -> datetime:
    return (now + timedelta(seconds=lease)).astimezone(UTC)


def renewed(claim: Claim, now: datetime, lease: float, writing: str | None = None) -> Claim:
    """``claim`` held for another full lease from ``now``; ``writing`` replaces the key noted."""
    return replace(claim, expires=expiry(now, lease), writing=writing or claim.writing, lease=lease)


def taken_over(claim: Claim, replica: str, nonce: str, now: datetime, lease: float) -> Claim:
    """``claim`` after ``replica`` takes it over: a new holder, the next fencing token."""
    return replace(
        claim,
        replica=replica,
        nonce=nonce,
        token=claim.token + 1,
        expires=expiry(now, lease),
        state=State.RUNNING,
        writing=None,
        lease=lease,
    )


def finished(claim: Claim) -> Claim:
    return replace(claim, state=State.DONE)


def released(claim: Claim, now: datetime) -> Claim:
    """Handed back unfinished (shutdown): the lease ends now, so another replica takes over."""
    return replace(claim, expires=now.astimezone(UTC))


def may_take_over(claim: Claim, now: datetime) -> bool:
    """True when ``claim`` is unfinished and its lease has run out on ``now``'s clock."""
    return claim.state is State.RUNNING and now >= claim.expires


def went_silent(claim: Claim, unchanged_for: float, lease: float) -> bool:
    """True when ``claim`` is unfinished and has not changed for a whole lease as the watching
    replica measures time (``unchanged_for``, seconds on its monotonic clock): its holder
    stopped renewing, even if the holder's wall clock runs ahead of the watcher's and the
    expiry it recorded is still to come. A live holder rewrites its claim every third of its
    own lease, which may be longer than the watcher's ``lease``: the longer of the two counts."""
    holders = claim.lease if claim.lease is not None else lease
    return claim.state is State.RUNNING and unchanged_for >= max(lease, holders)


def renew_every(lease: float) -> float:
    """Seconds between renewals: a third of the lease, so two renewals may fail in a row."""
    return lease / 3


def still_held(claim: Claim, now: datetime, lease: float) -> bool:
    """Whether the holder may go on without a fresh renewal: more than lease/3 must be left,
    the margin that absorbs clock skew between replicas (see the README's limits)."""
    return now < claim.expires - timedelta(seconds=lease / 3)


def watch_delay(claim: Claim, now: datetime, lease: float) -> float:
    """How long a replica watching another's claim waits before reading it again: until the
    lease runs out, but at most lease/3 so that a finished or released claim is seen soon."""
    left = (claim.expires - now).total_seconds()
    return max(0.0, min(left, renew_every(lease)))


def is_stale(modified: datetime, now: datetime, max_age: timedelta = STALE_AFTER) -> bool:
    """Whether a claim object last written at ``modified`` is old enough to delete."""
    return now - modified > max_age


def sweepable(
    listed: Iterable[tuple[str, datetime]],
    folder: str,
    now: datetime,
    max_age: timedelta = STALE_AFTER,
) -> list[str]:
    """The keys a sweep of ``folder``'s claims deletes, in the order listed.

    ``listed`` holds (key, last written) of every object under ``claims_prefix(folder)``. A key
    goes when it was not written for ``max_age`` (``is_stale``), except the claim of each
    (target, kind)'s newest slot, however old: the start-up run stands for a target's latest
    slot and finds it done only by that claim (README, "Running several replicas": a restarted
    replica does not repeat a slot that already ran), and for a target that runs less often
    than daily (or on the 25-hour day clocks go back) that claim is more than a day old. What
    stays is thus one claim per target and kind, plus the last day's. Left-over probes and
    other names are judged by age alone. Times are aware datetimes; ``max_age`` a duration.
    """
    prefix = claims_prefix(folder)
    entries = list(listed)
    newest: dict[tuple[str, str], str] = {}
    for key, _ in entries:
        found = _SLOT_CLAIM.match(key[len(prefix) :]) if key.startswith(prefix) else None
        if found is not None:
            group = (found["target"], found["kind"])
            newest[group] = max(newest.get(group, key), key)  # fixed-width UTC stamps
    kept = set(newest.values())
    return [
        key for key, modified in entries if key not in kept and is_stale(modified, now, max_age)
    ]
