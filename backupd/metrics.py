"""Prometheus metrics and the health endpoint of ``backupd run``.

The registry is the daemon's own (no process-global state), served by a small aiohttp app:
``/metrics`` in the Prometheus text format and ``/healthz`` (200 while the scheduler is alive).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from backupd.errors import ConfigError

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

RunResult = Literal["success", "anomaly", "failure", "skipped"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.runs = Counter(
            "backupd_runs",
            "Backup runs by result (success, anomaly, failure, skipped)",
            ["target", "result"],
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "backupd_runs_in_progress", "Runs under way", ["target"], registry=self.registry
        )
        self.last_success = Gauge(
            "backupd_last_success_timestamp_seconds",
            "When the last successful run finished (Unix time)",
            ["target"],
            registry=self.registry,
        )
        self.last_failure = Gauge(
            "backupd_last_failure_timestamp_seconds",
            "When the last failed run ended (Unix time)",
            ["target"],
            registry=self.registry,
        )
        self.last_duration = Gauge(
            "backupd_last_run_duration_seconds",
            "How long the last run took",
            ["target"],
            registry=self.registry,
        )
        self.last_bytes = Gauge(
            "backupd_last_run_bytes",
            "Bytes stored by the last run",
            ["target"],
            registry=self.registry,
        )
        self.next_run = Gauge(
            "backupd_next_run_timestamp_seconds",
            "When the next scheduled run is due (Unix time)",
            ["target"],
            registry=self.registry,
        )
        self.claimed_elsewhere = Counter(
            "backupd_slots_claimed_elsewhere",
            "Slots another replica claimed first (COORDINATION=storage), by kind",
            ["target", "kind"],
            registry=self.registry,
        )

        self.pruned = Counter(
            "backupd_pruned_backups",
            "Complete backups deleted by retention",
            ["target"],
            registry=self.registry,
        )
        self.prune_runs = Counter(
            "backupd_prune_runs",
            "Prunes after a run, by result (success, failure)",
            ["target", "result"],
            registry=self.registry,
        )
        self.last_prune_success = Gauge(
            "backupd_last_prune_success_timestamp_seconds",
            "When the last prune that did all its work finished (Unix time)",
            ["target"],
            registry=self.registry,
        )
        self.last_prune_failure = Gauge(
            "backupd_last_prune_failure_timestamp_seconds",
            "When the last failed prune ended (Unix time)",
            ["target"],
            registry=self.registry,
        )
        self.stored_backups = Gauge(
            "backupd_stored_backups",
            "Complete backups in storage, counted at the last prune",
            ["target"],
            registry=self.registry,
        )
        self.stored_bytes = Gauge(
            "backupd_stored_bytes",
            "Bytes of the complete backups in storage, counted at the last prune",
            ["target"],
            registry=self.registry,
        )

        self.interval = Gauge(
            "backupd_schedule_interval_seconds",
            "The longer of the gaps before and after the target's last scheduled run, in "
            "seconds (for staleness alerts)",
            ["target"],
            registry=self.registry,
        )
        self.verify_runs = Counter(
            "backupd_verify_runs",
            "Verify runs by result (success, failure, skipped)",
            ["target", "result"],
            registry=self.registry,
        )
        self.last_verify = Gauge(
            "backupd_last_verify_success_timestamp_seconds",
            "When the newest backup of a database was last read back intact; under database *, "
            "when a verify last listed the target's backups and found one of each database "
            "(Unix time)",
            ["target", "database"],
            registry=self.registry,
        )
        self.last_verify_failure = Gauge(
            "backupd_last_verify_failure_timestamp_seconds",
            "When the newest backup of a database last failed its read-back or drill; under "
            "database *, when a verify last could not list the target's backups, find one of "
            "a database or keep its claim (Unix time)",
            ["target", "database"],
            registry=self.registry,
        )
        self.last_drill = Gauge(
            "backupd_last_drill_restore_seconds",
            "How long the last passing restore drill of a database took to restore",
            ["target", "database"],
            registry=self.registry,
        )

    def declare(self, target: str) -> None:
        """Make every series of ``target`` visible at zero before its first run."""
        for result in ("success", "anomaly", "failure", "skipped"):
            self.runs.labels(target, result)
        self.claimed_elsewhere.labels(target, "backup")
        self.in_progress.labels(target).set(0)
        for result in ("success", "failure", "skipped"):
            self.verify_runs.labels(target, result)
        self.pruned.labels(target)
        for result in ("success", "failure"):
            self.prune_runs.labels(target, result)

    def run_ended(self, target: str, result: RunResult) -> None:
        """Count a backup run's result; a success (an anomalous backup is stored too) or a
        failure also stamps when it ended, for an alert to compare the two."""
        self.runs.labels(target, result).inc()
        if result in ("success", "anomaly"):
            self.last_success.labels(target).set_to_current_time()
        elif result == "failure":
            self.last_failure.labels(target).set_to_current_time()

    def prune_ended(self, target: str, ok: bool) -> None:
        """Count a prune after a run and stamp when it succeeded or failed."""
        self.prune_runs.labels(target, "success" if ok else "failure").inc()
        stamp = self.last_prune_success if ok else self.last_prune_failure
        stamp.labels(target).set_to_current_time()

    def verify_ended(self, target: str, passed: Mapping[str, bool]) -> None:
        """Count a verify run, a success when everything in ``passed`` did, and stamp each of
        its databases (and ``*``, the target as a whole) as read back intact or failed."""
        self.verify_runs.labels(target, "success" if all(passed.values()) else "failure").inc()
        now = time.time()
        for database, ok in passed.items():
            stamp = self.last_verify if ok else self.last_verify_failure
            stamp.labels(target, database).set(now)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


async def serve(
    metrics: Metrics, healthy: Callable[[], bool], host: str, port: int
) -> web.AppRunner:
    """Start the HTTP endpoint; the caller cleans up the returned runner.

    Raise ConfigError naming HTTP_PORT/HTTP_HOST when the address cannot be bound (in use,
    a privileged port, an address this host does not have).
    """
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        ok = healthy()
        return web.Response(
            status=200 if ok else 503, text="ok\n" if ok else "scheduler not running\n"
        )

    async def metrics_page(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        await runner.cleanup()
        if error.errno == errno.EADDRNOTAVAIL or isinstance(error, socket.gaierror):
            raise ConfigError(
                [
                    f"HTTP_HOST: {host} is not an address of this machine "
                    f"({error.strerror or error}); use 0.0.0.0 for all of them, or one it has"
                ]
            ) from None
        reason = "is already in use" if error.errno == errno.EADDRINUSE else "cannot be used"
        raise ConfigError(
            [
                f"HTTP_PORT: port {port} on {host} {reason} ({error.strerror or error}); "
                "choose another HTTP_PORT, or 0 to turn /healthz and /metrics off"
            ]
        ) from None
    log.info("serving /healthz and /metrics on %s:%d", host, port)
    return runner
