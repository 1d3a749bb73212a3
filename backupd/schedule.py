"""When backups run: pure functions over cron expressions, time zones and the clock.

Cron is evaluated on the local wall clock of the target's zone, one naive wall time after the
next, and each wall time is then placed on the real time line:

- on the night the clocks go back, a wall time that happens twice runs once (the first time);
- on the night they go forward, a wall time that does not exist runs at the first valid
  instant after it (02:30 in a 02:00→03:00 gap runs at 03:00).

Each next time is computed from the previous *scheduled* time, never from "now", so a clock
that steps back a little (NTP) cannot repeat a slot; slots missed while the process was
suspended collapse into one run. A wall clock that goes back further than
``BACKWARD_TOLERANCE`` behind the point the next slot was computed from is a jump: the schedule
starts again from the new "now" (see ``clock_went_back``), so backups go on instead of waiting
for the wall clock to catch up; a slot may then repeat by its label.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter

DRAWN = re.compile(r"(?P<kind>[hr])(\(\d+-\d+\))?(/\d+)?", re.IGNORECASE | re.ASCII)
"""croniter's ``R`` (random) and ``H`` (hashed) fields, as its ``hash_expression_re`` reads them."""
ALIASES = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
MAX_SLEEP = 30.0  # seconds; the wall clock is re-read at least this often
MISSED_CAP = 100
"""Slots missed meanwhile are counted up to this many, one croniter step (about 50 µs) each:
a jump of months on a seconds schedule is not walked slot by slot on the event loop."""
BACKWARD_TOLERANCE = timedelta(seconds=60)
"""How far the wall clock may step back without being taken as a jump. NTP steps a clock by
the offset it measured (ntpd only above 128 ms, chrony's ``makestep`` usually above 1 s), which
on a synchronised host stays far below this; a wrong clock set right, a VM restored from a
snapshot or a manual ``date -s`` goes beyond it."""


@dataclass(frozen=True)
class Schedule:
    expression: str
    timezone: str

    @property
    def seconds_first(self) -> bool:
        return len(self.expression.split()) == 6

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a usable schedule, or None."""
    text = expression.strip()
    fields = text.split()
    if text.lower() in ALIASES:
        return None
    if len(fields) not in (5, 6):
        return (
            f"{text!r} has {len(fields)} fields; use 5 (minute hour day month weekday) "
            "or 6 (second first)"
        )
    drawn = [found["kind"].upper() for f in fields if (found := DRAWN.fullmatch(f))]
    if "R" in drawn:
        return (
            f"{text!r} uses R, a random time drawn anew each time the next slot is computed "
            "(replicas and restarts would not agree on a slot); write the time out"
        )
    if drawn:
        return (
            f"{text!r} uses H, a time hashed from an id that backupd does not give; "
            "write the time out"
        )
    try:
        croniter(text, datetime(2000, 1, 1), second_at_beginning=len(fields) == 6).get_next(
            datetime
        )
    except CroniterBadDateError:
        return f"{text!r} never fires"
    except (CroniterError, ValueError, KeyError) as error:
        return f"{text!r} is not a valid cron expression ({error})"
    return None


def on_timeline(wall: datetime, tz: ZoneInfo) -> datetime:
    """Place a naive wall time in ``tz`` on the real time line (see the module docstring)."""
    candidate = wall
    while not _exists(candidate, tz):
        candidate = (candidate + timedelta(minutes=1)).replace(second=0, microsecond=0)
    return candidate.replace(tzinfo=tz, fold=0)


def _exists(wall: datetime, tz: ZoneInfo) -> bool:
    aware = wall.replace(tzinfo=tz, fold=0)
    return aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall


def fires_after(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """The scheduled instants strictly after ``after`` (an aware datetime), in order, from one
    croniter."""
    tz = schedule.tz
    local = after.astimezone(tz).replace(tzinfo=None)
    walls = croniter(schedule.expression, local, second_at_beginning=schedule.seconds_first)
    latest = after
    while True:
        instant = on_timeline(walls.get_next(datetime), tz)
        if instant > latest:
            latest = instant
            yield instant


def next_fire(schedule: Schedule, after: datetime) -> datetime:
    """The first scheduled instant strictly after ``after`` (an aware datetime)."""
    return next(fires_after(schedule, after))


def staleness_interval(schedule: Schedule, upcoming: datetime) -> timedelta:
    """The longer of the two gaps beside the last slot before ``upcoming``, on the time line,
    which ``backupd_schedule_interval_seconds`` exports for BackupdNoRecentBackup to double.
    Until ``upcoming``, the newest success of a healthy target is at most the two gaps old (the
    last slot's run may still go on), also where gaps differ: a weekday schedule's Monday slot
    is 72 hours after Friday's (the 24 hours after it made the alert fire every weekend), and
    on the night clocks go forward a daily 02:00 slot runs at 03:00, 24 hours after the one
    before (the wall clock's arithmetic, which aware datetimes of one zone follow, says 25)."""
    last = previous_fire(schedule, upcoming - timedelta(microseconds=1))
    before = previous_fire(schedule, last - timedelta(microseconds=1))
    utc = [instant.astimezone(UTC) for instant in (before, last, upcoming)]
    return max(utc[2] - utc[1], utc[1] - utc[0])


def previous_fire(schedule: Schedule, at: datetime) -> datetime:
    """The last scheduled instant at or before ``at`` (an aware datetime): the slot a run that
    starts at ``at`` without a slot of its own (``RUN_ON_STARTUP``) stands for."""
    tz = schedule.tz
    local = (at + timedelta(seconds=1)).astimezone(tz).replace(tzinfo=None)
    walls = croniter(schedule.expression, local, second_at_beginning=schedule.seconds_first)
    while True:
        instant = on_timeline(walls.get_prev(datetime), tz)
        if instant <= at:
            return instant


def following_slot(schedule: Schedule, scheduled: datetime, now: datetime) -> tuple[datetime, int]:
    """The slot after ``scheduled`` that is still ahead of ``now``, and how many were missed
    in between, counted up to ``MISSED_CAP``. The slot is found from ``now``, not by walking
    from ``scheduled``: after a suspend or a jump of months both take bounded time."""
    slot = next_fire(schedule, max(scheduled, now))
    missed = 0
    if now > scheduled:
        for fire in fires_after(schedule, scheduled):
            if fire > now or missed == MISSED_CAP:
                break
            missed += 1
    return slot, missed


def clock_went_back(reached: datetime, now: datetime) -> bool:
    """True when the wall clock ``now`` lies more than ``BACKWARD_TOLERANCE`` before
    ``reached``, the latest instant the schedule was computed from (the slot last started, or
    the wall clock then if later): the clock jumped back, and the next slot, computed from
    ``reached``, may be as far ahead as the jump. Measured on the time line: ``reached`` may be
    a slot in its zone, where arithmetic is the wall clock's (a minute before 03:00 CEST on the
    night clocks go forward is 02:59, which does not exist and reads as an hour later)."""
    return now < reached.astimezone(UTC) - BACKWARD_TOLERANCE


def resumed_slot(schedule: Schedule, reached: datetime, now: datetime) -> datetime | None:
    """The slot to wait for instead when the wall clock went back (see ``clock_went_back``):
    the first after ``now``, which may repeat a slot already run by its label. None when it
    did not go back that far: the slot computed from ``reached`` stands, so a small step back
    right after a slot does not repeat it."""
    return next_fire(schedule, now) if clock_went_back(reached, now) else None


def sleep_step(now: datetime, until: datetime) -> float:
    """How long to sleep before looking at the wall clock again (0 when ``until`` has come)."""
    return max(0.0, min((until - now).total_seconds(), MAX_SLEEP))
