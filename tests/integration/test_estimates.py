"""Size estimates and existence, asked of real servers; progress gets the estimate mid-dump."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from backupd import backup
from backupd.environment import load_target
from backupd.sources import FileSource, Source, source_for
from backupd.sources.postgres import PostgresSource
from tests.conftest import mariadb_env, pg_env
from tests.servers import MariaDBServer, PostgresServer

MIB = 1024 * 1024


def source(env: dict[str, str], tmp_path: Path) -> Source:
    target = load_target({**env, "STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(tmp_path)})
    found = source_for(target)
    assert not isinstance(found, FileSource)
    return found


async def test_postgres_estimates_its_database_and_knows_what_exists(
    pg: PostgresServer, big_pg_database: str, tmp_path: Path
) -> None:
    postgres = source(pg_env(pg, big_pg_database), tmp_path)

    size = await postgres.estimated_size(big_pg_database)

    assert size is not None and 20 * MIB < size < 200 * MIB  # a dump of about 25 MB
    assert await postgres.estimated_size("no_such_database") is None
    assert await postgres.database_exists(big_pg_database)
    assert not await postgres.database_exists("no_such_database")


async def test_mariadb_estimates_its_schema_and_knows_what_exists(
    mariadb: MariaDBServer, tmp_path: Path
) -> None:
    database = f"sized_{uuid.uuid4().hex[:6]}"
    mariadb.create_database(
        database,
        "CREATE TABLE t (id INT PRIMARY KEY, payload CHAR(200));"
        "INSERT INTO t SELECT seq, REPEAT('x', 200) FROM seq_1_to_20000;"
        "ANALYZE TABLE t;",
    )
    maria = source(mariadb_env(mariadb, database), tmp_path)

    size = await maria.estimated_size(database)

    assert size is not None and 2 * MIB < size < 64 * MIB  # 20,000 rows of ~200 bytes
    assert await maria.database_exists(database)
    assert not await maria.database_exists("no_such_database")


class Recorder:
    def __init__(self) -> None:
        self.expected: list[tuple[str, int | None]] = []
        self.sizes: list[int] = []

    def expect(self, key: str, total: int | None) -> None:
        self.expected.append((key, total))

    def update(self, key: str, size: int, elapsed: float) -> None:
        self.sizes.append(size)

    def done(self, key: str) -> None:
        return None


@pytest.mark.parametrize(("compression", "estimated"), [("zstd", True), ("auto", False)])
async def test_progress_gets_the_estimate_only_when_the_bytes_compare(
    pg: PostgresServer,
    big_pg_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
    estimated: bool,
) -> None:
    """Counted bytes are the dump tool's output, before backupd compresses; pg_dump's own
    compression (auto) makes them incomparable with the database's size."""
    monkeypatch.setattr(backup, "ESTIMATE_AFTER", 0.0)
    asked: list[str] = []

    async def estimated_size(self: PostgresSource, database: str) -> int:
        asked.append(database)  # the real query is tested above; here it must not lose a race
        return 40 * MIB

    monkeypatch.setattr(PostgresSource, "estimated_size", estimated_size)
    env = {**pg_env(pg, big_pg_database), "COMPRESSION": compression, "STORAGE_PART_SIZE": "5MiB"}
    target = load_target({**env, "STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(tmp_path)})
    recorder = Recorder()

    run = await backup.run_backup(target, recorder)

    assert run.ok, run.failures
    (result,) = run.results
    if estimated:
        assert asked == [big_pg_database]
        assert recorder.expected == [(result.key, 40 * MIB)]
        assert max(recorder.sizes) > result.size  # raw bytes counted, zstd stored fewer
    else:
        assert asked == []
        assert recorder.expected == []
