"""Run one contender and measure it: wall time, CPU, peak RSS, local disk writes.

The process is waited for without being reaped first (``waitid(WNOWAIT)``), so its own CPU
time can still be read from ``/proc/PID/stat`` of the zombie, apart from the CPU of the
children it waited for (the dump tool); ``wait4`` then gives the totals. Optionally a sampler
watches the dump tool and counts how often it sleeps in a write to a full pipe.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024
GIB = 1024 * MIB
TICKS = os.sysconf("SC_CLK_TCK")
DUMP_TOOLS = ("pg_dump", "mariadb-dump", "mysqldump")


@dataclass
class Sample:
    wall: float
    cpu: float
    """User + system seconds of the process and every child it waited for."""
    own_cpu: float
    """User + system seconds of the process alone (meaningless for a shell pipeline)."""
    rss_mib: float
    """Peak RSS of the largest process in the tree."""
    disk_bytes: int
    blocked: float = 0.0
    """Fraction of samples in which the dump tool slept writing to a full pipe (-1: unknown)."""
    timeline: list[tuple[float, bool]] = field(default_factory=list, repr=False)


def measure(
    argv: list[str], env: dict[str, str], *, watch_pipe: bool = False, cwd: Path | None = None
) -> Sample:
    """Run ``argv`` to completion; raise RuntimeError (with its output's tail) if it fails.

    ``cwd`` matters for ``python -m``: the working directory comes first on ``sys.path``, before
    ``PYTHONPATH``, so a source tree to compare with is only used from elsewhere.
    """
    with tempfile.TemporaryFile() as output:
        started = time.monotonic()
        process = subprocess.Popen(argv, env=env, stdout=output, stderr=output, cwd=cwd)
        sampler = PipeSampler(process.pid) if watch_pipe else None
        if sampler is not None:
            sampler.start()
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        wall = time.monotonic() - started
        own = _own_cpu(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if sampler is not None:
            sampler.stop()
        if process.returncode != 0:
            output.seek(0)
            tail = output.read()[-3000:].decode("utf-8", "replace")
            raise RuntimeError(f"{argv[0]} failed ({process.returncode}): {tail}")
    return Sample(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        own_cpu=own,
        rss_mib=usage.ru_maxrss / 1024,
        disk_bytes=usage.ru_oublock * 512,
        blocked=sampler.fraction() if sampler is not None else -1.0,
        timeline=sampler.timeline if sampler is not None else [],
    )


def _own_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / TICKS


def descendants(pid: int) -> Iterator[int]:
    """Every live process below ``pid``."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return
    for child in children:
        yield int(child)
        yield from descendants(int(child))


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class PipeSampler:
    """Samples the dump tool's wait channel every few milliseconds.

    ``fraction`` is the share of samples (taken while a dump tool ran) in which it slept in
    ``pipe_write``: the time the dump spends waiting for its reader, which is wall time lost.
    """

    def __init__(self, root: int, interval: float = 0.005) -> None:
        self.root = root
        self.interval = interval
        self.samples = 0
        self.blocked = 0
        self.timeline: list[tuple[float, bool]] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def fraction(self) -> float:
        return self.blocked / self.samples if self.samples else 0.0

    def _run(self) -> None:
        dump: int | None = None
        while not self._stop.wait(self.interval):
            if dump is None or not Path(f"/proc/{dump}").exists():
                dump = next(
                    (p for p in descendants(self.root) if command_name(p) in DUMP_TOOLS), None
                )
                if dump is None:
                    continue
            try:
                channel = Path(f"/proc/{dump}/wchan").read_text()
            except OSError:
                dump = None
                continue
            self.samples += 1
            self.blocked += "pipe_write" in channel
            self.timeline.append((time.monotonic() - self._started, "pipe_write" in channel))


def median(samples: list[Sample]) -> Sample:
    """Medians of times; the largest RSS and disk figure seen."""
    return Sample(
        wall=statistics.median(s.wall for s in samples),
        cpu=statistics.median(s.cpu for s in samples),
        own_cpu=statistics.median(s.own_cpu for s in samples),
        rss_mib=max(s.rss_mib for s in samples),
        disk_bytes=max(s.disk_bytes for s in samples),
        blocked=statistics.median(s.blocked for s in samples),
    )


def load_average() -> str:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return f"{one} / {five} / {fifteen}"
