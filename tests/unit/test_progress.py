from __future__ import annotations

import logging

import pytest

from backupd.progress import PROGRESS_INTERVAL, LogProgress, TerminalProgress


def test_log_progress_reports_bytes_rate_and_elapsed_at_most_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    progress = LogProgress()
    with caplog.at_level(logging.INFO, logger="backupd.progress"):
        for second in range(0, 61):
            progress.update("k", second * 10_000_000, float(second))
        progress.done("k")

    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 60 // int(PROGRESS_INTERVAL)
    assert lines[0] == "k: 150.0 MB stored, 10.0 MB/s, 15s elapsed"


def test_terminal_progress_rewrites_one_line_and_ends_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = TerminalProgress()
    progress.update("k", 5_000_000, 1.0)
    progress.update("k", 6_000_000, 1.1)  # too soon: not shown
    progress.update("k", 10_000_000, 2.0)
    progress.done("k")

    out = capsys.readouterr().out
    assert out.count("\r") == 2
    assert "k: 10.0 MB  5.0 MB/s  2s" in out
    assert out.endswith("\n")
