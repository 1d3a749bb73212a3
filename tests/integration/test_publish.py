"""Publishing: two writers never share a key, and a failed publish removes only its own object."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from backupd.catalogue import MANIFEST_SUFFIX
from tests.conftest import backupd_command, bucket_state, child_env, pg_env, storage_env
from tests.servers import FaultProxy, PostgresServer

WRITERS = 4


def start_together(env: dict[str, str], count: int) -> list[subprocess.CompletedProcess[str]]:
    processes = [
        subprocess.Popen(
            backupd_command("once"),
            env=child_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, output))
    return results


def complete_pairs(keys: list[str]) -> tuple[set[str], set[str]]:
    """(objects, objects named by a manifest)."""
    objects = {k for k in keys if not k.endswith(MANIFEST_SUFFIX) and "/." not in k}
    described = {k.removesuffix(MANIFEST_SUFFIX) for k in keys if k.endswith(MANIFEST_SUFFIX)}
    return objects, described


@pytest.mark.parametrize("storage", ["s3", "local"])
def test_writers_started_together_each_publish_their_own_backup(
    pg: PostgresServer, moto_url: str, s3: Any, bucket: str, tmp_path: Path, storage: str
) -> None:
    database = f"race_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    folder = tmp_path / "backups"
    folder.mkdir()
    where = (
        storage_env(moto_url, bucket)
        if storage == "s3"
        else {"STORAGE_TYPE": "local", "STORAGE_LOCAL_PATH": str(folder)}
    )

    results = start_together({**pg_env(pg, database), **where}, WRITERS)

    if storage == "s3":
        keys, uploads = bucket_state(s3, bucket)
        assert uploads == []
    else:
        keys = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    objects, described = complete_pairs(keys)
    assert objects == described  # every manifest has its object and every object its manifest
    published = {
        line.split(": ", 1)[1].split(",")[0]
        for r in results
        for line in r.stdout.splitlines()
        if "succeeded: " in line
    }
    assert published == objects  # each process published its own key
    assert len(objects) == sum(r.returncode == 0 for r in results) == WRITERS


def test_a_refused_manifest_removes_only_this_runs_object(
    pg: PostgresServer, proxy: FaultProxy, s3: Any, bucket: str
) -> None:
    database = f"refused_{uuid.uuid4().hex[:8]}"
    pg.create_database(database, "CREATE TABLE t (n int); INSERT INTO t VALUES (1);")
    env = {**pg_env(pg, database), **storage_env(proxy.url, bucket)}
    first = start_together(env, 1)[0]
    assert first.returncode == 0, first.stdout
    before = set(bucket_state(s3, bucket)[0])

    proxy.refuse_puts_ending = MANIFEST_SUFFIX
    refused = start_together(env, 1)[0]

    keys, uploads = bucket_state(s3, bucket)
    assert refused.returncode == 1, refused.stdout
    assert "AccessDenied" in refused.stdout or "refused" in refused.stdout
    assert set(keys) == before  # the earlier backup untouched, this run's object removed
    assert uploads == []
    assert "Traceback" not in refused.stdout
