"""Looking at processes through /proc, as any local user could."""

from __future__ import annotations

import contextlib
from pathlib import Path


def cmdlines() -> dict[int, list[str]]:
    """Every readable process's argv."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                raw = (entry / "cmdline").read_bytes()
                found[int(entry.name)] = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return found


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def dump_processes(database: str) -> list[int]:
    """Live pg_dump/mariadb-dump processes working on ``database``."""
    pids = []
    for pid, argv in cmdlines().items():
        if not argv or Path(argv[0]).name not in {"pg_dump", "mariadb-dump", "mysqldump"}:
            continue
        if database in argv or environ(pid).get("PGDATABASE") == database:
            pids.append(pid)
    return pids


def parent_of(pid: int) -> int | None:
    """The parent pid from ``/proc/PID/stat`` (the field after the command in parentheses)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` is ``ancestor`` or one of its descendants (while both are alive)."""
    seen = set()
    current: int | None = pid
    while current is not None and current > 1 and current not in seen:
        if current == ancestor:
            return True
        seen.add(current)
        current = parent_of(current)
    return False
