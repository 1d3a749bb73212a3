"""What notifiers are told: one report per database per run, with secrets already masked."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from backupd.errors import BackupdError


class NotifyError(BackupdError):
    """A notification could not be delivered; the message names the setting to look at."""

    step = "notify"


class State(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ANOMALY = "anomaly"
    """The backup succeeded but looks wrong (much smaller or larger than usual)."""


@dataclass(frozen=True)
class Report:
    target: str
    database: str
    engine: str
    state: State
    finished: datetime
    """Local time in the target's ``TIMEZONE``."""
    key: str | None = None
    size: int = 0
    duration_s: float = 0.0
    sha256: str | None = None
    step: str | None = None
    """Where a failure happened: connect, dump, upload, ..."""
    error: str | None = None
    kind: str = "backup"
    """``backup`` or ``verify``."""
    note: str | None = None
    """What a verify found, or why a backup looks anomalous (both figures)."""
    left_behind: str | None = None
    """For a failed backup: what the run wrote and could not remove again (``backup.left_behind``
    of its error), None when it left nothing in the storage."""

    @property
    def ok(self) -> bool:
        return self.state is not State.FAILED

    @property
    def throughput(self) -> float:
        return self.size / self.duration_s if self.duration_s > 0 else 0.0

    def properties(self) -> dict[str, Any]:
        """The structured fields of the report, as logs, Seq and webhooks carry them."""
        return {
            "Target": self.target,
            "Database": self.database,
            "Engine": self.engine,
            "Key": self.key,
            "Bytes": self.size,
            "DurationSeconds": self.duration_s,
            "Result": self.state.value,
            "Kind": self.kind,
        }
