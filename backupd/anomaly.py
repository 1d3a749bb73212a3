"""Anomaly alerts: a backup much smaller or larger than the ones before it.

After each successful backup its stored size (and, where the manifests record them, its total
rows) is compared with the median of the previous ``ANOMALY_WINDOW`` backups of the same
database. Below ``ANOMALY_SHRINK`` times the median or above ``ANOMALY_GROWTH`` times it, the
backup is reported as ``anomaly``: a warning with both figures, never a failure, and nothing is
deleted. With fewer than ``MIN_HISTORY`` earlier backups there is no judgement.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass

from backupd.catalogue import Backup, recent
from backupd.config import AnomalyConfig, TargetConfig
from backupd.errors import BackupdError
from backupd.storage import Storage, reuse_or_open

log = logging.getLogger(__name__)

MIN_HISTORY = 3


@dataclass(frozen=True)
class Figures:
    """What is compared: stored bytes, and total rows when recorded."""

    size: int
    rows: int | None = None


def judge(current: Figures, earlier: list[Figures], rules: AnomalyConfig) -> list[str]:
    """Why ``current`` looks anomalous against ``earlier`` (newest first), one line per measure
    with both figures; empty when it does not, or when there is too little history.

    Only the newest ``rules.window`` earlier backups count. A measure whose median is 0, or
    that fewer than ``MIN_HISTORY`` of them recorded, is not judged.
    """
    window = earlier[: rules.window]
    findings = []
    measures = (
        ("size", current.size, [f.size for f in window], "bytes"),
        ("total rows", current.rows, [f.rows for f in window if f.rows is not None], "rows"),
    )
    for what, value, history, unit in measures:
        if value is None or len(history) < MIN_HISTORY:
            continue
        median = statistics.median(history)
        if median <= 0:
            continue
        ratio = value / median
        if ratio < rules.shrink or ratio > rules.growth:
            direction = "shrank" if ratio < rules.shrink else "grew"
            findings.append(
                f"{what} {direction} to {value:,} {unit}, {ratio:.2f}x the median of "
                f"{median:,.0f} {unit} over the previous {len(history)} backups"
            )
    return findings


def figures(backup: Backup) -> Figures:
    rows = backup.manifest.total_rows if backup.manifest is not None else None
    return Figures(backup.size, rows)


async def anomalies(
    target: TargetConfig, published: list[str], storage: Storage | None = None
) -> dict[str, list[str]]:
    """Judge each just-published backup (its key) against its predecessors in the same series:
    ``{key: findings}`` for the anomalous ones. One listing for all of them, through
    ``storage`` when given (the run's own, still open), else through a new connection; a
    storage problem is logged and means no judgement."""
    rules = target.anomaly
    try:
        async with reuse_or_open(target.storage, storage) as opened:
            found = await recent(opened, target.key_prefix, published, rules.window + 1)
    except BackupdError as error:
        log.warning("%s: no anomaly check: %s", target.name, error)
        return {}
    judged: dict[str, list[str]] = {}
    for key in published:
        backups = found.get(key, [])
        current = next((b for b in backups if b.key == key), None)
        if current is None:
            continue
        earlier = [b for b in backups if b.complete and b.key != key and b.taken <= current.taken]
        findings = judge(figures(current), [figures(b) for b in earlier], rules)
        for finding in findings:
            log.warning(
                "%s: backup %s of %s looks anomalous: %s",
                target.name,
                key,
                current.database,
                finding,
            )
        if findings:
            judged[key] = findings
    return judged
