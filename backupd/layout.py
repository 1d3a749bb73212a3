"""Object naming and what is stored beside each object: pure functions, no I/O."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any
from urllib.parse import quote

from backupd import __version__

MANIFEST_SUFFIX = ".manifest.json"
_UNSAFE = re.compile(r"[^\w.-]+")


def safe_name(database: str) -> str:
    """A database name fit for a key segment: runs of other characters become ``_``."""
    return _UNSAFE.sub("_", database).strip("_") or "_"


def backup_stem(database: str) -> str:
    return f"backup_{safe_name(database)}"


def object_key(prefix: str, stem: str, extension: str, when: datetime) -> str:
    """``{prefix}/{YYYYMMDD}/{stem}_{YYYYMMDD_HHMMSS}{ext}`` in ``when``'s zone.

    ``prefix`` is the destination folder, plus the target's name when targets are named;
    ``stem`` is ``backup_{database}`` (``backup_stem``) or ``globals``.
    """
    name = f"{stem}_{when:%Y%m%d_%H%M%S}{extension}"
    return "/".join(part for part in (prefix, f"{when:%Y%m%d}", name) if part)


def manifest_key(key: str) -> str:
    return key + MANIFEST_SUFFIX


def object_metadata(engine: str, database: str, when: datetime, timezone: str) -> dict[str, str]:
    """User metadata fixed at upload start. S3 metadata is ASCII: other characters are %-encoded."""
    return {
        "backup-type": engine,
        "database": quote(database, safe=""),
        "upload-timestamp": when.isoformat(timespec="seconds"),
        "timezone": timezone,
        "uploaded-by": f"backupd/{__version__}",
    }


def manifest_bytes(fields: dict[str, Any]) -> bytes:
    """The sidecar written after the object is complete; its presence marks a complete backup."""
    document = {"format": 1, "backupd_version": __version__, **fields}
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
