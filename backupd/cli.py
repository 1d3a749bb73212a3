"""Command line: ``backupd once|run|check|list|restore|verify``; the only place that exits.

Exit codes: 0 success, 1 a backup or check failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from backupd import __version__
from backupd.catalogue import Backup
from backupd.config import MAX_CONCURRENT_LIMIT, Settings, TargetConfig, secrets_of
from backupd.environment import load_settings, read_environment
from backupd.errors import BackupdError, ConfigError, CoordinationUnsupported
from backupd.logs import escape_controls, setup_logging
from backupd.process import STOP_SIGNALS, mask
from backupd.progress import LogProgress, TerminalProgress
from backupd.prune import PruneFailure, keep_column, prune_after_run, prune_target
from backupd.report import ToldThenStopped, backup_and_report, prune_wanted, tell_prune_failed
from backupd.units import human_size
from backupd.variables import blank_protections, told, unknown_variables

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
log = logging.getLogger("backupd")


VARIABLES_HINT = (
    "Settings come from environment variables (and --env-file): see the variable table in\n"
    "the README's Configuration section, or run `python -m backupd.reference`."
)
EXAMPLES = {
    "once": "examples:\n  backupd once\n  backupd once --target orders --database shop",
    "run": "example:\n  backupd --env-file /etc/backupd.env run",
    "check": "examples:\n  backupd check\n  backupd check --send-test   # one mail, Seq event, "
    "webhook POST and ping",
    "healthcheck": "example (Dockerfile):\n  HEALTHCHECK CMD backupd healthcheck",
    "list": "examples:\n  backupd list\n  backupd list --target orders --json",
    "prune": "examples:\n  backupd prune --dry-run\n"
    "  backupd prune --target orders --database shop",
    "restore": "examples:\n  backupd restore --into app_restored\n"
    "  backupd restore --at 2026-11-28T02:00 --into app --clean\n"
    "  backupd restore --to-file - | pg_restore --list",
    "verify": "examples:\n  backupd verify\n  backupd verify --drill\n"
    "  backupd verify --target orders --all",
}


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog=f"{EXAMPLES[name]}\n\n{VARIABLES_HINT}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


class _Parser(argparse.ArgumentParser):
    """backupd's own options given after the command (``backupd check --env-file F``) are
    named as such: argparse said only 'unrecognized arguments'."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments") and any(
            option in message for option in ("--env-file", "--log-level")
        ):
            message += (
                "; --env-file and --log-level come before the command:"
                " backupd --env-file FILE check"
            )
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="backupd",
        description="Stream database backups into object storage.",
        epilog=VARIABLES_HINT,
    )
    parser.add_argument("--version", action="version", version=f"backupd {__version__}")
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="read variables from this file too (default: ./.env when it exists)",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"],
        help="overrides LOG_LEVEL",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=argparse.ArgumentParser
    )
    once = _command(commands, "once", "back up every target now, then exit")
    once.add_argument("--target", help="only this target")
    once.add_argument("--database", help="only this database of the target")
    _command(commands, "run", "run as a service: every target on its schedule, until SIGTERM")
    check = _command(
        commands, "check", "validate the configuration and probe everything a run will touch"
    )
    check.add_argument(
        "--send-test",
        action="store_true",
        help="also send one test mail, Seq event, webhook POST and ping",
    )
    _command(
        commands,
        "healthcheck",
        "exit 0 if a local `backupd run` answers /healthz (for HEALTHCHECK)",
    )
    listing = _command(commands, "list", "show a target's backups, newest first")
    listing.add_argument("--target", help="the target (required when several are configured)")
    listing.add_argument("--database", help="only this database's backups")
    listing.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    pruning = _command(commands, "prune", "apply the retention policy now")
    pruning.add_argument("--target", help="only this target (default: every one with a policy)")
    pruning.add_argument("--database", help="only this database's backups")
    pruning.add_argument(
        "--dry-run", action="store_true", help="print KEEP/DELETE and why; delete nothing"
    )
    restoring = _command(commands, "restore", "restore a backup into a database or a file")
    restoring.add_argument("--target", help="the target (required when several are configured)")
    restoring.add_argument(
        "--database",
        help="whose backup to restore (required when DB_DATABASE names several, or *)",
    )
    which = restoring.add_mutually_exclusive_group()
    which.add_argument("--key", help="this backup (default: the newest complete one)")
    which.add_argument("--at", help="the newest backup taken at or before this time (ISO 8601)")
    where = restoring.add_mutually_exclusive_group(required=True)
    where.add_argument("--into", metavar="DATABASE", help="restore into this database")
    where.add_argument(
        "--to-file", type=Path, metavar="PATH", help="write the verified dump here; - for stdout"
    )
    restoring.add_argument("--clean", action="store_true", help="replace a non-empty database")
    restoring.add_argument(
        "--force", action="store_true", help="with --key: allow an incomplete backup"
    )
    restoring.add_argument(
        "--identity",
        type=Path,
        metavar="FILE",
        help="age identity file for an encrypted backup (default: ENCRYPTION_IDENTITY_FILE)",
    )
    verifying = _command(
        commands, "verify", "read backups back against their manifests; --drill also restores them"
    )
    verifying.add_argument("--target", help="only this target (default: every target)")
    verifying.add_argument("--database", help="only this database's backups")
    chosen = verifying.add_mutually_exclusive_group()
    chosen.add_argument("--key", help="only this backup")
    chosen.add_argument("--all", action="store_true", help="every backup, not only the newest")
    verifying.add_argument(
        "--drill",
        action="store_true",
        help="also restore the newest backup of each database into a scratch database",
    )
    return parser


def load(args: argparse.Namespace) -> tuple[Settings, list[str]]:
    """The settings, and a warning per variable that looks like backupd's but is not read.

    Raise ConfigError with the warnings appended (a misspelt name often explains a problem).
    """
    path = args.env_file if args.env_file is not None else Path(".env")
    env = read_environment(os.environ, path, required=args.env_file is not None)
    warnings = unknown_variables(env, from_file=set(env) - set(os.environ))
    try:
        settings = load_settings(env)
    except ConfigError as error:
        raise ConfigError(error.problems + [f"warning: {w}" for w in warnings]) from None
    return settings, warnings + blank_protections(env, settings)


class UsageError(Exception):
    """A command line that cannot be carried out as given (exit 2)."""


def only(target: TargetConfig, database: str) -> TargetConfig:
    """``target`` narrowed to one database (``once --database``)."""
    if (
        not database.strip()
        or "," in database
        or database.strip() == "*"
        or not database.isprintable()
    ):
        raise UsageError(f"--database {database!r}: name one database")
    narrowed = target.database.model_copy(update={"database": database.strip()})
    return target.model_copy(update={"database": narrowed})


async def _once(settings: Settings, args: argparse.Namespace) -> int:
    progress = TerminalProgress() if sys.stdout.isatty() else None
    targets = list(settings.targets)
    if args.target is not None or args.database is not None:
        chosen = pick_target(settings, args.target)
        targets = [only(chosen, args.database) if args.database is not None else chosen]
    ok = True
    stopped = INTERRUPTED["once"]
    try:
        for target in targets:
            stopped = INTERRUPTED["once"]
            try:
                reports = await backup_and_report(target, progress)
            except ToldThenStopped:
                stopped = ONCE_STOPPED_AFTER_RUN
                raise
            ok = ok and all(report.ok for report in reports)
            if prune_wanted(target, reports):
                stopped = ONCE_STOPPED_IN_PRUNE
                pruned = await prune_after_run(target)
                if isinstance(pruned, PruneFailure):
                    ok = False
                    await tell_prune_failed(target, pruned)
    except asyncio.CancelledError:  # a signal: the last line says what it stopped
        log.error("interrupted: %s", stopped)
        return EXIT_FAILED
    return EXIT_OK if ok else EXIT_FAILED


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    # Imported per command, so that ``once`` does not load what only other commands use.
    from backupd.daemon import Daemon

    try:
        return await Daemon(settings).run()
    except BackupdError as error:  # COORDINATION=storage or HTTP_PORT unusable: nothing started
        print(f"backupd: {mask(str(error), all_secrets(settings))}", file=sys.stderr)
        unusable = isinstance(error, CoordinationUnsupported | ConfigError)
        return EXIT_CONFIG if unusable else EXIT_FAILED


def pick_target(settings: Settings, name: str | None) -> TargetConfig:
    if name is None:
        if len(settings.targets) == 1:
            return settings.targets[0]
        names = ", ".join(t.name for t in settings.targets)
        raise UsageError(f"several targets are configured ({names}): name one with --target")
    for target in settings.targets:
        if target.name == name:
            return target
    raise UsageError(
        f"no target named {name!r}; configured: {', '.join(t.name for t in settings.targets)}"
    )


def restore_database(target: TargetConfig, database: str | None, key: str | None) -> str | None:
    """Whose backups ``restore`` chooses among: ``--database``; else, with one configured
    database, that one; a ``--key`` names its own. Several databases (or ``*``) and neither
    option is a usage error naming both."""
    if database is not None or key is not None:
        return database
    configured = target.database.databases
    if len(configured) == 1:
        return configured[0]
    which = ", ".join(configured) if configured else "every database (*)"
    raise UsageError(
        f"target {target.name} backs up {which}: name one with --database, or a backup with --key"
    )


_DATE = re.compile(r"(\d{4}-\d{2}-\d{2}|\d{8}|\d{4}-?W\d{2}(?:-?\d)?)(?:.(.+))?$")
"""An ISO 8601 date (calendar, basic, or week with or without its day), then any one
character and the time, as ``datetime.fromisoformat`` reads them."""


def stated_span(text: str) -> timedelta:
    """How much time an ISO 8601 ``--at`` names: a week (``2026-W48``), a day
    (``2026-11-28``), an hour (``…T02``), a minute (``…T02:00``), a second (``…T02:00:43``)
    or, with a fraction, one microsecond. A backup taken within it counts as taken "at" it,
    as ``list`` shows times to the second and a schedule's 02:00 backup starts a fraction
    after 02:00."""
    found = _DATE.match(text.strip())
    if found is None or found[2] is None:
        week_alone = found is not None and re.fullmatch(r"\d{4}-?W\d{2}", found[1])
        return timedelta(weeks=1) if week_alone else timedelta(days=1)
    clock = re.sub(r"(?:Z|[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?)$", "", found[2])
    if "." in clock or "," in clock:
        return timedelta(microseconds=1)
    fields = clock.count(":") + 1 if ":" in clock else max(1, len(clock) // 2)
    return [timedelta(hours=1), timedelta(minutes=1), timedelta(seconds=1)][min(fields, 3) - 1]


def parse_at(text: str, target: TargetConfig) -> datetime:
    """The latest instant ``--at`` names (``stated_span``): read in TIMEZONE when it has no
    offset. Raise UsageError when it is not an ISO 8601 time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at {text!r} is not an ISO 8601 time, e.g. 2026-11-28T02:00") from None
    last = stated_span(text) - timedelta(microseconds=1)
    if moment.tzinfo is not None:
        return moment + last
    earlier, later = (moment.replace(tzinfo=target.layout.tz, fold=f) for f in (0, 1))
    if earlier.utcoffset() != later.utcoffset():
        # A wall time the clocks passed twice (or skipped): say which instant was taken.
        log.warning(
            "--at %s is ambiguous in %s (clocks changed); using %s, give the offset to choose",
            text,
            target.layout.timezone,
            earlier.isoformat(),
        )
    return earlier + last


def healthz_host(http_host: str) -> str:
    """Where ``healthcheck`` asks: the address the service listens on (``HTTP_HOST``), or the
    loopback of its family when it listens on every address."""
    import ipaddress

    host = http_host.strip().strip("[]")
    try:
        address = ipaddress.ip_address(host or "::")
    except ValueError:
        return host  # a name
    if address.is_unspecified:
        return "::1" if host.count(":") else "127.0.0.1"
    return host


async def _healthcheck(settings: Settings, args: argparse.Namespace) -> int:
    import http.client  # here, like the other commands' modules: ``once`` starts without it

    port = settings.daemon.http_port
    if port == 0:
        print("backupd: HTTP_PORT=0 turns /healthz off; nothing to check", file=sys.stderr)
        return EXIT_FAILED
    connection = http.client.HTTPConnection(
        healthz_host(settings.daemon.http_host), port, timeout=3
    )
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except OSError as error:
        print(f"backupd: /healthz on port {port} did not answer: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        connection.close()
    return EXIT_OK if status == 200 else EXIT_FAILED


async def _list(settings: Settings, args: argparse.Namespace) -> int:
    from backupd.restore import list_backups

    target = pick_target(settings, args.target)
    try:
        backups = await list_backups(target, args.database)
    except BackupdError as error:
        log.error("list FAILED: %s", told(str(error), target))
        return EXIT_FAILED
    keep = keep_column(backups, target, datetime.now(UTC)) or None
    if args.json:
        listed = [backup.as_dict() for backup in backups]
        for entry in listed:
            if keep and entry["key"] in keep:
                entry["retention"] = keep[entry["key"]]
        print(json.dumps(listed, indent=2, ensure_ascii=False))
        return EXIT_OK
    for line in listing_lines(backups, target, keep):
        print(line)
    print(f"{len(backups)} backup(s), {sum(b.complete for b in backups)} complete", flush=True)
    if args.database is not None and not backups:
        log.warning("no backup of database %r under %s/", args.database, target.key_prefix)
    return EXIT_OK


def listing_lines(
    backups: list[Backup], target: TargetConfig, keep: dict[str, str] | None = None
) -> list[str]:
    """The table ``list`` prints: time in TIMEZONE with its offset, database, engine, size,
    state, key, and with a retention policy what it says of each backup (``keep``). A row stays
    one line: control characters in a name show escaped, as in logs."""
    rows = [
        (
            f"{backup.taken.astimezone(target.layout.tz):%Y-%m-%d %H:%M:%S%z}",
            escape_controls(backup.database) if backup.database is not None else "?",
            backup.engine or "?",
            human_size(backup.size),
            "complete" if backup.complete else "INCOMPLETE",
            backup.key,
            *([keep.get(backup.key, "-")] if keep is not None else []),
        )
        for backup in backups
    ]
    header: tuple[str, ...] = ("TIME", "DATABASE", "ENGINE", "SIZE", "STATE", "KEY")
    header += ("RETENTION",) if keep is not None else ()
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(w) if i == 3 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]))
    return lines


def targets_to_prune(settings: Settings, name: str | None) -> list[TargetConfig]:
    if name is not None:
        target = pick_target(settings, name)
        if not target.retention.policy.enabled:
            raise UsageError(
                told(
                    f"target {target.name} has no retention policy; set RETENTION_KEEP_* first",
                    target,
                )
            )
        return [target]
    targets = [t for t in settings.targets if t.retention.policy.enabled]
    if not targets:
        raise UsageError("no target has a retention policy; set RETENTION_KEEP_* first")
    return targets


async def _prune(settings: Settings, args: argparse.Namespace) -> int:
    ok = True
    for target in targets_to_prune(settings, args.target):
        try:
            result = await prune_target(target, database=args.database, dry_run=args.dry_run)
        except BackupdError as error:
            log.error("prune FAILED: %s", told(str(error), target))
            ok = False
            continue
        print(f"{target.name}: retention {target.retention.policy.describe()}")
        for line in result.lines():
            print(f"  {line}")
        print(result.summary(), flush=True)
        ok = ok and not result.failed
    return EXIT_OK if ok else EXIT_FAILED


async def _restore(settings: Settings, args: argparse.Namespace) -> int:
    from backupd.restore import Request, restore

    target = pick_target(settings, args.target)
    if str(args.to_file) == "-" and sys.stdout.isatty():
        raise UsageError("--to-file - writes the dump to stdout: pipe it into a tool or a file")
    request = Request(
        database=restore_database(target, args.database, args.key),
        key=args.key,
        at=parse_at(args.at, target) if args.at else None,
        into=args.into,
        to_file=args.to_file,
        clean=args.clean,
        force=args.force,
        identity=args.identity or target.encryption.identity_file,
        identity_named="--identity" if args.identity else "ENCRYPTION_IDENTITY_FILE",
        progress=TerminalProgress()
        if sys.stdout.isatty() and str(args.to_file) != "-"
        else LogProgress(),
    )
    try:
        chosen = await restore(target, request)
    except BackupdError as error:
        log.error("restore FAILED: %s", told(str(error), target))
        return EXIT_FAILED
    written = "stdout" if str(args.to_file) == "-" else str(args.to_file)
    destination = f"database {args.into}" if args.into else written
    verified = "checksum verified" if chosen.complete else "WITHOUT checksum verification"
    log.info("restored %s into %s; %s", chosen.key, destination, verified)
    return EXIT_OK


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from backupd.verify import Selection
    from backupd.verify_run import verify_and_report

    targets = [pick_target(settings, args.target)] if args.target else list(settings.targets)
    selection = Selection(database=args.database, key=args.key, every=args.all, drill=args.drill)
    ok = True
    for target in targets:
        results = await verify_and_report(target, selection)
        ok = ok and all(checked.ok for checked in results)
    return EXIT_OK if ok else EXIT_FAILED


async def _check(settings: Settings, args: argparse.Namespace) -> int:
    from backupd.check import check_coordination, check_target
    from backupd.notify.check import seq_finding

    print(f"ok   configuration: {len(settings.targets)} target(s)", flush=True)
    for warning in args.warnings:
        print(f"warn configuration: {warning}", flush=True)
    ok = True
    for target in settings.targets:
        findings = await check_target(target, args.send_test)
        if settings.coordination.enabled:
            findings.append(await check_coordination(target, settings.coordination))
        for finding in findings:
            print(finding.line(), flush=True)
            ok = ok and finding.ok
    seq = await seq_finding(settings.logs, args.send_test)
    if seq is not None:
        detail = mask(seq[1], settings.logs.secrets)
        print(f"{'ok  ' if seq[0] else 'FAIL'} seq: {detail}", flush=True)
        ok = ok and seq[0]
    return EXIT_OK if ok else EXIT_FAILED


INTERRUPTED = {
    "once": "a backup still in progress was aborted, left nothing behind and was reported as "
    "failed; backups already stored are kept; targets not started yet did not run",
    "restore": "the restore was stopped; what it had created (a database, a file) was removed",
    "prune": "the prune was stopped; what it had not deleted yet is kept",
    "verify": "the verify was stopped; a drill's scratch database was dropped",
}
"""What an interrupted command leaves behind, as its last line says."""

ONCE_STOPPED_AFTER_RUN = (
    "the run under way had ended and was told as it went; targets not started yet did not run"
)
"""``once``'s last line when the signal came while a finished run was being told."""
ONCE_STOPPED_IN_PRUNE = (
    "the prune after a run was stopped; what it had not deleted yet is kept; the run's backups "
    "are kept and were told; targets not started yet did not run"
)
"""``once``'s last line when the signal came while the retention policy was applied."""


def run_cancellable(main: Coroutine[Any, Any, int], command: str = "") -> int:
    """Run ``main``; SIGTERM or SIGINT cancels it, so uploads abort and children are killed,
    and one line says what ``command`` leaves behind (``INTERRUPTED``).

    Blocking work (pipe reads, hashing, compression) runs on up to ``WORKER_THREADS`` threads.
    """

    async def runner() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(WORKER_THREADS, "backupd"))
        loop.call_later(START_UP_SECONDS, resume_collection)
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await main
        except asyncio.CancelledError:
            log.error(
                "interrupted: %s", INTERRUPTED.get(command, f"{command or 'the command'} stopped")
            )
            return EXIT_FAILED

    return asyncio.run(runner())


def all_secrets(settings: Settings) -> list[str]:
    hidden = [secret for target in settings.targets for secret in secrets_of(target)]
    return hidden + settings.logs.secrets


M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """At most two glibc malloc arenas (as ``MALLOC_ARENA_MAX=2``), before any thread starts.

    Each thread (pipe reads, hashing, zstd's workers) otherwise gets an arena of its own, and
    buffers freed in one are not reused by another: several MiB of resident memory for nothing.
    Elsewhere than glibc this does nothing.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def _print_config_error(error: ConfigError) -> None:
    print("backupd: invalid configuration:", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def main(argv: list[str] | None = None) -> NoReturn:
    """The ``backupd`` command: ``run_command``, then ``leave`` with its exit status."""
    leave(run_command(argv))


THREADS_PER_BACKUP = 4
"""Worker threads one backup may keep blocked at once: reading the dump's pipe (or compressing
it, or feeding age), reading age's output, hashing a part, and one to spare."""
WORKER_THREADS = THREADS_PER_BACKUP * MAX_CONCURRENT_LIMIT + 8
"""The event loop's worker threads, at most. asyncio's default is min(32, cores + 4): 6 on two
cores. A backup keeps a thread blocked for as long as its dump writes nothing (and, encrypted,
another for the whole dump), so a few backups at once could hold every thread and leave the
others' reads and hashes, even the storage client's start, waiting behind them. Threads start
only when every running one is busy: the bound costs nothing until used."""


START_UP_SECONDS = 1.0
"""How long a command runs with the cyclic garbage collector off, from its start.

Start-up makes some 137,000 objects that live as long as the process (modules, pydantic's
schemas, botocore's models) and almost no garbage: the collector walked them about 190 times,
40 ms of CPU before the storage client was ready and the first part could be sent. Then
``resume_collection`` freezes them (``gc.freeze``, so that later collections skip them) and
turns the collector back on. The ~1,800 objects of start-up's own cycles (~0.4 MiB) are frozen
with the rest and stay: collecting them first would take 57 ms. Measured in ``bench/`` (94 MiB
PostgreSQL dump, 6 interleaved rounds): wall 1.03 s to 0.99 s, CPU 0.66 s to 0.60 s, peak RSS
0.8 MiB more."""


def resume_collection() -> None:
    """Freeze every object made so far and turn the cyclic garbage collector back on; nothing
    if it is already on."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def run_command(argv: list[str] | None = None) -> int:
    """Carry out one command line (``sys.argv[1:]`` when None) and return its exit status:
    0 success, 1 a backup or check failed, 2 bad configuration or usage. Raises SystemExit
    only for argparse's own exits (``--help``, a malformed command line).

    The cyclic garbage collector is off for the first ``START_UP_SECONDS`` and on again when
    this returns, however it returns."""
    gc.disable()
    try:
        return _carry_out(argv)
    finally:
        resume_collection()


def _carry_out(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    limit_malloc_arenas()
    try:
        settings, args.warnings = load(args)
    except ConfigError as error:
        _print_config_error(error)
        return EXIT_CONFIG
    log_config = settings.logs
    if args.log_level:
        log_config = log_config.model_copy(update={"level": args.log_level.upper()})
    # With the dump going to stdout, everything else goes to stderr.
    to_stdout = args.command == "restore" and str(args.to_file) == "-"
    logs = setup_logging(log_config, all_secrets(settings), sys.stderr if to_stdout else sys.stdout)
    if args.command not in {"check", "healthcheck"}:  # check lists them; a probe stays quiet
        for warning in args.warnings:
            log.warning("%s", warning)
    commands = {
        "once": _once,
        "check": _check,
        "run": _run,
        "list": _list,
        "restore": _restore,
        "prune": _prune,
        "healthcheck": _healthcheck,
        "verify": _verify,
    }
    status = EXIT_FAILED
    try:
        with contextlib.suppress(KeyboardInterrupt):
            status = run_cancellable(commands[args.command](settings, args), args.command)
    except UsageError as error:
        print(f"backupd: {error}", file=sys.stderr)
        status = EXIT_CONFIG
    except ConfigError as error:
        _print_config_error(error)
        status = EXIT_CONFIG
    finally:
        # The work is done or aborted: a late second signal must not turn a clean exit into
        # a KeyboardInterrupt while logs are flushed.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        logs.close()
    return status


def leave(status: int) -> NoReturn:
    """Exit with ``status`` once every log line and output byte is out, skipping the
    interpreter's teardown.

    By now the event loop is closed and its worker threads joined, so nothing is left to run;
    but tearing down the modules and objects of botocore, aiohttp and pydantic took 150-270 ms
    (measured from the last statement to the process's exit), paid at the end of every
    ``backupd once``.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream
            stream.flush()
    os._exit(status)
