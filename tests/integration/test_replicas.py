"""Several ``backupd run`` replicas on one schedule (COORDINATION=storage), as real processes."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

from tests.conftest import backupd_command, bucket_state, child_env, pg_env, storage_env
from tests.integration.test_daemon import daemon_process, fetch, metric, start_daemon
from tests.servers import FaultProxy, PostgresServer, free_port, wait_until

__all__ = ["daemon_process"]  # the fixture, shared with test_daemon

TARGETS = ("t1", "t2", "t3", "t4", "t5", "t6")
EVERY_FIVE_SECONDS = "*/5 * * * * *"
STAMP = re.compile(r"_(\d{8}_\d{6})")


def complete_backups(keys: list[str]) -> list[str]:
    """Objects that have their manifest (claims and manifests themselves excluded)."""
    present = set(keys)
    return sorted(
        k
        for k in keys
        if "/.backupd/" not in k and not k.endswith(".json") and f"{k}.manifest.json" in present
    )


def claims(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    keys, _ = bucket_state(s3, bucket)
    return {
        key: json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        for key in keys
        if "/.backupd/claims/" in key and "/.probe-" not in key  # probes come and go
    }


def started_at(key: str) -> datetime:
    match = STAMP.search(key.rsplit("/", 1)[1])
    assert match, key
    return datetime.strptime(match.group(1), "%Y%m%d_%H%M%S").replace(tzinfo=UTC)


def test_three_replicas_run_every_slot_of_six_targets_exactly_once(
    pg: PostgresServer,
    atomic_moto_url: str,
    s3: Any,
    bucket: str,
    daemon_process: list[subprocess.Popen[str]],
) -> None:
    for name in TARGETS:
        pg.create_database(f"replica_{name}", "CREATE TABLE t AS SELECT 1 AS x;")
    env = {
        **pg_env(pg, "unused"),
        **storage_env(atomic_moto_url, bucket),
        "BACKUPD_TARGETS": ",".join(TARGETS),
        **{f"{name.upper()}_DB_DATABASE": f"replica_{name}" for name in TARGETS},
        "CRON_SCHEDULE": EVERY_FIVE_SECONDS,
        "RUN_ON_STARTUP": "false",
        "MAX_CONCURRENT_BACKUPS": "3",
        "COORDINATION": "storage",
        "COORDINATION_LEASE": "10",
        "HTTP_HOST": "127.0.0.1",
    }
    ports = [free_port() for _ in range(3)]
    launched = time.monotonic()
    replicas = [
        start_daemon({**env, "HTTP_PORT": str(port), "REPLICA_ID": f"r{i}"}, daemon_process)
        for i, port in enumerate(ports)
    ]
    for port in ports:
        wait_until(lambda port=port: fetch(port, "/healthz")[0] == 200, 30, "every replica up")
    time.sleep(max(0.0, launched + 30 - time.monotonic()))  # six slots of six targets
    time.sleep((1.0 - time.time()) % 5)  # a second into a slot: no new one for four seconds
    # Metrics, then the bucket, then metrics again: a backup is counted right after it is
    # published, so the bucket's count lies between the two readings.
    before = [fetch(port, "/metrics")[1] for port in ports]
    keys_then, _ = bucket_state(s3, bucket)
    after = [fetch(port, "/metrics")[1] for port in ports]
    # A claim is stored before the replica that wrote it hears that it holds it, and only
    # then counts it as running: a claim listed meanwhile is counted by the first reading
    # taken after that answer, not necessarily by ``after``.
    claims_then = {
        name: [
            k
            for k in keys_then
            if re.search(rf"/\.backupd/claims/{name}\.[0-9a-f]{{8}}/backup/", k)
        ]
        for name in TARGETS
    }
    heard = after

    def every_listed_claim_counted() -> bool:
        nonlocal heard
        heard = [fetch(port, "/metrics")[1] for port in ports]
        return all(
            len(claims_then[name])
            <= sum(metric(t, "backupd_runs_total", target=name, result="success") for t in heard)
            + sum(metric(t, "backupd_runs_in_progress", target=name) for t in heard)
            for name in TARGETS
        )

    # Within the slot, so that no run claimed later can stand in for one that is not counted.
    wait_until(every_listed_claim_counted, 2.5, "each listed claim counted by its replica")
    for process in replicas:
        process.send_signal(signal.SIGTERM)
    outputs = [process.communicate(timeout=60)[0] for process in replicas]

    assert [p.returncode for p in replicas] == [0, 0, 0], outputs
    assert not any("Traceback" in output or "FAILED" in output for output in outputs), outputs
    keys, uploads = bucket_state(s3, bucket)
    assert uploads == []
    backups = complete_backups(keys)
    done = claims(s3, bucket)
    assert all(claim["state"] == "done" for claim in done.values()), done
    slots: dict[str, list[datetime]] = {}
    for claim in done.values():
        slots.setdefault(claim["target"], []).append(datetime.fromisoformat(claim["slot"]))
    assert sorted(slots) == sorted(TARGETS)
    for name in TARGETS:
        mine = sorted(slots[name])
        gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(mine)}
        assert len(mine) >= 4 and gaps == {5.0}, (name, mine)  # every slot covered
        stored = [started_at(k) for k in backups if k.startswith(f"backups/{name}/")]
        # Exactly once each: every slot is done, marked so by the replica whose run succeeded
        # (no run failed), and each run stores one object; as many backups as slots therefore
        # means no slot was run twice. (A backup's start stamp can lag its slot by more than
        # the interval on a loaded machine, so stamps are not matched to slots one by one.)
        assert len(stored) == len(mine), (name, mine, stored)
        assert all(when >= mine[0] for when in stored), (name, mine, stored)

    for name in TARGETS:

        def total(texts: list[str], series: str, name: str = name, **labels: str) -> float:
            return sum(metric(t, series, target=name, **labels) for t in texts)

        stored_then = complete_backups([k for k in keys_then if k.startswith(f"backups/{name}/")])
        claimed_then = claims_then[name]
        success_before = total(before, "backupd_runs_total", result="success")
        success_after = total(after, "backupd_runs_total", result="success")
        running_after = total(after, "backupd_runs_in_progress")
        success_heard = total(heard, "backupd_runs_total", result="success")
        running_heard = total(heard, "backupd_runs_in_progress")
        # the three replicas' metrics add up to what the bucket held between the two readings
        assert success_before <= len(stored_then) <= success_after + running_after
        assert success_before <= len(claimed_then) <= success_heard + running_heard
        assert total(after, "backupd_runs_total", result="failure") == 0
        assert total(after, "backupd_slots_claimed_elsewhere_total", kind="backup") > 0
        # every backup of this target was logged as a success by exactly one replica
        logged = [
            re.findall(rf"backup of {name} replica_{name} succeeded: (\S+),", o) for o in outputs
        ]
        assert sorted(k for found in logged for k in found) == [
            k for k in backups if k.startswith(f"backups/{name}/")
        ]
    won = [
        sum(metric(t, "backupd_runs_total", target=n, result="success") for n in TARGETS)
        for t in after
    ]
    assert all(won), won  # every replica took a share


def test_a_killed_replicas_slot_is_taken_over_and_completed_once(
    pg: PostgresServer,
    big_pg_database: str,
    atomic_proxy: FaultProxy,
    s3: Any,
    bucket: str,
    daemon_process: list[subprocess.Popen[str]],
) -> None:
    atomic_proxy.part_delay = 1.0  # five parts: a run far longer than the lease
    env = {
        **pg_env(pg, big_pg_database),
        **storage_env(atomic_proxy.url, bucket),
        "COMPRESSION": "none",
        "STORAGE_PART_SIZE": "5MiB",
        "STORAGE_UPLOAD_CONCURRENCY": "1",
        "CRON_SCHEDULE": "0 0 1 1 *",  # the start-up run stands for this year's only slot
        "COORDINATION": "storage",
        "COORDINATION_LEASE": "3",
        "HTTP_HOST": "127.0.0.1",
    }
    first_port, second_port = free_port(), free_port()
    first = start_daemon(
        {**env, "REPLICA_ID": "first", "HTTP_PORT": str(first_port)}, daemon_process
    )

    def uploading() -> bool:
        return any(claim.get("writing") for claim in claims(s3, bucket).values())

    wait_until(uploading, 30, "the first replica to upload")
    second = start_daemon(
        {**env, "REPLICA_ID": "second", "HTTP_PORT": str(second_port)}, daemon_process
    )

    def second_waits() -> bool:
        text = fetch(second_port, "/metrics")[1]
        return metric(text, "backupd_slots_claimed_elsewhere_total", target="default") == 1

    wait_until(second_waits, 30, "the second replica to find the slot claimed")
    first.kill()
    first.communicate()
    atomic_proxy.part_delay = 0.0

    def second_succeeded() -> bool:
        text = fetch(second_port, "/metrics")[1]
        return metric(text, "backupd_runs_total", target="default", result="success") == 1

    wait_until(second_succeeded, 60, "the second replica to take the slot over and finish it")
    second.send_signal(signal.SIGTERM)
    output = second.communicate(timeout=60)[0]

    keys, uploads = bucket_state(s3, bucket)
    assert uploads == []
    (claim,) = claims(s3, bucket).values()
    assert (claim["replica"], claim["token"], claim["state"]) == ("second", 2, "done")
    backups = complete_backups(keys)
    assert len(backups) == 1, keys
    objects = [k for k in keys if "/.backupd/" not in k and not k.endswith(".manifest.json")]
    assert objects == backups  # nothing left of the killed replica's upload
    assert "took over" in output and "from replica first" in output
    assert "aborted 1 upload(s) of backups/" in output
    assert second.returncode == 0, output


def test_a_store_that_ignores_if_none_match_is_refused_at_start(
    pg: PostgresServer, proxy: FaultProxy, atomic_moto_url: str, bucket: str
) -> None:
    proxy.strip_headers = {"if-none-match"}
    env = {**pg_env(pg, "postgres"), "COORDINATION": "storage", "HTTP_PORT": "0"}
    stripped = {**env, **storage_env(proxy.url, bucket)}
    honest = {**env, **storage_env(atomic_moto_url, bucket)}

    run, check, good_check = (
        subprocess.Popen(
            backupd_command(command),
            env=child_env(config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command, config in (("run", stripped), ("check", stripped), ("check", honest))
    )
    run_out, run_err = run.communicate(timeout=60)
    check_out, _ = check.communicate(timeout=60)
    good_out, _ = good_check.communicate(timeout=60)

    assert run.returncode == 2, run_out + run_err
    (line,) = run_err.strip().splitlines()
    assert line.startswith("backupd: COORDINATION=storage: s3 bucket " + bucket)
    assert "ignores If-None-Match" in line
    assert check.returncode == 1
    assert "FAIL default coordination: COORDINATION=storage" in check_out
    assert good_check.returncode == 0, good_out
    assert "ok   default coordination: s3 bucket" in good_out
    assert "honours If-None-Match and If-Match" in good_out


def test_two_deployments_sharing_a_folder_each_back_up_their_own_databases(
    pg: PostgresServer,
    atomic_moto_url: str,
    s3: Any,
    bucket: str,
    daemon_process: list[subprocess.Popen[str]],
) -> None:
    """Two deployments (other databases, the same unnamed target ``default``) write to one
    folder, each with COORDINATION=storage: neither's slots are "claimed elsewhere" by the
    other, so each backs up its databases at every slot."""
    apps = ("deploy_one", "deploy_two")
    for name in apps:
        pg.create_database(name, "CREATE TABLE t AS SELECT 1 AS x;")
    env = {
        **storage_env(atomic_moto_url, bucket),
        "CRON_SCHEDULE": EVERY_FIVE_SECONDS,
        "RUN_ON_STARTUP": "false",
        "COORDINATION": "storage",
        "COORDINATION_LEASE": "10",
        "HTTP_HOST": "127.0.0.1",
    }
    ports = [free_port() for _ in apps]
    launched = time.monotonic()
    deployments = [
        start_daemon(
            {**env, **pg_env(pg, name), "HTTP_PORT": str(port), "REPLICA_ID": name},
            daemon_process,
        )
        for name, port in zip(apps, ports, strict=True)
    ]
    for port in ports:
        wait_until(lambda port=port: fetch(port, "/healthz")[0] == 200, 30, "both deployments up")
    time.sleep(max(0.0, launched + 21 - time.monotonic()))  # at least three slots
    time.sleep((2.5 - time.time()) % 5)  # mid-slot: the runs of the last one are over
    for process in deployments:
        process.send_signal(signal.SIGTERM)
    outputs = [process.communicate(timeout=60)[0] for process in deployments]

    assert [p.returncode for p in deployments] == [0, 0], outputs
    keys, _ = bucket_state(s3, bucket)
    backups = complete_backups(keys)
    done = claims(s3, bucket)
    ran = {}
    for name, output in zip(apps, outputs, strict=True):
        # Each deployment's own slots: the two schedulers may start either side of a slot.
        ran[name] = {claim["slot"] for claim in done.values() if claim["replica"] == name}
        mine = [k for k in backups if f"/backup_{name}_" in k]
        assert len(ran[name]) >= 3, (name, done, output)
        assert len(mine) == len(ran[name]), (name, mine, sorted(ran[name]), output)
    # One claim per slot for both would leave each deployment only the slots it won.
    assert len(ran["deploy_one"] & ran["deploy_two"]) >= 2, done
