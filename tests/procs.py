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
