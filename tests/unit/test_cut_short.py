"""What a run stopped midway reports (``report.cut_short``): each database it did not finish."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from backupd.backup import BackupResult, TargetRun
from backupd.environment import load_target
from backupd.errors import DumpError
from backupd.report import cut_short
from tests.unit.test_config import MINIMAL


def stored(database: str) -> BackupResult:
    now = datetime.now(UTC)
    return BackupResult("default", database, "postgres", f"k/{database}", 1, "0" * 64, now, now, 1)


def told(run: TargetRun, databases: str) -> list[tuple[str, str, str | None]]:
    target = load_target({**MINIMAL, "DB_DATABASE": databases})
    reports = cut_short(target, run, asyncio.CancelledError(), "stopped")
    return [(report.database, report.state.value, report.step) for report in reports]


def test_star_stopped_after_listing_names_each_database_it_did_not_finish() -> None:
    run = TargetRun(
        "default",
        results=[stored("alpha")],
        failures=[("beta", DumpError("dump failed"))],
        planned=["alpha", "beta", "gamma", "delta", "globals"],
    )

    assert told(run, "*") == [
        ("alpha", "succeeded", None),
        ("beta", "failed", "dump"),
        ("gamma", "failed", "shutdown"),
        ("delta", "failed", "shutdown"),
        ("globals", "failed", "shutdown"),
    ]


def test_star_stopped_after_a_database_named_globals_still_names_the_server_globals() -> None:
    """A database named ``globals`` shares its name with the server globals' object: stored,
    it counted as both, and the globals the run never made went untold."""
    run = TargetRun("default", results=[stored("globals")], planned=["globals", "zeta", "globals"])

    assert told(run, "*") == [
        ("globals", "succeeded", None),
        ("zeta", "failed", "shutdown"),
        ("globals", "failed", "shutdown"),
    ]


def test_star_stopped_before_listing_is_one_failure_named_as_configured() -> None:
    assert told(TargetRun("default"), "*") == [("*", "failed", "shutdown")]


def test_a_list_stopped_midway_names_the_rest() -> None:
    run = TargetRun("default", results=[stored("one")])

    assert told(run, "one,two,three") == [
        ("one", "succeeded", None),
        ("two", "failed", "shutdown"),
        ("three", "failed", "shutdown"),
    ]
