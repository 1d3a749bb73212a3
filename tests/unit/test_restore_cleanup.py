"""What a restore that fails reports when its clean-up fails too."""

from __future__ import annotations

from typing import Any, cast

import pytest

from backupd.catalogue import Backup
from backupd.config import TargetConfig
from backupd.errors import QueryError
from backupd.restore import Request, _restore_database
from backupd.sources import Source
from backupd.storage import Storage


class RefusingSource:
    """A server where the login works but the user may neither create nor drop a database,
    as a MariaDB user granted only SELECT (tested): both statements fail with ERROR 1044."""

    def __init__(self) -> None:
        self.dropped: list[str] = []

    async def create_database(self, database: str, properties: dict[str, Any]) -> list[str]:
        raise QueryError(f"CREATE DATABASE `{database}`: ERROR 1044 (42000) at line 1: denied")

    async def drop_database(self, database: str) -> None:
        self.dropped.append(database)
        raise QueryError(f"DROP DATABASE IF EXISTS `{database}`: ERROR 1044 at line 1: denied")


async def test_the_error_reported_is_the_one_that_failed_the_restore(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = RefusingSource()
    with pytest.raises(QueryError) as failed:
        await _restore_database(
            cast(Storage, None),
            cast(Source, source),
            cast(TargetConfig, None),
            cast(Backup, None),
            Request(into="shop_new"),
            "missing",
            {},
        )
    assert "CREATE DATABASE `shop_new`" in str(failed.value)
    assert source.dropped == ["shop_new"]  # the clean-up was still tried...
    assert "could not drop shop_new after the failed restore" in caplog.text  # ...and said so
