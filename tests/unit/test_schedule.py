from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backupd.check import describe_target
from backupd.environment import load_settings, load_target
from backupd.errors import ConfigError
from backupd.schedule import (
    BACKWARD_TOLERANCE,
    MAX_SLEEP,
    MISSED_CAP,
    Schedule,
    clock_went_back,
    cron_problem,
    following_slot,
    next_fire,
    resumed_slot,
    sleep_step,
    staleness_interval,
)
from tests.unit.test_config import MINIMAL

BERLIN = ZoneInfo("Europe/Berlin")
SAO_PAULO = ZoneInfo("America/Sao_Paulo")


def at(zone: ZoneInfo, *parts: int, fold: int = 0) -> datetime:
    return datetime(*parts, tzinfo=zone, fold=fold)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("expression", "zone", "after", "expected"),
    [
        # plain days, month ends and leap days
        ("30 2 * * *", "UTC", at(UTC, 2026, 1, 31, 3), at(UTC, 2026, 2, 1, 2, 30)),
        ("0 0 31 * *", "UTC", at(UTC, 2026, 2, 1), at(UTC, 2026, 3, 31)),
        ("0 0 L * *", "UTC", at(UTC, 2026, 2, 1), at(UTC, 2026, 2, 28)),
        ("0 12 29 2 *", "UTC", at(UTC, 2026, 3, 1), at(UTC, 2028, 2, 29, 12)),
        ("0 */12 * * *", "UTC", at(UTC, 2026, 12, 31, 12), at(UTC, 2027, 1, 1)),
        # six fields: seconds first
        ("*/15 * * * * *", "UTC", at(UTC, 2026, 5, 1, 12, 0, 7), at(UTC, 2026, 5, 1, 12, 0, 15)),
        ("0 30 2 * * *", "UTC", at(UTC, 2026, 5, 1, 3), at(UTC, 2026, 5, 2, 2, 30)),
        # Berlin, clocks forward 2026-03-29 02:00 -> 03:00: 02:30 does not exist, runs at 03:00
        ("30 2 * * *", "Europe/Berlin", at(BERLIN, 2026, 3, 28, 3), at(BERLIN, 2026, 3, 29, 3)),
        ("30 2 * * *", "Europe/Berlin", at(BERLIN, 2026, 3, 29, 3), at(BERLIN, 2026, 3, 30, 2, 30)),
        # Berlin, clocks back 2026-10-25 03:00 -> 02:00: 02:30 happens twice, runs the first time
        (
            "30 2 * * *",
            "Europe/Berlin",
            at(BERLIN, 2026, 10, 24, 3),
            at(BERLIN, 2026, 10, 25, 2, 30),
        ),
        (
            "30 2 * * *",
            "Europe/Berlin",
            at(BERLIN, 2026, 10, 25, 2, 30),
            at(BERLIN, 2026, 10, 26, 2, 30),
        ),
        (
            "0 * * * *",
            "Europe/Berlin",
            at(BERLIN, 2026, 10, 25, 2, 0),
            at(BERLIN, 2026, 10, 25, 3, 0),
        ),
        # Sao Paulo's historic DST: forward at midnight 2018-11-04, back at midnight 2019-02-17
        (
            "0 0 * * *",
            "America/Sao_Paulo",
            at(SAO_PAULO, 2018, 11, 3, 12),
            at(SAO_PAULO, 2018, 11, 4, 1),
        ),
        (
            "30 23 * * *",
            "America/Sao_Paulo",
            at(SAO_PAULO, 2019, 2, 16, 12),
            at(SAO_PAULO, 2019, 2, 16, 23, 30),
        ),
        (
            "30 23 * * *",
            "America/Sao_Paulo",
            at(SAO_PAULO, 2019, 2, 16, 23, 30),
            at(SAO_PAULO, 2019, 2, 17, 23, 30),
        ),
    ],
)
def test_next_fire(expression: str, zone: str, after: datetime, expected: datetime) -> None:
    fire = next_fire(Schedule(expression, zone), after)
    assert fire == expected
    assert fire.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize(
    ("zone", "start"),
    [
        ("Europe/Berlin", at(BERLIN, 2026, 3, 26)),  # spring forward inside the week
        ("Europe/Berlin", at(BERLIN, 2026, 10, 22)),  # fall back inside the week
        ("America/Sao_Paulo", at(SAO_PAULO, 2018, 11, 1)),
        ("America/Sao_Paulo", at(SAO_PAULO, 2019, 2, 14)),
    ],
)
@pytest.mark.parametrize("expression", ["30 2 * * *", "0 0 * * *", "30 23 * * *", "15 1 * * *"])
def test_a_daily_job_runs_exactly_once_a_day_across_dst(
    expression: str, zone: str, start: datetime
) -> None:
    schedule = Schedule(expression, zone)
    fires = []
    moment = start - timedelta(seconds=1)  # so that a fire at exactly `start` counts
    while moment < start + timedelta(days=7):
        moment = next_fire(schedule, moment)
        fires.append(moment)
    days = [
        fire.astimezone(schedule.tz).date() for fire in fires if fire < start + timedelta(days=7)
    ]
    assert len(days) == len(set(days)) == 7


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("61 * * * *", "not a valid cron expression"),
        ("* * *", "has 3 fields"),
        ("* * * * * * *", "has 7 fields"),
        ("0 0 30 2 *", "never fires"),
        ("banana * * * *", "not a valid cron expression"),
        ("R 2 * * *", "uses R, a random time"),
        ("0 r * * *", "uses R, a random time"),
        ("R(0-29)/10 2 * * * *", "uses R, a random time"),
        ("0 2 * * R", "uses R, a random time"),
        ("H 2 * * *", "uses H, a time hashed"),
        ("H(0-29) 2 * * *", "uses H, a time hashed"),
    ],
)
def test_bad_expressions_say_why(expression: str, fragment: str) -> None:
    problem = cron_problem(expression)
    assert problem is not None
    assert fragment in problem


@pytest.mark.parametrize(
    "expression", ["0 */12 * * *", "*/2 * * * * *", "@daily", "0 3 * * mon-fri", "0 2 * * thu"]
)
def test_good_expressions_pass(expression: str) -> None:
    assert cron_problem(expression) is None


def test_slots_missed_while_suspended_collapse_into_one_run() -> None:
    schedule = Schedule("30 2 * * *", "UTC")
    scheduled = at(UTC, 2026, 5, 1, 2, 30)

    following, missed = following_slot(schedule, scheduled, now=at(UTC, 2026, 5, 3, 5))

    assert following == at(UTC, 2026, 5, 4, 2, 30)
    assert missed == 2


def test_the_slot_after_one_is_counted_from_it_not_from_a_clock_behind_it() -> None:
    schedule = Schedule("30 2 * * *", "UTC")
    scheduled = at(UTC, 2026, 5, 1, 2, 30)

    following, missed = following_slot(schedule, scheduled, now=at(UTC, 2026, 5, 1, 1, 0))

    assert following == at(UTC, 2026, 5, 2, 2, 30)
    assert missed == 0


@pytest.mark.parametrize(
    ("now", "until", "step"),
    [
        (at(UTC, 2026, 1, 1, 0, 0, 0), at(UTC, 2026, 1, 1, 0, 0, 5), 5.0),
        (at(UTC, 2026, 1, 1, 0, 0, 0), at(UTC, 2026, 1, 1, 1, 0, 0), MAX_SLEEP),
        (at(UTC, 2026, 1, 1, 0, 0, 9), at(UTC, 2026, 1, 1, 0, 0, 5), 0.0),
    ],
)
def test_sleep_step_rereads_the_wall_clock_often(
    now: datetime, until: datetime, step: float
) -> None:
    assert sleep_step(now, until) == step


@pytest.mark.parametrize(
    ("back", "went_back"),
    [
        (timedelta(0), False),
        (timedelta(seconds=1), False),  # an NTP step
        (BACKWARD_TOLERANCE, False),
        (BACKWARD_TOLERANCE + timedelta(seconds=1), True),
        (timedelta(hours=3), True),
        (-timedelta(days=60), False),  # forward: a suspend, or a jump ahead
    ],
)
def test_only_a_step_back_beyond_the_tolerance_is_a_jump(back: timedelta, went_back: bool) -> None:
    reached = at(UTC, 2026, 5, 1, 2, 30)

    assert clock_went_back(reached, reached - back) is went_back


def test_after_the_clock_goes_back_hours_the_schedule_resumes_from_now() -> None:
    """The clock ran 3 h ahead, a run started at its 15:00 slot; then the clock is set right."""
    schedule = Schedule("*/1 * * * *", "UTC")
    ran = at(UTC, 2026, 5, 1, 15, 0)
    waiting_for, _ = following_slot(schedule, ran, now=ran + timedelta(seconds=1))
    now = at(UTC, 2026, 5, 1, 12, 0, 20)

    resumed = resumed_slot(schedule, ran, now)

    assert waiting_for == at(UTC, 2026, 5, 1, 15, 1)
    assert resumed == at(UTC, 2026, 5, 1, 12, 1)


@pytest.mark.parametrize("back", [timedelta(seconds=1), timedelta(seconds=59)])
def test_a_small_step_back_right_after_a_slot_does_not_repeat_it(back: timedelta) -> None:
    schedule = Schedule("30 2 * * *", "UTC")
    ran = at(UTC, 2026, 5, 1, 2, 30)
    now = ran + timedelta(seconds=0.5)

    assert resumed_slot(schedule, max(ran, now), now - back) is None


@pytest.mark.parametrize("back", [timedelta(seconds=1), timedelta(seconds=59)])
def test_a_small_step_back_right_after_the_first_slot_past_the_spring_gap_does_not_repeat_it(
    back: timedelta,
) -> None:
    """The slot is placed in its zone, as the daemon's are: 03:00 CEST, right after the gap,
    where the wall time a minute earlier (02:59) does not exist."""
    schedule = Schedule("0 3 * * *", "Europe/Berlin")
    ran = next_fire(schedule, at(UTC, 2026, 3, 28, 12, 0))
    now = ran.astimezone(UTC) - timedelta(seconds=0.5)

    assert resumed_slot(schedule, max(ran, now), now - back) is None


@pytest.mark.parametrize(
    ("expression", "after", "hours"),
    [
        ("0 2 * * *", at(UTC, 2026, 3, 28, 12, 0), 24),  # to 03:00 CEST: 02:00 does not exist
        ("0 2 * * *", at(UTC, 2026, 10, 25, 12, 0), 25),  # across the repeated hour
        ("0 * * * *", at(UTC, 2026, 10, 25, 1, 30), 2),  # 02:00 CEST, then 03:00 CET
        ("*/30 * * * *", at(UTC, 2026, 10, 25, 0, 45), 1.5),  # the repeated hour runs once
        ("0 2 * * 1-5", at(UTC, 2026, 11, 27, 12, 0), 72),  # waiting for Monday
        ("0 2 * * 1-5", at(UTC, 2026, 11, 30, 12, 0), 72),  # Monday's run may still go on
        ("0 2 * * 1-5", at(UTC, 2026, 12, 1, 12, 0), 24),
        ("0 2 * * *", at(UTC, 2026, 5, 1, 12, 0), 24),
    ],
)
def test_the_staleness_interval_is_the_longer_gap_beside_the_last_slot_on_the_time_line(
    expression: str, after: datetime, hours: float
) -> None:
    """What a staleness alert doubles and compares with the time since the last success: with
    the interval after the next slot, a weekday schedule's alert fired every weekend (72 h
    since Friday's backup against twice 24 h), and a half-hourly one's at the repeated hour."""
    schedule = Schedule(expression, "Europe/Berlin")

    assert staleness_interval(schedule, next_fire(schedule, after)) == timedelta(hours=hours)


@pytest.mark.parametrize(
    ("expression", "jump"),
    [
        ("*/1 * * * *", timedelta(days=1)),
        ("*/1 * * * *", timedelta(days=60)),
        ("*/10 * * * * *", timedelta(days=1)),
    ],
)
def test_a_long_jump_forward_finds_the_next_slot_without_walking_every_missed_one(
    expression: str, jump: timedelta
) -> None:
    schedule = Schedule(expression, "Europe/Berlin")
    scheduled = at(UTC, 2026, 5, 1, 2, 30)
    now = scheduled + jump + timedelta(seconds=7)
    began = time.perf_counter()

    following, missed = following_slot(schedule, scheduled, now)

    assert time.perf_counter() - began < 0.25  # slot by slot, one day of minutes took 1.1 s
    assert following == next_fire(schedule, now)
    assert missed == MISSED_CAP  # "at least"


@pytest.mark.parametrize("variable", ["CRON_SCHEDULE", "VERIFY_SCHEDULE"])
def test_a_random_schedule_is_a_configuration_error_naming_its_variable(variable: str) -> None:
    env = {
        "DB_TYPE": "postgres",
        "DB_HOST": "db",
        "DB_DATABASE": "app",
        "DB_USER": "backupd",
        "STORAGE_TYPE": "local",
        "STORAGE_LOCAL_PATH": "/backups",
        variable: "R 2 * * *",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(env)

    assert [problem.split(":")[0] for problem in caught.value.problems] == [variable]
    assert "uses R, a random time" in caught.value.problems[0]


@pytest.mark.parametrize(
    ("cron", "next_two"),
    [
        ("0 2 * * *", "next 2026-11-30 02:00:00+0100, then 2026-12-01 02:00:00+0100"),
        # Six fields are seconds first: this is 02 minutes past every hour, and check shows it.
        ("0 2 * * * *", "next 2026-11-29 16:02:00+0100, then 2026-11-29 17:02:00+0100"),
    ],
)
def test_check_shows_the_next_two_runs_so_the_interval_is_plain(cron: str, next_two: str) -> None:
    target = load_target({**MINIMAL, "CRON_SCHEDULE": cron, "TIMEZONE": "Europe/Berlin"})

    line = describe_target(target, datetime(2026, 11, 29, 14, 30, tzinfo=UTC))

    assert line.endswith(f"schedule '{cron}' (Europe/Berlin), {next_two}")
