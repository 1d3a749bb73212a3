"""Command line: ``backupd once|check``. The only place that exits the process.

Exit codes: 0 success, 1 a backup or check failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn

from backupd import __version__
from backupd.backup import log_outcome, run_backup
from backupd.check import check_target
from backupd.config import Settings
from backupd.daemon import Daemon
from backupd.environment import load_settings, read_environment
from backupd.errors import ConfigError
from backupd.logs import setup_logging
from backupd.sources import source_for

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
log = logging.getLogger("backupd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backupd", description="Stream database backups into object storage."
    )
    parser.add_argument("--version", action="version", version=f"backupd {__version__}")
    parser.add_argument(
        "--env-file", type=Path, default=Path(".env"), help="read variables from this file too"
    )
    parser.add_argument(
        "--log-level",
        default=None,
        help="DEBUG, INFO, WARNING or ERROR (default: LOG_LEVEL or INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("once", help="back up every target now, then exit")
    commands.add_parser("run", help="run as a service: every target on its schedule, until SIGTERM")
    commands.add_parser(
        "check", help="validate the configuration and probe database, dump tool and storage"
    )
    return parser


def load(args: argparse.Namespace) -> Settings:
    settings = load_settings(read_environment(os.environ, args.env_file))
    for target in settings.targets:
        source_for(target.database)  # an engine this build cannot dump is a configuration error
    return settings


async def _once(settings: Settings) -> int:
    progress = TerminalProgress() if sys.stdout.isatty() else None
    status = EXIT_OK
    for target in settings.targets:
        try:
            ok = log_outcome(target, await run_backup(target, progress))
        except Exception as error:  # one target's failure never stops the others
            ok = log_outcome(target, None, error)
        status = status if ok else EXIT_FAILED
    return status


async def _run(settings: Settings) -> int:
    return await Daemon(settings).run()


class TerminalProgress:
    """A live progress line for ``backupd once`` on a terminal."""

    def __init__(self) -> None:
        self._shown = 0.0

    def update(self, key: str, size: int, elapsed: float) -> None:
        if elapsed - self._shown >= 0.2:
            self._shown = elapsed
            rate = size / elapsed / 1e6 if elapsed else 0.0
            line = f"{key}: {size / 1e6:,.1f} MB  {rate:,.1f} MB/s  {elapsed:,.0f}s"
            print(f"\r{line[-120:]:<120}", end="", flush=True)

    def done(self, key: str) -> None:
        if self._shown:
            print(flush=True)
        self._shown = 0.0


async def _check(settings: Settings) -> int:
    print(f"ok   configuration: {len(settings.targets)} target(s)", flush=True)
    ok = True
    for target in settings.targets:
        for finding in await check_target(target):
            print(finding.line(), flush=True)
            ok = ok and finding.ok
    return EXIT_OK if ok else EXIT_FAILED


def run_cancellable(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main``; SIGTERM or SIGINT cancels it, so uploads abort and children are killed."""

    async def runner() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await main
        except asyncio.CancelledError:
            log.error("interrupted: running backups were aborted and nothing was published")
            return EXIT_FAILED

    return asyncio.run(runner())


def main(argv: list[str] | None = None) -> NoReturn:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level or os.environ.get("LOG_LEVEL", "INFO"))
    try:
        settings = load(args)
    except ConfigError as error:
        print("backupd: invalid configuration:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    commands = {"once": _once, "check": _check, "run": _run}
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(run_cancellable(commands[args.command](settings)))
    sys.exit(EXIT_FAILED)
