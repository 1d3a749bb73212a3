"""Many targets in one ``backupd run``: every slot runs once, memory stays flat.

N small PostgreSQL databases, one target each, on a seconds cron (every 10 s) with
MAX_CONCURRENT_BACKUPS=4, for a few minutes against the discarding S3 sink. The daemon's log
says which slot each target started ("starting the ... run") and which object each run
stored; the sink lists what it stored. RSS is sampled twice a second.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.measure import TICKS
from bench.scene import Scene
from tests.servers import free_port

STARTING = re.compile(r"^(\S+) INFO\s+(t\d+): starting the (.+?) run", re.MULTILINE)
RUNNING = re.compile(r"^(\S+) INFO\s+backupd running", re.MULTILINE)
SKIPPED = re.compile(r"(t\d+): still running at its")
STORED = re.compile(r"backup of (t\d+) \S+ succeeded: (\S+),")
PERIOD = 10
SMALL_TABLE = "CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 2000) g;"


@dataclass
class ManyResult:
    targets: int
    seconds: float
    slots_expected: int
    runs: int = 0
    missed: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    failures: int = 0
    missing_objects: list[str] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)
    cpu: tuple[float, float] = (0.0, 0.0)
    """CPU seconds of the daemon itself and of the children it reaped, at the stop."""

    @property
    def peak_rss(self) -> float:
        return max((value for _, value in self.rss), default=0.0)

    def rss_between(self, start: float, end: float) -> float:
        return max((value for at, value in self.rss if start <= at < end), default=0.0)

    def rss_windows(self, width: float = 30) -> list[float]:
        """Peak RSS of each ``width`` seconds of the run, in order (MiB)."""
        count = int(-(-self.seconds // width))
        return [self.rss_between(index * width, (index + 1) * width) for index in range(count)]

    @property
    def growth_after_first_minute(self) -> float:
        """Peak RSS after 60 s over the peak of the 30 s before it (1.0 = flat)."""
        before = self.rss_between(30, 60)
        return self.rss_between(60, self.seconds + 1) / before if before else float("nan")

    @property
    def ok(self) -> bool:
        return not (self.missed or self.doubled or self.failures or self.missing_objects)


def prepare(scene: Scene, count: int) -> list[str]:
    names = [f"many_{index:02d}" for index in range(count)]
    for name in names:
        scene.pg.create_database(name, SMALL_TABLE)
    return names


def run(
    scene: Scene, databases: list[str], seconds: float, concurrency: int = 4, startup: bool = False
) -> ManyResult:
    """Run the daemon for ``seconds``; ``startup``: RUN_ON_STARTUP (every target at once, a
    burst that a slot a few seconds later finds still running, and skips by design)."""
    targets = [f"t{index:02d}" for index in range(len(databases))]
    env = scene.backupd_env(
        "postgres",
        databases[0],
        BACKUPD_TARGETS=",".join(targets),
        CRON_SCHEDULE=f"*/{PERIOD} * * * * *",
        MAX_CONCURRENT_BACKUPS=str(concurrency),
        RUN_ON_STARTUP="true" if startup else "false",
        HTTP_PORT=str(free_port()),
        HTTP_HOST="127.0.0.1",
        LOG_LEVEL="INFO",
        **{f"T{index:02d}_DB_DATABASE": name for index, name in enumerate(databases)},
    )
    with tempfile.TemporaryFile("w+") as log:
        clock = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "backupd", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        rss: list[tuple[float, float]] = []
        while (elapsed := time.monotonic() - clock) < seconds and process.poll() is None:
            rss.append((elapsed, _rss_mib(process.pid)))
            time.sleep(0.5)
        stopped = datetime.now(UTC)
        cpu = _cpu(process.pid)
        process.send_signal(signal.SIGTERM)
        process.wait(120)
        log.seek(0)
        output = log.read()
    if process.returncode != 0:
        raise RuntimeError(f"backupd run exited {process.returncode}: {output[-3000:]}")
    result = judge(output, targets, stopped, scene.sink_keys(), rss, seconds, startup)
    result.cpu = cpu
    return result


def expected_slots(first_seen: datetime, stopped: datetime) -> list[str]:
    """Slot labels (as the daemon logs them, in UTC) after a target's start-up run began (the
    log's second: its scheduler computed the next slot right then) and before the stop."""
    at = first_seen + timedelta(seconds=1)
    while at.second % PERIOD:
        at += timedelta(seconds=1)
    slots = []
    while at <= stopped - timedelta(seconds=1):  # a slot at the very stop may not have fired
        slots.append(f"{at:%Y-%m-%d %H:%M:%S} UTC")
        at += timedelta(seconds=PERIOD)
    return slots


def judge(
    output: str,
    targets: list[str],
    stopped: datetime,
    keys: list[str],
    rss: list[tuple[float, float]],
    seconds: float,
    startup: bool = False,
) -> ManyResult:
    """Which slots ran, which were missed or doubled, and whether every stored object is there.

    A target's slots are expected from the moment its scheduler began (the log line of its
    start-up run, or else the daemon's "backupd running" line) until a second before the stop.
    """
    running = RUNNING.search(output)
    if running is None:
        raise RuntimeError(f"the daemon never said it was running: {output[-2000:]}")
    began = dict.fromkeys(targets, datetime.strptime(running.group(1), "%Y-%m-%dT%H:%M:%S%z"))
    runs: dict[str, list[str]] = defaultdict(list)
    for logged, target, slot in STARTING.findall(output):
        runs[target].append(slot)
        if slot == "start-up":
            began[target] = datetime.strptime(logged, "%Y-%m-%dT%H:%M:%S%z")
    result = ManyResult(len(targets), seconds, 0, rss=rss)
    result.runs = sum(len(labels) for labels in runs.values())
    result.failures = output.count(" FAILED ")
    result.missed += [f"{target} (skipped)" for target in SKIPPED.findall(output)]
    for target in targets:
        slots = expected_slots(began[target], stopped)
        counts = Counter(runs[target])
        if startup:
            slots.append("start-up")
        result.slots_expected += len(slots)
        result.doubled += [f"{target} {slot}" for slot, n in counts.items() if n > 1]
        result.missed += [f"{target} {slot}" for slot in slots if slot not in counts]
    stored = {key for _, key in STORED.findall(output)}
    in_sink = set(keys)
    result.missing_objects += sorted(
        key for key in stored if key not in in_sink or f"{key}.manifest.json" not in in_sink
    )
    if len(stored) != result.runs:
        result.missing_objects.append(f"{result.runs} runs started, {len(stored)} objects stored")
    return result


def _cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICKS
    return own, (int(fields[13]) + int(fields[14])) / TICKS


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
