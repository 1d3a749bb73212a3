from __future__ import annotations

import logging

import pytest

from backupd.progress import PROGRESS_INTERVAL, LogProgress, TerminalProgress, progress_text
from backupd.units import human_duration, human_rate, human_size

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (16 * MIB, "16.0 MiB"),
        (int(99.94 * MIB), "99.9 MiB"),
        (150 * MIB, "150 MiB"),
        (1024 * MIB, "1.0 GiB"),
        (int(2.5 * 1024**4), "2.5 TiB"),
        (3 * 1024**6, "3072 PiB"),
    ],
)
def test_sizes_are_in_binary_units(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(
    ("size", "seconds", "text"),
    [
        (2_000, 0.5, "3.9 KiB/s"),  # a small dump: never "0.0 MB/s"
        (300, 1.0, "300 B/s"),
        (100 * MIB, 10.0, "10.0 MiB/s"),
        (5, 0.0, "-"),
    ],
)
def test_rates_use_the_unit_that_fits(size: int, seconds: float, text: str) -> None:
    assert human_rate(size, seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0s"), (4.6, "5s"), (75, "1m15s"), (3725, "1h02m")]
)
def test_durations(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


@pytest.mark.parametrize(
    ("size", "elapsed", "total", "text"),
    [
        (150 * MIB, 15.0, None, "150 MiB, 10.0 MiB/s, 15s elapsed"),
        (150 * MIB, 15.0, 0, "150 MiB, 10.0 MiB/s, 15s elapsed"),
        (
            100 * MIB,
            10.0,
            400 * MIB,
            "100 MiB of about 400 MiB (about 25%), 10.0 MiB/s, 10s elapsed, about 30s left",
        ),
        (
            int(399.9 * MIB),
            40.0,
            400 * MIB,
            "400 MiB of about 400 MiB (about 99%), 10.0 MiB/s, 40s elapsed, about 0s left",
        ),
        (
            500 * MIB,
            50.0,
            400 * MIB,
            "500 MiB (more than the estimated 400 MiB), 10.0 MiB/s, 50s elapsed",
        ),
        (0, 0.0, 400 * MIB, "0 B of about 400 MiB (about 0%), -, 0s elapsed"),
    ],
)
def test_progress_says_about_percent_and_eta_from_an_estimate(
    size: int, elapsed: float, total: int | None, text: str
) -> None:
    assert progress_text(size, elapsed, total) == text


def test_log_progress_reports_bytes_rate_and_elapsed_at_most_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    progress = LogProgress()
    with caplog.at_level(logging.INFO, logger="backupd.progress"):
        progress.expect("k", 1200 * MIB)
        for second in range(0, 61):
            progress.update("k", second * 10 * MIB, float(second))
        progress.done("k")

    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 60 // int(PROGRESS_INTERVAL)
    assert lines[0] == (
        "k: 150 MiB of about 1.2 GiB (about 12%), 10.0 MiB/s, 15s elapsed, about 1m45s left"
    )


def test_terminal_progress_rewrites_one_line_and_ends_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = TerminalProgress()
    progress.update("k", 5 * MIB, 1.0)
    progress.update("k", 6 * MIB, 1.1)  # too soon: not shown
    progress.update("k", 10 * MIB, 2.0)
    progress.done("k")

    out = capsys.readouterr().out
    assert out.count("\r") == 2
    assert "k: 10.0 MiB, 5.0 MiB/s, 2s elapsed" in out
    assert out.endswith("\n")
