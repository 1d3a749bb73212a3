"""Claim naming, claim contents and lease arithmetic: pure, the clock passed in."""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backupd.catalogue import parse_key
from backupd.coordination import (
    STALE_AFTER,
    Claim,
    Kind,
    State,
    claim_key,
    claims_prefix,
    finished,
    is_stale,
    job_of,
    may_take_over,
    new_claim,
    parse_claim,
    released,
    renew_every,
    renewed,
    still_held,
    sweepable,
    taken_over,
    watch_delay,
    went_silent,
)
from backupd.environment import load_settings
from backupd.errors import ConfigError, CoordinationError
from backupd.schedule import Schedule, previous_fire

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
LEASE = 60.0


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


CLAIM = new_claim("orders", Kind.BACKUP, T0, "replica-a", "n1", T0, LEASE)


@pytest.mark.parametrize(
    ("folder", "target", "kind", "slot", "expected"),
    [
        (
            "backups",
            "orders",
            Kind.BACKUP,
            T0,
            "backups/.backupd/claims/orders/backup/20261129T020000Z.json",
        ),
        ("", "default", Kind.PRUNE, T0, ".backupd/claims/default/prune/20261129T020000Z.json"),
        (
            "a/b/",
            "x_1",
            Kind.VERIFY,
            T0,
            "a/b/.backupd/claims/x_1/verify/20261129T020000Z.json",
        ),
        # the slot is named in UTC whatever the zone it was computed in
        (
            "backups",
            "orders",
            Kind.BACKUP,
            datetime(2026, 7, 1, 2, 30, tzinfo=BERLIN),
            "backups/.backupd/claims/orders/backup/20260701T003000Z.json",
        ),
        # the two 02:30 of the night clocks go back are two slots with two names
        (
            "backups",
            "orders",
            Kind.BACKUP,
            datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1),
            "backups/.backupd/claims/orders/backup/20261025T013000Z.json",
        ),
        (
            "backups",
            "orders",
            Kind.BACKUP,
            datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=0),
            "backups/.backupd/claims/orders/backup/20261025T003000Z.json",
        ),
    ],
)
def test_claim_names_agree_between_replicas(
    folder: str, target: str, kind: Kind, slot: datetime, expected: str
) -> None:
    assert claim_key(folder, target, kind, slot) == expected
    assert expected.startswith(claims_prefix(folder))


def test_deployments_backing_up_other_databases_claim_other_keys() -> None:
    """Two deployments may share a folder and a target name (each its unnamed ``default``):
    a slot one of them claimed must not be skipped by the other as claimed elsewhere."""
    app = job_of("postgres", "db.internal", 5432, "app")
    assert job_of("postgres", "DB.internal.", 5432, "app") == app  # every replica agrees
    others = {
        job_of("postgres", "db.internal", 5432, "billing"),
        job_of("postgres", "db.internal", 5432, "app,billing"),
        job_of("postgres", "other.internal", 5432, "app"),
        job_of("postgres", "db.internal", 5433, "app"),
        job_of("mariadb", "db.internal", 5432, "app"),
        job_of("postgres", "db.internal", 5432, "*"),
    }
    assert app not in others and len(others) == 6
    key = claim_key("backups", "default", Kind.BACKUP, T0, app)
    assert key == f"backups/.backupd/claims/default.{app}/backup/20261129T020000Z.json"
    assert key != claim_key("backups", "default", Kind.BACKUP, T0, job_of("postgres", "h", 1, "x"))
    with pytest.raises(ValueError):
        claim_key("backups", "default", Kind.BACKUP, T0, "../x")
    # the newest slot of each deployment's target is kept by a sweep, as a target's own
    old = [(key, T0), (claim_key("backups", "default", Kind.BACKUP, T0, "0123abcd"), T0)]
    assert sweepable(old, "backups", T0 + 3 * STALE_AFTER) == []


@pytest.mark.parametrize(
    ("target", "slot"),
    [("orders", datetime(2026, 11, 29, 2, 0)), ("../x", T0), ("a/b", T0), ("", T0)],
)
def test_claim_names_refuse_naive_slots_and_odd_targets(target: str, slot: datetime) -> None:
    with pytest.raises(ValueError):
        claim_key("backups", target, Kind.BACKUP, slot)


def test_a_claim_survives_its_round_trip() -> None:
    claim = replace(renewed(CLAIM, later(5), LEASE, writing="backups/x.dump"), state=State.DONE)
    assert parse_claim(claim.to_bytes(), "k") == claim


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "JSONDecodeError"),
        (b"[]", "not a JSON object"),
        (b'{"target": "orders"}', "KeyError"),
        (CLAIM.to_bytes().replace(b'"backup"', b'"dance"'), "ValueError"),
        (CLAIM.to_bytes().replace(b'"token": 1', b'"token": 0'), "token must be"),
        (CLAIM.to_bytes().replace(b'"token": 1', b'"token": "1"'), "token must be"),
        (CLAIM.to_bytes().replace(b"+00:00", b""), "no UTC offset"),
        (CLAIM.to_bytes().replace(b'"replica-a"', b'""'), "replica must be"),
        (b'{"a": "\x80"}', "UnicodeDecodeError"),
    ],
)
def test_malformed_claims_are_errors_naming_the_key(data: bytes, why: str) -> None:
    key = "backups/.backupd/claims/orders/backup/20261129T020000Z.json"
    with pytest.raises(CoordinationError, match=why) as caught:
        parse_claim(data, key)
    assert str(caught.value).startswith(f"claim {key} is malformed")


def test_a_takeover_raises_the_fencing_token_and_forgets_the_upload() -> None:
    held = renewed(CLAIM, later(10), LEASE, writing="backups/x.dump")
    taken = taken_over(held, "replica-b", "n2", later(80), LEASE)
    again = taken_over(taken, "replica-c", "n3", later(200), LEASE)

    assert (taken.replica, taken.token, taken.writing) == ("replica-b", 2, None)
    assert taken.expires == later(140)
    assert again.token == 3
    assert renewed(held, later(20), LEASE).writing == "backups/x.dump"


@pytest.mark.parametrize(
    ("claim", "now", "expected"),
    [
        (CLAIM, later(0), False),
        (CLAIM, later(59.999), False),
        (CLAIM, later(60), True),
        (CLAIM, later(3600), True),
        (finished(CLAIM), later(3600), False),  # a finished slot is never run again
        (released(CLAIM, later(5)), later(5), True),  # handed back at shutdown
        (renewed(CLAIM, later(50), LEASE), later(60), False),
    ],
)
def test_who_may_take_a_slot_over(claim: Claim, now: datetime, expected: bool) -> None:
    assert may_take_over(claim, now) is expected


@pytest.mark.parametrize(
    ("claim", "unchanged_for", "expected"),
    [
        (CLAIM, 0.0, False),
        (CLAIM, LEASE - 0.1, False),
        (CLAIM, LEASE, True),  # whatever the expiry it records
        (finished(CLAIM), 10 * LEASE, False),
        (replace(CLAIM, lease=10 * LEASE), 2 * LEASE, False),  # the holder's lease is longer
        (replace(CLAIM, lease=10 * LEASE), 10 * LEASE, True),
        (replace(CLAIM, lease=None), LEASE, True),  # written before leases were recorded
    ],
)
def test_a_claim_unchanged_for_a_whole_lease_on_the_watchers_clock_went_silent(
    claim: Claim, unchanged_for: float, expected: bool
) -> None:
    assert went_silent(claim, unchanged_for, LEASE) is expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [(later(0), True), (later(39.9), True), (later(40), False), (later(61), False)],
)
def test_a_holder_stops_trusting_its_claim_a_third_of_a_lease_early(
    now: datetime, expected: bool
) -> None:
    assert still_held(CLAIM, now, LEASE) is expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [(later(0), 20.0), (later(50), 10.0), (later(60), 0.0), (later(90), 0.0)],
)
def test_a_watcher_reads_again_at_expiry_or_every_third_of_a_lease(
    now: datetime, expected: float
) -> None:
    assert watch_delay(CLAIM, now, LEASE) == expected


@pytest.mark.parametrize(("lease", "every"), [(60, 20), (3, 1), (2, 2 / 3)])
def test_renewals_come_every_third_of_a_lease(lease: float, every: float) -> None:
    assert renew_every(lease) == pytest.approx(every)


@pytest.mark.parametrize(
    ("modified", "expected"),
    [(later(0), False), (later(-86400), False), (later(-86401), True), (later(-(10**6)), True)],
)
def test_claims_not_written_for_a_day_are_stale(modified: datetime, expected: bool) -> None:
    assert is_stale(modified, T0) is expected


def claim_at(target: str, kind: Kind, slot: str) -> str:
    """The key of ``target``'s ``kind`` claim for ``slot`` (UTC, ``YYYY-MM-DD HH:MM``)."""
    return claim_key("backups", target, kind, datetime.fromisoformat(f"{slot}+00:00"))


DAYS_AGO = [later(-days * 86400) for days in range(4)]
YEARLY = claim_at("yearly", Kind.BACKUP, "2026-01-01 00:00")
OFTEN = [claim_at("often", Kind.BACKUP, f"2026-11-2{day} 02:00") for day in (6, 7, 8, 9)]
PROBE = "backups/.backupd/claims/.probe-0123456789ab.json"


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ([], []),
        # a target's newest slot keeps its claim however old: the start-up run reads it
        ([(YEARLY, DAYS_AGO[3])], []),
        # while a target that runs often sweeps the folder (its claims written 3, 2, 1 and 0
        # days ago: exactly a day is not yet stale)
        ([*zip(OFTEN, reversed(DAYS_AGO), strict=True), (YEARLY, DAYS_AGO[3])], OFTEN[:2]),
        # the newest slot by its name, not by when its claim was last written
        ([(OFTEN[0], DAYS_AGO[2]), (OFTEN[1], DAYS_AGO[3])], [OFTEN[0]]),
        # each kind of a target, and each target, has its newest slot
        (
            [
                (claim_at("orders", Kind.BACKUP, "2026-11-20 02:00"), DAYS_AGO[3]),
                (claim_at("orders", Kind.VERIFY, "2026-11-01 05:00"), DAYS_AGO[3]),
                (claim_at("orders", Kind.VERIFY, "2026-11-08 05:00"), DAYS_AGO[3]),
                (claim_at("orders.eu", Kind.BACKUP, "2026-11-21 02:00"), DAYS_AGO[3]),
            ],
            [claim_at("orders", Kind.VERIFY, "2026-11-01 05:00")],
        ),
        # left-over probes and other names: by age alone
        ([(PROBE, DAYS_AGO[2])], [PROBE]),
        ([(PROBE, later(-3600))], []),
        (
            [("backups/.backupd/claims/often/backup/notes.txt", DAYS_AGO[2]), (OFTEN[0], T0)],
            ["backups/.backupd/claims/often/backup/notes.txt"],
        ),
    ],
)
def test_a_sweep_keeps_each_targets_newest_slot_and_the_last_day(
    listed: list[tuple[str, datetime]], expected: list[str]
) -> None:
    assert sweepable(listed, "backups", T0) == expected


def test_a_sweep_of_the_bucket_root_keeps_the_newest_slot_too() -> None:
    old, new = (claim_key("", "default", Kind.BACKUP, T0 - timedelta(days=d)) for d in (9, 8))
    listed = [(old, DAYS_AGO[3]), (new, DAYS_AGO[3])]
    assert sweepable(listed, "", T0) == [old]


@pytest.mark.parametrize(
    ("expression", "zone", "at", "expected"),
    [
        ("*/3 * * * * *", "UTC", later(4.5), later(3)),
        ("*/3 * * * * *", "UTC", later(3), later(3)),
        ("*/3 * * * * *", "UTC", later(2.999), later(0)),
        ("0 2 * * *", "UTC", later(-1), datetime(2026, 11, 28, 2, 0, tzinfo=UTC)),
        # clocks forward in Berlin: 02:30 did not exist and ran at 03:00
        (
            "30 2 * * *",
            "Europe/Berlin",
            datetime(2026, 3, 29, 12, 0, tzinfo=UTC),
            datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN),
        ),
    ],
)
def test_the_start_up_run_stands_for_the_latest_slot(
    expression: str, zone: str, at: datetime, expected: datetime
) -> None:
    assert previous_fire(Schedule(expression, zone), at) == expected


STORAGE = {
    "DB_HOST": "db",
    "DB_USER": "u",
    "DB_DATABASE": "app",
    "STORAGE_BUCKET_NAME": "backups",
}


@pytest.mark.parametrize(
    ("env", "mode", "replica", "lease"),
    [
        ({}, "none", socket.gethostname(), 60.0),
        ({"COORDINATION": "storage", "COORDINATION_LEASE": "30s"}, "storage", None, 30.0),
        (
            {"COORDINATION": "storage", "REPLICA_ID": "pod-1", "COORDINATION_LEASE": "5"},
            "storage",
            "pod-1",
            5.0,
        ),
    ],
)
def test_coordination_settings(
    env: dict[str, str], mode: str, replica: str | None, lease: float
) -> None:
    coordination = load_settings({**STORAGE, **env}).coordination
    assert coordination.mode.value == mode
    assert coordination.replica_id == (replica or socket.gethostname())
    assert coordination.lease == lease


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"COORDINATION": "raft"}, "COORDINATION: must be 'none' or 'storage' (got 'raft')"),
        ({"COORDINATION_LEASE": "1s"}, "COORDINATION_LEASE: must be greater than or equal to 2"),
        (
            {"REPLICA_ID": "a b"},
            "REPLICA_ID: must hold only letters A-Z and a-z, digits and . @ : _ -",
        ),
        (
            {
                "COORDINATION": "storage",
                "STORAGE_TYPE": "local",
                "STORAGE_LOCAL_PATH": "/backups",
            },
            "STORAGE_TYPE: COORDINATION=storage needs s3 or r2",
        ),
        (
            {
                "COORDINATION": "storage",
                "BACKUPD_TARGETS": "orders",
                "ORDERS_STORAGE_TYPE": "local",
                "STORAGE_LOCAL_PATH": "/backups",
            },
            "ORDERS_STORAGE_TYPE: COORDINATION=storage needs s3 or r2",
        ),
    ],
)
def test_coordination_settings_refused(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({**STORAGE, **env})
    assert [p for p in caught.value.problems if p.startswith(problem)], caught.value.problems


def test_a_claim_under_a_live_lease_is_never_old_enough_to_sweep() -> None:
    """A live holder wrote its claim less than a lease ago: no lease may reach the age at
    which a sweep deletes claims."""
    lease = f"{STALE_AFTER.total_seconds():.0f}"
    with pytest.raises(ConfigError) as caught:
        load_settings({**STORAGE, "COORDINATION": "storage", "COORDINATION_LEASE": lease})
    assert [p for p in caught.value.problems if p.startswith("COORDINATION_LEASE")]


@pytest.mark.parametrize("prefix", ["backups", "backups/default", ""])
def test_claims_are_never_taken_for_backups(prefix: str) -> None:
    folder = prefix.split("/")[0]
    for kind in Kind:
        assert parse_key(claim_key(folder, "default", kind, T0), prefix) is None
