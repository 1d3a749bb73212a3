"""Twenty targets in one ``backupd run`` on a 10-second cron: every slot runs once, every run's
object is stored with its manifest, and memory stays bounded."""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import backupd_command, bucket_state, child_env, pg_env, storage_env
from tests.servers import PostgresServer

TARGETS = [f"t{index:02d}" for index in range(20)]
SECONDS = 30
PERIOD = timedelta(seconds=10)
STARTING = re.compile(r"(t\d+): starting the ([\d-]+ [\d:]+) UTC run")
NOT_STARTED = re.compile(r"(t\d+): the ([\d-]+ [\d:]+) UTC run does not start: shutting down")
STORED = re.compile(r"backup of (t\d+) \S+ succeeded: (\S+),")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_twenty_targets_every_ten_seconds_run_every_slot_once_and_store_every_object(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str
) -> None:
    pg.create_database("crowd", "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g;")
    env = {
        **pg_env(pg, "crowd"),
        **storage_env(moto_url, bucket),
        "BACKUPD_TARGETS": ",".join(TARGETS),
        "CRON_SCHEDULE": "*/10 * * * * *",
        "MAX_CONCURRENT_BACKUPS": "4",
        # Slots only: a start-up run of every target at once is a burst of its own, which a
        # slot a few seconds later would find still running (and skip, by design).
        "RUN_ON_STARTUP": "false",
        "HTTP_PORT": "0",
    }
    process = subprocess.Popen(
        backupd_command("run"),
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = 0.0
    try:
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            peak = max(peak, rss_mib(process.pid))
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=90)

    assert process.returncode == 0, output[-3000:]
    assert "skipping this slot" not in output
    assert " FAILED " not in output, output[-3000:]
    slots: dict[str, list[datetime]] = defaultdict(list)
    # A run still queued for a dump slot when the stop came never starts (the last slot).
    queued = set(NOT_STARTED.findall(output))
    for target, label in STARTING.findall(output):
        if (target, label) not in queued:
            slots[target].append(datetime.strptime(label, "%Y-%m-%d %H:%M:%S"))
    every = sorted({slot for times in slots.values() for slot in times})
    assert len(every) >= 2, "the run was too short to see two slots"
    assert all(b - a == PERIOD for a, b in itertools.pairwise(every)), every
    for target in TARGETS:
        ran = sorted(slots[target])
        assert len(ran) == len(set(ran)), f"{target} ran a slot twice"
        # Only the first slot (a scheduler that began just after it) and the last one (the stop
        # came just as it fired) may differ between targets; none in between may be missing.
        inner = [slot for slot in every[1:-1] if slot not in ran]
        assert not inner, f"{target} missed {inner}"

    stored = STORED.findall(output)
    assert len(stored) == sum(len(times) for times in slots.values())
    keys, uploads = bucket_state_all(s3, bucket)
    assert uploads == []
    for target, key in stored:
        assert key.startswith(f"backups/{target}/")
        assert key in keys and f"{key}.manifest.json" in keys
    assert peak <= 250, f"peak RSS {peak:.0f} MiB"


def bucket_state_all(s3: Any, bucket: str) -> tuple[set[str], list[str]]:
    """Every key (past the first page of 1,000) and the keys of open multipart uploads."""
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(item["Key"] for item in page.get("Contents", []))
    _, uploads = bucket_state(s3, bucket)
    return keys, uploads
