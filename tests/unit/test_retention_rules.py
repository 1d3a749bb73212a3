from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backupd.retention import Candidate, Policy, before, decide, duration_problem

BERLIN = ZoneInfo("Europe/Berlin")


def at(zone: ZoneInfo, *parts: int, fold: int = 0) -> datetime:
    return datetime(*parts, tzinfo=zone, fold=fold)  # type: ignore[misc]


def backup(taken: datetime, database: str = "app", key: str | None = None) -> Candidate:
    return Candidate(key or f"{database}@{taken.astimezone(UTC):%Y%m%dT%H%M%S%z}", database, taken)


def kept(decisions: list[object]) -> dict[str, tuple[str, ...]]:
    return {d.candidate.key: d.reasons for d in decisions if d.keep}  # type: ignore[attr-defined]


def every(start: datetime, step: timedelta, count: int, database: str = "app") -> list[Candidate]:
    """``count`` backups ``step`` apart on the time line (not the wall clock)."""
    zone = start.tzinfo
    return [
        backup((start.astimezone(UTC) + i * step).astimezone(zone), database) for i in range(count)
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("36h", None),
        ("30d", None),
        ("6w", None),
        ("6m", None),
        ("1y", None),
        ("1y6m", None),
        ("1Y", None),
        ("", "not a duration"),
        ("30", "not a duration"),
        ("d30", "not a duration"),
        ("30 days", "not a duration"),
        ("-1d", "not a duration"),
        ("0d", "zero"),
        ("1000y", None),
        ("99999999y", "longer than 1000 years"),
        ("400000d", "longer than 1000 years"),
        ("99999999999h", "longer than 1000 years"),
    ],
)
def test_durations_are_a_number_and_a_unit(text: str, problem: str | None) -> None:
    found = duration_problem(text)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize(
    ("now", "duration", "zone", "expected"),
    [
        (at(UTC, 2026, 11, 28, 12), "36h", UTC, at(UTC, 2026, 11, 27)),
        # days are wall-clock days: 30 days across the clocks-back night keep the wall time
        (at(BERLIN, 2026, 11, 10, 2), "30d", BERLIN, at(BERLIN, 2026, 10, 11, 2)),
        (at(BERLIN, 2026, 11, 10, 2), "720h", BERLIN, at(BERLIN, 2026, 10, 11, 3)),
        (at(BERLIN, 2026, 3, 29, 4), "3h", BERLIN, at(BERLIN, 2026, 3, 29, 0)),
        (at(UTC, 2026, 11, 28), "6w", UTC, at(UTC, 2026, 10, 17)),
        # month ends and leap days
        (at(UTC, 2026, 3, 31, 5), "1m", UTC, at(UTC, 2026, 2, 28, 5)),
        (at(UTC, 2028, 3, 31, 5), "1m", UTC, at(UTC, 2028, 2, 29, 5)),
        (at(UTC, 2028, 2, 29), "1y", UTC, at(UTC, 2027, 2, 28)),
        (at(UTC, 2027, 1, 15), "1y6m", UTC, at(UTC, 2025, 7, 15)),
        (at(UTC, 2026, 1, 31), "2m", UTC, at(UTC, 2025, 11, 30)),
    ],
)
def test_before_steps_back_on_the_wall_clock(
    now: datetime, duration: str, zone: ZoneInfo, expected: datetime
) -> None:
    assert before(now, duration, zone) == expected


def test_no_policy_keeps_everything() -> None:
    backups = every(at(UTC, 2020, 1, 1), timedelta(days=1), 50)
    decisions = decide(backups, Policy(), at(UTC, 2026, 1, 1), UTC)
    assert all(d.keep and d.reasons == ("no policy",) for d in decisions)


def test_daily_keeps_the_newest_of_each_of_the_last_days_with_a_backup() -> None:
    # twice a day for ten days, and a gap: periods without a backup do not count
    backups = every(at(UTC, 2026, 11, 1, 2), timedelta(hours=12), 20)
    backups += [backup(at(UTC, 2026, 11, 20, 2))]
    decisions = decide(backups, Policy(daily=3), at(UTC, 2026, 11, 20, 3), UTC)
    assert kept(decisions) == {
        "app@20261120T020000+0000": ("newest", "daily 2026-11-20"),
        "app@20261110T140000+0000": ("daily 2026-11-10",),
        "app@20261109T140000+0000": ("daily 2026-11-09",),
    }
    assert [d.verdict for d in decisions].count("DELETE") == 18
    assert decisions[-1].why == "no rule keeps it"


def test_the_repeated_hour_of_a_clocks_back_night_is_an_hour_of_its_own() -> None:
    # Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice
    hours = [(0, 0), (1, 0), (2, 0), (2, 1), (3, 0), (4, 0)]
    backups = [backup(at(BERLIN, 2026, 10, 25, h, 30, fold=f)) for h, f in hours]
    backups += [backup(at(BERLIN, 2026, 10, 25, h, 45, fold=f)) for h, f in hours]
    decisions = decide(backups, Policy(hourly=4), at(BERLIN, 2026, 10, 25, 5), BERLIN)
    assert sorted(r for reasons in kept(decisions).values() for r in reasons) == [
        "hourly 2026-10-25 02:00 CEST",
        "hourly 2026-10-25 02:00 CET",
        "hourly 2026-10-25 03:00 CET",
        "hourly 2026-10-25 04:00 CET",
        "newest",
    ]
    assert all(d.candidate.taken.minute == 45 for d in decisions if d.keep)


def test_a_clocks_forward_day_is_one_day() -> None:
    # Berlin, 2026-03-29 has 23 hours; every hour of it is one daily period
    backups = every(at(BERLIN, 2026, 3, 28, 22), timedelta(hours=1), 30)
    decisions = decide(backups, Policy(daily=2), at(BERLIN, 2026, 3, 30, 6), BERLIN)
    on_the_29th = [b for b in backups if b.taken.astimezone(BERLIN).day == 29]
    assert len(on_the_29th) == 23
    assert kept(decisions) == {
        backups[-1].key: ("newest", "daily 2026-03-30"),
        on_the_29th[-1].key: ("daily 2026-03-29",),
    }
    assert on_the_29th[-1].taken.astimezone(BERLIN).hour == 23


def test_iso_week_53_spans_the_new_year() -> None:
    # 2026 has 53 ISO weeks: Monday 2026-12-28 to Sunday 2027-01-03 is 2026-W53
    backups = [
        backup(at(UTC, 2026, 12, 27, 2), key="sun-w52"),
        backup(at(UTC, 2026, 12, 29, 2), key="tue-w53"),
        backup(at(UTC, 2027, 1, 2, 2), key="sat-w53"),
        backup(at(UTC, 2027, 1, 5, 2), key="tue-w01"),
    ]
    decisions = decide(backups, Policy(weekly=3), at(UTC, 2027, 1, 5, 3), UTC)
    assert kept(decisions) == {
        "tue-w01": ("newest", "weekly 2027-W01"),
        "sat-w53": ("weekly 2026-W53",),
        "sun-w52": ("weekly 2026-W52",),
    }


def test_month_ends_and_leap_days_in_the_target_zone() -> None:
    backups = [
        # 23:30 UTC on Jan 31 is already February in Berlin
        backup(at(UTC, 2028, 1, 31, 23, 30), key="feb-by-berlin"),
        backup(at(BERLIN, 2028, 1, 31, 12), key="jan-31"),
        backup(at(BERLIN, 2028, 2, 29, 12), key="leap-day"),
        backup(at(BERLIN, 2028, 3, 1, 0, 0), key="march-1"),
        backup(at(BERLIN, 2028, 3, 31, 23, 59), key="march-31"),
    ]
    decisions = decide(backups, Policy(monthly=3), at(BERLIN, 2028, 4, 1, 1), BERLIN)
    assert kept(decisions) == {
        "march-31": ("newest", "monthly 2028-03"),
        "leap-day": ("monthly 2028-02",),
        "jan-31": ("monthly 2028-01",),
    }
    within = decide(backups, Policy(within="1m"), at(BERLIN, 2028, 3, 31, 12), BERLIN)
    assert set(kept(within)) == {"march-31", "march-1", "leap-day"}


def test_yearly_keeps_the_newest_of_each_year() -> None:
    backups = every(at(UTC, 2021, 6, 1), timedelta(days=90), 24)
    decisions = decide(backups, Policy(yearly=10), at(UTC, 2027, 3, 1), UTC)
    assert sorted(r for reasons in kept(decisions).values() for r in reasons if "yearly" in r) == [
        f"yearly {year}" for year in range(2021, 2028)
    ]
    assert [d.candidate.taken.month for d in decisions if "yearly 2026" in d.reasons] == [11]


def test_a_policy_is_the_union_of_its_rules() -> None:
    backups = every(at(UTC, 2026, 9, 1, 2), timedelta(days=1), 90)
    now = at(UTC, 2026, 11, 29, 3)
    decisions = decide(backups, Policy(last=2, daily=5, weekly=4, within="10d"), now, UTC)
    reasons = kept(decisions)
    assert reasons["app@20261129T020000+0000"] == (
        "newest",
        "last 2",
        "daily 2026-11-29",
        "weekly 2026-W48",
        "within 10d",
    )
    assert reasons["app@20261128T020000+0000"] == ("last 2", "daily 2026-11-28", "within 10d")
    # weekly: W48 (Nov 29, a Sunday), then the Sundays of W47, W46, W45
    weekly = sorted(d.candidate.key for d in decisions if any("weekly" in r for r in d.reasons))
    assert weekly == [
        "app@20261108T020000+0000",
        "app@20261115T020000+0000",
        "app@20261122T020000+0000",
        "app@20261129T020000+0000",
    ]
    assert len(reasons) == 10 + 2  # ten days within, plus the Sundays of W46 and W45


def test_each_database_keeps_its_own_set() -> None:
    busy = every(at(UTC, 2026, 11, 28), timedelta(minutes=10), 100, "busy")
    quiet = every(at(UTC, 2026, 11, 1), timedelta(days=7), 4, "quiet")
    globals_ = every(at(UTC, 2026, 11, 25), timedelta(days=1), 4, "(globals)")
    decisions = decide(busy + quiet + globals_, Policy(last=3), at(UTC, 2026, 11, 29), UTC)
    by_database: dict[str, int] = {}
    for decision in decisions:
        if decision.keep:
            by_database[decision.candidate.database] = (
                by_database.get(decision.candidate.database, 0) + 1
            )
    assert by_database == {"busy": 3, "quiet": 3, "(globals)": 3}


def test_ties_within_one_second_are_broken_by_key_whatever_the_listing_order() -> None:
    second = at(UTC, 2026, 11, 28, 2, 0, 0)
    backups = [backup(second, key=f"app-{run}") for run in ("a1", "f7", "c3", "09")]
    backups += [backup(second - timedelta(days=1), key="yesterday")]
    expected = {"app-f7": ("newest", "daily 2026-11-28"), "yesterday": ("daily 2026-11-27",)}
    for seed in range(5):
        random.Random(seed).shuffle(backups)
        decisions = decide(backups, Policy(daily=7), at(UTC, 2026, 11, 28, 3), UTC)
        assert kept(decisions) == expected
        assert [d.candidate.key for d in decisions][:4] == ["app-f7", "app-c3", "app-a1", "app-09"]


def test_the_newest_backup_is_kept_whatever_the_policy_says() -> None:
    backups = every(at(UTC, 2026, 11, 1), timedelta(hours=1), 5)
    decisions = decide(backups, Policy(within="1h"), at(UTC, 2026, 11, 1, 4, 30), UTC)
    assert kept(decisions) == {"app@20261101T040000+0000": ("newest", "within 1h")}


@pytest.mark.parametrize(
    ("policy", "now", "held"),
    [
        # the newest backup is a week old: a daily policy deletes nothing ...
        (Policy(daily=2), at(UTC, 2026, 11, 28, 2), True),
        (Policy(within="3d"), at(UTC, 2026, 11, 28, 2), True),
        (Policy(daily=2, monthly=12), at(UTC, 2026, 11, 28, 2), True),
        # ... a weekly one still does, and so does a count of backups
        (Policy(weekly=1), at(UTC, 2026, 11, 28, 0), False),
        (Policy(last=1), at(UTC, 2030, 1, 1), False),
        (Policy(daily=2), at(UTC, 2026, 11, 22, 1), False),
    ],
)
def test_a_stalled_database_keeps_everything(policy: Policy, now: datetime, held: bool) -> None:
    backups = every(at(UTC, 2026, 11, 15, 2), timedelta(hours=6), 25)  # the last on Nov 21
    decisions = decide(backups, policy, now, UTC)
    assert all(d.keep for d in decisions) is held
    if held:
        assert any(
            r.startswith("held: the newest backup is older than") for r in decisions[-1].reasons
        )


def test_a_run_longer_than_the_shortest_period_is_no_stalled_target() -> None:
    """Hourly backups, the newest a dump of 2 h 05 min that began at 02:00: pruning after it,
    at 04:05, found the newest backup "older than 1h" by its start, held everything, and the
    target never pruned again while its runs took over an hour. Judged by when it finished,
    the policy applies; a target whose newest backup finished long ago is still held."""
    hourly = every(at(UTC, 2026, 11, 1), timedelta(hours=1), 3)  # 00:00, 01:00, 02:00
    long_run = replace(hourly[-1], finished=at(UTC, 2026, 11, 1, 4, 5))
    backups = [*hourly[:-1], long_run]

    decisions = decide(backups, Policy(hourly=2), at(UTC, 2026, 11, 1, 4, 5, 30), UTC)

    assert sorted(kept(decisions)) == ["app@20261101T010000+0000", "app@20261101T020000+0000"]
    stalled = decide(backups, Policy(hourly=2), at(UTC, 2026, 11, 1, 5, 10), UTC)
    assert all(d.keep for d in stalled)


def test_newest_period_is_the_shortest_the_policy_names() -> None:
    assert Policy(last=5).newest_period() is None
    assert Policy(daily=7, monthly=12).newest_period() == "1d"
    assert Policy(weekly=4, within="36h").newest_period() == "36h"
    assert Policy(hourly=24, within="30d").newest_period() == "1h"
    assert Policy(yearly=3).newest_period() == "1y"
    assert Policy(last=3, daily=7, within="30d").describe() == "last 3, daily 7, within 30d"


def test_the_readme_worked_example() -> None:
    # daily at 02:00 in Berlin since May; after the run of Sunday 2026-11-29
    backups = every(at(BERLIN, 2026, 5, 1, 2), timedelta(days=1), 213)
    policy = Policy(daily=7, weekly=4, monthly=6)
    decisions = decide(backups, policy, at(BERLIN, 2026, 11, 29, 2, 30), BERLIN)
    days = [f"{d.candidate.taken:%m-%d}" for d in decisions if d.keep]
    assert days == [
        *(f"11-{day}" for day in range(29, 22, -1)),
        *("11-22", "11-15", "11-08"),
        *("10-31", "09-30", "08-31", "07-31", "06-30"),
    ]
    assert decisions[0].why == "newest, daily 2026-11-29, weekly 2026-W48, monthly 2026-11"
    assert sum(not d.keep for d in decisions) == 213 - 15
