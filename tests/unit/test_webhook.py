"""Webhook and ping addresses: where each event of a run is sent."""

from __future__ import annotations

import pytest

from backupd.notify.webhook import ping_url


@pytest.mark.parametrize(
    ("base", "event", "url"),
    [
        ("https://hc.example/ping/KEY", "start", "https://hc.example/ping/KEY/start"),
        ("https://hc.example/ping/KEY/", "fail", "https://hc.example/ping/KEY/fail"),
        ("https://hc.example/ping/KEY/", "success", "https://hc.example/ping/KEY"),
        (
            "http://host/KEY/nightly-db?create=1",
            "start",
            "http://host/KEY/nightly-db/start?create=1",
        ),
        (
            "http://host/KEY/nightly-db/?create=1&rid=5",
            "fail",
            "http://host/KEY/nightly-db/fail?create=1&rid=5",
        ),
        ("http://host/KEY/nightly-db?create=1", "success", "http://host/KEY/nightly-db?create=1"),
        ("http://host/uuid#part", "fail", "http://host/uuid/fail#part"),
        ("http://host", "start", "http://host/start"),
    ],
)
def test_the_event_goes_into_the_path_before_the_query(base: str, event: str, url: str) -> None:
    assert ping_url(base, event) == url
