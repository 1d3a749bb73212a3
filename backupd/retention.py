"""Which backups a retention policy keeps: pure functions, no clock, no I/O.

The rules are restic's and borg's:

- ``last N``: the N newest backups;
- ``hourly``, ``daily``, ``weekly`` (ISO weeks), ``monthly``, ``yearly`` N: for each of the last
  N periods *that have a backup*, the newest backup in it. Periods are read on the wall clock
  of the target's time zone; on the night clocks go back, the repeated hour is an hour of its
  own (02:00 CEST and 02:00 CET are two hours);
- ``within D``: everything taken at or after ``now - D`` (``36h``, ``30d``, ``6w``, ``6m``,
  ``1y``, or several, ``1y6m``; days, weeks, months and years are calendar steps in the zone).

A policy is the union of its rules and applies to each database on its own. Whatever the
policy says, the newest backup of each database is kept, and a database whose newest backup is
older than the policy's shortest period (by when it finished) keeps everything: a stalled target
must not age out its last backups. A backup's time is its manifest's start time; ties (the same
second) are broken by key, so the decision never depends on listing order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

_SPAN = re.compile(r"(\d+)([hdwmy])")
_UNITS = {"h": "hour", "d": "day", "w": "week", "m": "month", "y": "year"}
_DAYS = {"h": 1 / 24, "d": 1, "w": 7, "m": 31, "y": 366}
LONGEST_YEARS = 1000
"""Beyond this a duration would step back past the calendar (year 1) from dates now."""


def duration_problem(text: str) -> str | None:
    """Why ``text`` is not a duration like ``36h``, ``30d``, ``6w``, ``6m``, ``1y`` or ``1y6m``."""
    cleaned = text.strip().lower()
    if not cleaned or _SPAN.sub("", cleaned) != "":
        return (
            f"{text!r} is not a duration: use a number and a unit, h (hours), d (days), "
            "w (weeks), m (months) or y (years), e.g. 36h, 30d, 6w, 1y6m"
        )
    spans = _SPAN.findall(cleaned)
    if all(int(amount) == 0 for amount, _ in spans):
        return f"{text!r} is zero; use at least 1h"
    if sum(int(amount) * _DAYS[unit] for amount, unit in spans) > LONGEST_YEARS * 366:
        return f"{text!r} is longer than {LONGEST_YEARS} years"
    return None


def _add_months(moment: datetime, months: int) -> datetime:
    """``moment`` moved by whole months on the wall clock; the 31st becomes a month's last day."""
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    following = datetime(year + (month == 12), month % 12 + 1, 1)
    last_day = (following - timedelta(days=1)).day
    return moment.replace(year=year, month=month, day=min(moment.day, last_day))


def before(now: datetime, duration: str, tz: ZoneInfo) -> datetime:
    """``now`` minus ``duration``: hours on the time line, other units on ``tz``'s wall clock.

    So ``30d`` before 2026-11-28 02:00 Europe/Berlin is 2026-10-29 02:00, although a DST night
    lies between; ``1m`` before March 31 is February's last day. ``duration`` must pass
    ``duration_problem``; raises ValueError otherwise.
    """
    if duration_problem(duration) is not None:
        raise ValueError(duration_problem(duration))
    hours = 0
    wall = now.astimezone(tz).replace(tzinfo=None)
    for amount, unit in _SPAN.findall(duration.strip().lower()):
        count = int(amount)
        if unit == "h":
            hours += count
        elif unit in "dw":
            wall -= timedelta(days=count * (7 if unit == "w" else 1))
        else:
            wall = _add_months(wall, -count * (12 if unit == "y" else 1))
    # A wall time in a DST gap or overlap resolves like ZoneInfo does (fold=0): never later
    # than a whole unit, at most an hour off.
    # (Aware arithmetic in one zone is wall-clock arithmetic: hours are taken off in UTC.)
    return (wall.replace(tzinfo=tz).astimezone(UTC) - timedelta(hours=hours)).astimezone(tz)


@dataclass(frozen=True)
class Policy:
    """A retention policy; every count 0 and ``within`` None keeps everything (no policy)."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: str | None = None

    @property
    def enabled(self) -> bool:
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        return any(counts) or self.within is not None

    def newest_period(self) -> str | None:
        """The shortest period the policy names, as a duration (``1h``, ``1d``, ... or
        ``within``); None when only ``last`` is set, which needs no clock."""
        spans = [
            span
            for count, span in (
                (self.hourly, "1h"),
                (self.daily, "1d"),
                (self.weekly, "1w"),
                (self.monthly, "1m"),
                (self.yearly, "1y"),
            )
            if count
        ]
        if self.within is not None:
            spans.append(self.within)
        if not spans:
            return None
        reference = datetime(2000, 1, 1, tzinfo=UTC)
        return max(spans, key=lambda span: before(reference, span, ZoneInfo("UTC")))

    def describe(self) -> str:
        """``last 3, daily 7, within 30d``, or ``none``."""
        parts = [
            f"{name} {count}"
            for name, count in (
                ("last", self.last),
                ("hourly", self.hourly),
                ("daily", self.daily),
                ("weekly", self.weekly),
                ("monthly", self.monthly),
                ("yearly", self.yearly),
            )
            if count
        ]
        if self.within is not None:
            parts.append(f"within {self.within}")
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Candidate:
    """One complete backup as the decision sees it.

    ``database`` is the group it belongs to (each database of a target keeps its own set; the
    PostgreSQL globals object is a group of its own); ``taken`` is aware.
    """

    key: str
    database: str
    taken: datetime
    finished: datetime | None = None
    """When it was complete (the manifest's finish time), aware; None: taken as ``taken``."""

    @property
    def done(self) -> datetime:
        return self.finished or self.taken


@dataclass(frozen=True)
class Decision:
    candidate: Candidate
    keep: bool
    reasons: tuple[str, ...]
    """Why it is kept (``newest``, ``last 3``, ``daily 2026-11-28``, ``within 30d``, ``held
    ...``), in that order; empty for a backup to delete."""

    @property
    def verdict(self) -> str:
        return "KEEP" if self.keep else "DELETE"

    @property
    def why(self) -> str:
        return ", ".join(self.reasons) if self.reasons else "no rule keeps it"


def _hour(moment: datetime) -> tuple[str, str]:
    # The offset makes the repeated hour of a clocks-back night an hour of its own.
    return f"{moment:%Y-%m-%d %H:00%z}", f"hourly {moment:%Y-%m-%d %H:00 %Z}"


def _day(moment: datetime) -> tuple[str, str]:
    return f"{moment:%Y-%m-%d}", f"daily {moment:%Y-%m-%d}"


def _week(moment: datetime) -> tuple[str, str]:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}", f"weekly {year}-W{week:02d}"


def _month(moment: datetime) -> tuple[str, str]:
    return f"{moment:%Y-%m}", f"monthly {moment:%Y-%m}"


def _year(moment: datetime) -> tuple[str, str]:
    return f"{moment:%Y}", f"yearly {moment:%Y}"


PeriodOf = Callable[[datetime], tuple[str, str]]


def _periods(policy: Policy) -> list[tuple[int, PeriodOf]]:
    return [
        (policy.hourly, _hour),
        (policy.daily, _day),
        (policy.weekly, _week),
        (policy.monthly, _month),
        (policy.yearly, _year),
    ]


def newest_first(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Newest first; the same second is ordered by key, so the order is total."""
    return sorted(candidates, key=lambda c: (c.taken, c.key), reverse=True)


def _decide_group(
    group: Sequence[Candidate], policy: Policy, now: datetime, tz: ZoneInfo
) -> list[Decision]:
    """One database's backups, newest first."""
    reasons: list[list[str]] = [[] for _ in group]
    reasons[0].append("newest")
    for index in range(min(policy.last, len(group))):
        reasons[index].append(f"last {policy.last}")
    local = [c.taken.astimezone(tz) for c in group]
    for count, period_of in _periods(policy):
        seen: set[str] = set()
        for index, moment in enumerate(local):
            if len(seen) == count:
                break
            period, label = period_of(moment)
            if period not in seen:
                seen.add(period)
                reasons[index].append(label)
    if policy.within is not None:
        cutoff = before(now, policy.within, tz)
        for index, candidate in enumerate(group):
            if candidate.taken >= cutoff:
                reasons[index].append(f"within {policy.within}")
    shortest = policy.newest_period()
    # Judged by when the newest backup finished, not when it began: a run longer than the
    # shortest period (a two-hour dump under RETENTION_KEEP_HOURLY) is no stalled target.
    if shortest is not None and max(c.done for c in group) < before(now, shortest, tz):
        held = f"held: the newest backup is older than {shortest}"
        for found in reasons:
            if not found:
                found.append(held)
    return [Decision(c, bool(r), tuple(r)) for c, r in zip(group, reasons, strict=True)]


def decide(
    candidates: Iterable[Candidate], policy: Policy, now: datetime, tz: ZoneInfo
) -> list[Decision]:
    """KEEP or DELETE, with the reasons, for every candidate; newest first.

    ``now`` is aware; periods are read in ``tz``. Without a policy (``policy.enabled`` False)
    everything is kept, with the reason ``no policy``.
    """
    ordered = newest_first(candidates)
    if not policy.enabled:
        return [Decision(c, True, ("no policy",)) for c in ordered]
    groups: dict[str, list[Candidate]] = {}
    for candidate in ordered:
        groups.setdefault(candidate.database, []).append(candidate)
    decided = {
        d.candidate: d for group in groups.values() for d in _decide_group(group, policy, now, tz)
    }
    return [decided[c] for c in ordered]
