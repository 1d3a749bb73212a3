"""``backupd once`` in this process, with the CPU of each part of the byte path accounted.

Run by ``bench.profile`` as ``python -m bench.inprocess LAUNCHED_AT OUT.json`` with backupd's
environment. It wraps, without changing what they do:

- the reading of the dump's pipe (``backupd.process.PipeReader._read_into`` in executor
  threads, the thread of ``backupd.pipe.PipeReader`` on the perf branch, or the worker function
  of older versions), timed with ``time.thread_time`` in the thread that reads;
- SHA-256 (``hashlib.sha256`` objects as ``backupd.stream`` makes them), timed likewise;
- ``process.spawn``: the moment the first child (the dump) is started, on the monotonic clock
  shared with the launching process, and the main thread's CPU until then.

What is left of the main thread's CPU after the dump started is the event loop: sending parts
(aiohttp, botocore, the socket writes), scheduling, and the pipeline's own Python.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import resource
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

TOTALS: dict[str, float] = {"read": 0.0, "hash": 0.0, "hashed_bytes": 0.0}
LOCK = threading.Lock()
MARKS: dict[str, float] = {}


def _timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            with LOCK:
                TOTALS[name] += time.thread_time() - start

    return wrapper


class _TimedHash:
    def __init__(self, *args: Any) -> None:
        self._inner = hashlib.sha256(*args)

    def update(self, data: Any) -> None:
        start = time.thread_time()
        self._inner.update(data)
        with LOCK:
            TOTALS["hash"] += time.thread_time() - start
            TOTALS["hashed_bytes"] += memoryview(data).nbytes

    def hexdigest(self) -> str:
        return self._inner.hexdigest()


def install() -> None:
    import backupd.process
    import backupd.stream

    if hasattr(backupd.process, "_fill"):  # the reader of older versions
        backupd.process._fill = _timed("read", backupd.process._fill)
    reader = getattr(backupd.process, "PipeReader", None)
    if reader is not None and hasattr(reader, "_read_into"):  # read in executor threads
        reader._read_into = _timed("read", reader._read_into)
    with contextlib.suppress(ImportError):
        from backupd.pipe import PipeReader

        PipeReader._step = _timed("read", PipeReader._step)
    shim = types.ModuleType("hashlib")
    shim.sha256 = _TimedHash
    backupd.stream.hashlib = shim

    original = backupd.process.spawn

    @contextlib.asynccontextmanager
    async def spawn(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if "spawned" not in MARKS:
            MARKS["spawned"] = time.monotonic()
            MARKS["main_cpu_at_spawn"] = time.thread_time()
        async with original(*args, **kwargs) as child:
            yield child

    # Before anything imports it by name (backup.py does), so every caller gets the wrapper.
    backupd.process.spawn = spawn


def main() -> None:
    launched, out = float(sys.argv[1]), Path(sys.argv[2])
    MARKS["started"] = time.monotonic()
    install()
    import backupd.cli

    run_command = getattr(backupd.cli, "run_command", None)
    if run_command is not None:
        status = int(run_command(["once"]))  # not main(): that ends the process at once
    else:  # an older tree (``--before``), whose main() raised SystemExit
        try:
            backupd.cli.main(["once"])
        except SystemExit as exit_:
            status = int(exit_.code or 0)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "status": status,
        "interpreter_start_s": MARKS["started"] - launched,
        "spawned_after_s": MARKS.get("spawned", float("nan")) - launched,
        "main_cpu_at_spawn_s": MARKS.get("main_cpu_at_spawn", float("nan")),
        "main_cpu_s": time.thread_time(),
        "process_cpu_s": usage.ru_utime + usage.ru_stime,
        "process_user_s": usage.ru_utime,
        "process_system_s": usage.ru_stime,
        "read_cpu_s": TOTALS["read"],
        "hash_cpu_s": TOTALS["hash"],
        "hashed_bytes": TOTALS["hashed_bytes"],
        "peak_rss_mib": usage.ru_maxrss / 1024,
    }
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
