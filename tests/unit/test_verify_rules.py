"""What verify decides: which backups, what a drill requires, where it runs. Pure, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backupd.anomaly import Figures, judge
from backupd.catalogue import Backup, Manifest, Orphan, manifest_key, object_key, parse_key
from backupd.config import AnomalyConfig, Engine
from backupd.environment import load_target
from backupd.errors import ConfigError, QueryError
from backupd.notify.base import Report, State
from backupd.notify.email import subject
from backupd.restore import name_problem
from backupd.sources.postgres import pg_dump_argv
from backupd.sources.session import parse_counts
from backupd.storage.base import StoredObject
from backupd.verify import (
    Checked,
    Drill,
    Selection,
    chosen,
    drill_login_settings,
    drill_skip_reason,
    drill_target,
    integrity_problem,
    scratch_name,
    table_problems,
    verdicts,
)
from tests.unit.test_config import MINIMAL

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def made(
    database: str, hours: int, complete: bool = True, ext: str = ".dump", roles: bool = False
) -> Backup:
    when = T0 + timedelta(hours=hours)
    key = object_key("b", database, ext, when, f"{hours:08x}", server_globals=roles)
    parsed = parse_key(key, "b")
    assert parsed is not None
    manifest = (
        Manifest(key, "ab" * 32, 100, when, when, 1.0, "default", database, "postgres")
        if complete
        else None
    )
    return Backup(key, 100, when, parsed, manifest)


def newest_first(*backups: Backup) -> list[Backup]:
    return sorted(backups, key=lambda b: b.modified, reverse=True)


APP_OLD, APP_NEW, SHOP = made("app", 1), made("app", 5), made("shop", 3)
APP_BROKEN = made("app", 9, complete=False)


@pytest.mark.parametrize(
    ("backups", "configured", "selection", "keys", "problems"),
    [
        ([APP_NEW, SHOP, APP_OLD], ("app", "shop"), Selection(), [APP_NEW, SHOP], []),
        (
            [APP_NEW, APP_OLD],
            ("app", "shop"),
            Selection(),
            [APP_NEW],
            ["no backup of database shop under this target"],
        ),
        # The newest object of a database without a manifest is what gets verified (and fails).
        ([APP_BROKEN, APP_NEW], ("app",), Selection(), [APP_BROKEN], []),
        ([APP_NEW, SHOP, APP_OLD], (), Selection(database="shop"), [SHOP], []),
        ([APP_NEW, SHOP, APP_OLD], (), Selection(every=True), [APP_NEW, SHOP, APP_OLD], []),
        (
            [APP_NEW, SHOP, APP_OLD],
            (),
            Selection(every=True, database="app"),
            [APP_NEW, APP_OLD],
            [],
        ),
        ([APP_NEW, SHOP, APP_OLD], (), Selection(key=APP_OLD.key), [APP_OLD], []),
        ([APP_NEW], (), Selection(key="b/x"), [], ["no backup with key b/x"]),
        # DB_DATABASE=*: every database found.
        ([APP_NEW, SHOP], (), Selection(), [APP_NEW, SHOP], []),
    ],
)
def test_which_backups_are_verified(
    backups: list[Backup],
    configured: tuple[str, ...],
    selection: Selection,
    keys: list[Backup],
    problems: list[str],
) -> None:
    picked, found = chosen(backups, configured, selection)

    assert [b.key for b in picked] == [b.key for b in keys]
    assert found == problems


def orphan(database: str, hours: int) -> Orphan:
    """The manifest of a backup taken ``hours`` after T0 whose object is gone."""
    backup = made(database, hours)
    return Orphan(
        backup.key, backup.parsed, StoredObject(manifest_key(backup.key), 9, backup.modified)
    )


APP_LOST, APP_LOST_LONG_AGO = orphan("app", 7), orphan("app", 0)
MISSING = "{}: its object is missing (its manifest remains)"


@pytest.mark.parametrize(
    ("selection", "keys", "problems"),
    [
        # The newest backup of app lost its object: that is the problem, not the older one.
        (Selection(), [APP_NEW, SHOP], [MISSING.format(APP_LOST.key)]),
        (Selection(database="shop"), [SHOP], []),
        (Selection(key=APP_LOST.key), [], [MISSING.format(APP_LOST.key)]),
        (
            Selection(every=True),
            [APP_NEW, SHOP, APP_OLD],
            [MISSING.format(APP_LOST_LONG_AGO.key), MISSING.format(APP_LOST.key)],
        ),
        (Selection(every=True, database="shop"), [SHOP], []),
    ],
)
def test_a_manifest_without_its_object_is_a_problem_where_it_would_be_chosen(
    selection: Selection, keys: list[Backup], problems: list[str]
) -> None:
    orphans = [APP_LOST_LONG_AGO, APP_LOST]
    picked, found = chosen([APP_NEW, SHOP, APP_OLD], ("app", "shop"), selection, orphans)

    assert [b.key for b in picked] == [b.key for b in keys]
    assert found == problems


def test_a_database_whose_only_backup_lost_its_object_is_named_once() -> None:
    picked, found = chosen([SHOP], ("app", "shop"), Selection(), [APP_LOST])

    assert picked == [SHOP]
    assert found == [MISSING.format(APP_LOST.key)]


@pytest.mark.parametrize(
    ("size", "sha", "problem"),
    [
        (100, "ab" * 32, None),
        (101, "ab" * 32, "read back 101 bytes"),
        (100, "cd" * 32, "damaged or was altered"),
    ],
)
def test_integrity_compares_size_and_sha256(size: int, sha: str, problem: str | None) -> None:
    found = integrity_problem(APP_NEW, size, sha)

    assert (found is None) == (problem is None)
    if problem is not None:
        assert found is not None and found.startswith(APP_NEW.key) and problem in found


def test_a_backup_without_manifest_fails_naming_its_key() -> None:
    assert integrity_problem(APP_BROKEN, 0, "") == (
        f"{APP_BROKEN.key}: it has no manifest (an incomplete or damaged backup)"
    )


def test_a_malformed_manifest_fails_naming_the_key() -> None:
    broken = Backup(
        APP_OLD.key,
        100,
        APP_OLD.modified,
        APP_OLD.parsed,
        problem=f"{APP_OLD.key}.manifest.json is not a backupd manifest (Expecting value)",
    )

    assert integrity_problem(broken, 100, "ab" * 32) == (
        f"{APP_OLD.key}: {APP_OLD.key}.manifest.json is not a backupd manifest (Expecting value)"
    )


def t(name: str, rows: int, schema: str | None = "public") -> dict[str, Any]:
    return {"schema": schema, "name": name, "rows": rows}


@pytest.mark.parametrize(
    ("recorded", "restored", "exact", "problems"),
    [
        ([t("a", 5)], [t("a", 5)], True, []),
        ([t("a", 5)], [t("a", 5), t("extra", 1)], True, []),
        ([t("a", 5)], [], True, ["table public.a is missing after the restore"]),
        ([t("a", 5)], [t("a", 4)], True, ["table public.a has 4 rows; the backup recorded 5"]),
        ([t("a", 5)], [t("a", 5, "other")], True, ["table public.a is missing after the restore"]),
        # Counted in their own snapshot: max(10 rows, 1 %) of drift is accepted.
        ([t("a", 5, None)], [t("a", 15, None)], False, []),
        (
            [t("a", 5, None)],
            [t("a", 16, None)],
            False,
            ["table a has 16 rows; the backup recorded 5"],
        ),
        ([t("a", 100_000, None)], [t("a", 99_000, None)], False, []),
        (
            [t("a", 100_000, None)],
            [t("a", 98_999, None)],
            False,
            ["table a has 98999 rows; the backup recorded 100000"],
        ),
        ([t("a", 0, None)], [t("a", 0, None)], False, []),
    ],
)
def test_what_a_drill_requires_of_the_restored_tables(
    recorded: list[dict[str, Any]],
    restored: list[dict[str, Any]],
    exact: bool,
    problems: list[str],
) -> None:
    assert table_problems(recorded, restored, exact) == problems


@pytest.mark.parametrize(
    ("extra", "host", "port", "user"),
    [
        ({}, "db.internal", None, "backup"),
        ({"VERIFY_DB_HOST": "scratch.internal"}, "scratch.internal", None, "backup"),
        (
            {"VERIFY_DB_HOST": "scratch.internal", "VERIFY_DB_PORT": "6543", "VERIFY_DB_USER": "d"},
            "scratch.internal",
            6543,
            "d",
        ),
        (
            {"DB_PORT": "5433", "VERIFY_DB_HOST": "scratch.internal"},
            "scratch.internal",
            None,
            "backup",
        ),
    ],
)
def test_drills_run_on_verify_db_settings_when_set(
    extra: dict[str, str], host: str, port: int | None, user: str
) -> None:
    target = drill_target(load_target({**MINIMAL, **extra}))

    assert (target.database.host, target.database.port, target.database.user) == (host, port, user)


@pytest.mark.parametrize(
    ("extra", "settings", "named"),
    [
        (
            {"VERIFY_DB_USER": "d"},
            ("DB_USER", "DB_PASSWORD"),
            ("VERIFY_DB_USER", "VERIFY_DB_PASSWORD"),
        ),
        # the drill's own password on the backups' server: that server is the backups' too
        ({"VERIFY_DB_PASSWORD": "x"}, ("DB_HOST", "DB_PORT"), ("DB_HOST", "DB_PORT")),
        ({"VERIFY_DB_HOST": "s"}, ("DB_HOST", "DB_PORT"), ("VERIFY_DB_HOST", "VERIFY_DB_PORT")),
        ({"VERIFY_DB_HOST": "s"}, ("DB_HOST",), ("VERIFY_DB_HOST",)),
        ({"VERIFY_DB_PORT": "6543"}, ("DB_HOST", "DB_PORT"), ("DB_HOST", "VERIFY_DB_PORT")),
        # the backups' password tried on the drill's server: the drill's own is what to set
        ({"VERIFY_DB_HOST": "s"}, ("DB_PASSWORD",), ("VERIFY_DB_PASSWORD",)),
    ],
)
def test_a_refused_drill_login_names_the_drills_own_variables(
    extra: dict[str, str], settings: tuple[str, ...], named: tuple[str, ...]
) -> None:
    verify = load_target({**MINIMAL, **extra}).verify

    assert drill_login_settings(settings, verify) == named


def test_a_drill_password_replaces_the_login_password_and_stays_secret() -> None:
    target = drill_target(load_target({**MINIMAL, "VERIFY_DB_PASSWORD": "drill-Secret-7"}))

    assert target.database.password is not None
    assert target.database.password.get_secret_value() == "drill-Secret-7"
    assert "drill-Secret-7" not in repr(target)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"VERIFY_SCHEDULE": "61 * * * *"}, "VERIFY_SCHEDULE: '61 * * * *' is not a valid cron"),
        ({"VERIFY_DRILL_DATABASE_PREFIX": "drill-"}, "VERIFY_DRILL_DATABASE_PREFIX: "),
        ({"ANOMALY_WINDOW": "2"}, "ANOMALY_WINDOW: "),
        ({"ANOMALY_SHRINK": "1.5"}, "ANOMALY_SHRINK: "),
        ({"ANOMALY_GROWTH": "0.5"}, "ANOMALY_GROWTH: "),
    ],
)
def test_bad_verify_and_anomaly_settings_name_the_variable(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_target({**MINIMAL, **env})

    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(problem)


def test_scratch_names_are_unique_and_fit_postgres_identifiers() -> None:
    names = {scratch_name("backupd_drill_", "x" * 80) for _ in range(20)}

    assert len(names) == 20
    assert all(len(name) <= 63 and name.startswith("backupd_drill_xxx") for name in names)


@pytest.mark.parametrize("database", ["ü" * 25, "日本語のデータベース名前", "д" * 31])
def test_scratch_names_of_non_ascii_databases_fit_postgres_63_bytes(database: str) -> None:
    # PostgreSQL's limit is in bytes: a drill of a database named with 25 'ü' (50 bytes, a
    # valid name) was refused ("longer than PostgreSQL's 63 bytes") and always failed.
    name = scratch_name("backupd_drill_", database)

    assert len(name.encode()) <= 63
    assert name_problem(Engine.POSTGRES, name) is None
    assert name.startswith("backupd_drill_" + database[:3])


@pytest.mark.parametrize(
    ("backup", "engine", "identity", "reason"),
    [
        (APP_NEW, Engine.POSTGRES, None, None),
        (made("globals", 2, ext=".sql", roles=True), Engine.POSTGRES, None, "server globals"),
        (made("globals", 2, ext=".dump"), Engine.POSTGRES, None, None),
        (APP_NEW, Engine.MSSQL, None, "drills restore PostgreSQL, MySQL and MariaDB"),
        (made("app", 2, ext=".dump.age"), Engine.POSTGRES, None, "it is encrypted and"),
        (made("app", 2, ext=".dump.age"), Engine.POSTGRES, Path("key.txt"), None),
        (APP_BROKEN, Engine.POSTGRES, None, "it has no manifest"),
    ],
)
def test_which_backups_a_drill_skips(
    backup: Backup, engine: Engine, identity: Path | None, reason: str | None
) -> None:
    found = drill_skip_reason(backup, engine, identity)

    assert (found is None) == (reason is None)
    assert reason is None or (found is not None and found.startswith(reason))


def test_row_count_lines_decode_hex_names() -> None:
    lines = ["7075626c6963\t637573746f6d657273\t4", "\t74096162\t0", ""]

    assert parse_counts(lines) == [
        {"schema": None, "name": "t\tab", "rows": 0},
        {"schema": "public", "name": "customers", "rows": 4},
    ]


def test_a_row_count_line_of_another_shape_is_a_query_error() -> None:
    with pytest.raises(QueryError, match="unexpected row count line 'NOTICE: x'"):
        parse_counts(["NOTICE: x"])


def test_pg_dump_shares_the_exported_snapshot() -> None:
    assert pg_dump_argv(True, "00000003-00000002-1")[-1] == "--snapshot=00000003-00000002-1"
    assert not any(arg.startswith("--snapshot") for arg in pg_dump_argv(True))


RULES = AnomalyConfig.model_validate({})


@pytest.mark.parametrize(
    ("current", "earlier", "findings"),
    [
        # Fewer than three earlier backups: no judgement.
        (Figures(1), [Figures(1000), Figures(1000)], []),
        (Figures(1000), [Figures(1000)] * 3, []),
        (
            Figures(499),
            [Figures(1000)] * 3,
            [
                "size shrank to 499 bytes, "
                "0.50x the median of 1,000 bytes over the previous 3 backups"
            ],
        ),
        (Figures(500), [Figures(1000)] * 3, []),
        (Figures(3000), [Figures(1000)] * 3, []),
        (
            Figures(3001),
            [Figures(1000)] * 3,
            [
                "size grew to 3,001 bytes, "
                "3.00x the median of 1,000 bytes over the previous 3 backups"
            ],
        ),
        # The median, not the mean: one outlier in the history changes nothing.
        (Figures(1000), [Figures(1000), Figures(10), Figures(1000), Figures(990)], []),
        # Only the newest ANOMALY_WINDOW (7) earlier backups count.
        (Figures(100), [Figures(100)] * 7 + [Figures(10_000)] * 20, []),
        # Rows: judged where recorded, independently of size.
        (
            Figures(1000, 10),
            [Figures(1000, 1000)] * 3,
            [
                "total rows shrank to 10 rows, "
                "0.01x the median of 1,000 rows over the previous 3 backups"
            ],
        ),
        (Figures(1000, 10), [Figures(1000, 1000), Figures(1000), Figures(1000)], []),
        # A median of zero (an empty database until now) is no yardstick.
        (Figures(1000, 50), [Figures(1000, 0)] * 3, []),
    ],
)
def test_anomaly_judgement(current: Figures, earlier: list[Figures], findings: list[str]) -> None:
    assert judge(current, earlier, RULES) == findings


@pytest.mark.parametrize(
    ("kind", "state", "words"),
    [
        ("verify", State.SUCCEEDED, "[backupd] default: app verified"),
        ("verify", State.FAILED, "[backupd] default: app VERIFY FAILED"),
        (
            "backup",
            State.ANOMALY,
            "[backupd] default: backup of app looks ANOMALOUS",
        ),
        ("backup", State.SUCCEEDED, "[backupd] default: backup of app succeeded"),
    ],
)
def test_mail_subjects(kind: str, state: State, words: str) -> None:
    report = Report("default", "app", "postgres", state, T0, kind=kind)

    assert subject(report) == words


@pytest.mark.parametrize(
    ("selection", "keys"),
    [
        (Selection(), [APP_NEW]),
        (Selection(every=True), [APP_NEW, APP_OLD]),
        (Selection(key=SHOP.key), [SHOP]),
        (Selection(database="shop"), [SHOP]),  # named: the user's explicit choice
    ],
)
def test_only_the_configured_databases_backups_are_verified(
    selection: Selection, keys: list[Backup]
) -> None:
    """Another deployment may share the folder: its databases are not this target's."""
    picked, found = chosen([APP_NEW, SHOP, APP_OLD], ("app",), selection)

    assert [b.key for b in picked] == [b.key for b in keys]
    assert found == []


def checked(database: str, problem: str | None = None, drill: list[str] | None = None) -> Checked:
    key = None if database == "*" else f"b/{database}.dump"
    tried = None if drill is None else Drill("scratch", problems=drill)
    return Checked("t", database, key, problem=problem, drill=tried)


@pytest.mark.parametrize(
    ("results", "passed"),
    [
        ([checked("app"), checked("shop")], {"*": True, "app": True, "shop": True}),
        (
            [checked("app", "size differs"), checked("shop")],
            {"*": True, "app": False, "shop": True},
        ),
        ([checked("app", drill=["table t is missing"])], {"*": True, "app": False}),
        # listed, but a configured database has no backup: the target, not a database, failed
        ([checked("*", "no backup of database shop"), checked("app")], {"*": False, "app": True}),
        ([checked("*", "cannot list backups: access denied")], {"*": False}),
        ([], {"*": False}),  # nothing to check is no pass
        # every backup of a database checked (verify --all): one bad one fails it
        ([checked("app"), checked("app", "sha256 differs")], {"*": True, "app": False}),
    ],
)
def test_what_a_verify_run_passed_per_database_and_as_a_whole(
    results: list[Checked], passed: dict[str, bool]
) -> None:
    """What backupd_last_verify_{success,failure}_timestamp_seconds stamp, label by label:
    a target-wide problem is under ``*``, so the next clean verify clears it."""
    assert verdicts(results) == passed


def old_layout_my_db() -> Backup:
    """A backup of ``my db`` made before its stem gained its hash: its key reads like
    ``my_db``'s do now."""
    when = T0 + timedelta(hours=1)
    key = "b/20261101/backup_my_db_20261101_030000.dump"
    parsed = parse_key(key, "b")
    assert parsed is not None
    manifest = Manifest(key, "ab" * 32, 100, when, when, 1.0, "default", "my db", "postgres")
    return Backup(key, 100, when, parsed, manifest)


def test_a_key_of_an_older_layout_is_chosen_by_its_manifests_database() -> None:
    """Before a name's stem gained its hash, ``my db``'s keys read ``backup_my_db_...``, like
    ``my_db``'s do now: the manifest says whose backup it is."""
    old = old_layout_my_db()
    new = made("my db", 5)
    assert new.parsed.series != old.parsed.series

    spaced, _ = chosen([old], ("my db",), Selection())
    named, _ = chosen([old], (), Selection(database="my db"))
    both, _ = chosen(newest_first(old, new), ("my db",), Selection(every=True))
    underscored, problems = chosen([old], ("my_db",), Selection())

    assert spaced == [old] and named == [old]
    assert both == [new, old]
    assert underscored == []
    assert problems == ["no backup of database my_db under this target"]


def test_a_database_with_keys_of_two_layouts_has_one_newest_backup() -> None:
    old = old_layout_my_db()
    new = made("my db", 5)
    broken = made("my db", 9, complete=False)

    picked, problems = chosen(newest_first(old, new), ("my db",), Selection())
    everything, _ = chosen(newest_first(old, new), (), Selection())
    newest_broken, _ = chosen(newest_first(old, new, broken), ("my db",), Selection())

    assert picked == [new] and problems == []
    assert everything == [new]
    assert newest_broken == [broken]  # reported as incomplete, as its database's newest
