"""Numbers for people: sizes in binary units (KiB, MiB, GiB), rates, durations and ETAs."""

from __future__ import annotations

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(size: float) -> str:
    """``0`` → ``'0 B'``, ``1536`` → ``'1.5 KiB'``, ``16 * 2**20`` → ``'16.0 MiB'``.

    Bytes are whole; larger units get one decimal below 100 and none above (``'123 GiB'``).
    """
    value = float(size)
    for unit in UNITS:
        if abs(value) < 1024 or unit == UNITS[-1]:
            break
        value /= 1024
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:.1f} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"


def human_rate(size: float, seconds: float) -> str:
    """Throughput in the unit that fits (``'512 B/s'``, ``'12.3 MiB/s'``); ``'-'`` for no time.

    Never ``0.0 MB/s`` for a small dump that took a moment.
    """
    if seconds <= 0:
        return "-"
    return f"{human_size(size / seconds)}/s"


def human_duration(seconds: float) -> str:
    """``4.2`` → ``'4s'``, ``75`` → ``'1m15s'``, ``3725`` → ``'1h02m'``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
