"""Benchmark: ``backupd once`` against the bare dump and against ``pg_dump | aws s3 cp -``.

It starts a throwaway PostgreSQL, fills a database of the requested size, starts a discarding
S3 endpoint (``bench.s3sink``) so storage is never the bottleneck, and runs each contender
under ``/usr/bin/time -v``, interleaved, several times. It reports wall time, CPU seconds, peak
RSS and bytes written to local disk, then checks the targets. Run: ``make bench``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.servers import PostgresServer, free_port, wait_until

MIB = 1024 * 1024
ROW_BYTES = 103  # size of one generated row in a -Z0 custom-format dump
RESULTS = Path(__file__).parent / "results"
BARE, OURS, PEER = "bare pg_dump > /dev/null", "backupd once", "pg_dump | aws s3 cp -"
ENCRYPTED = "backupd once, age-encrypted"
ORDERS_SQL = (
    "CREATE TABLE orders AS SELECT g AS id, (g % 100000)::bigint AS customer_id,"
    " (random() * 10000)::numeric(12, 2) AS amount,"
    " timestamptz '2026-01-01' - (g || ' seconds')::interval AS created_at,"
    " (g % 7 = 0) AS refunded, md5(g::text) AS reference,"
    " 'item-' || (g % 5000) || ' x' || (g % 9) AS description"
    " FROM generate_series(1, {rows}) g"
)


@dataclass
class Sample:
    wall: float
    cpu: float
    rss_mib: float
    disk_bytes: int


def measure(argv: list[str], env: dict[str, str]) -> Sample:
    result = subprocess.run(
        ["/usr/bin/time", "-v", *argv], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        output = result.stdout[-2000:] + result.stderr[-2000:]
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {output}")
    report = result.stderr

    def field(name: str) -> str:
        match = re.search(rf"{re.escape(name)}: (.+)", report)
        if match is None:
            raise RuntimeError(f"no {name!r} in /usr/bin/time output")
        return match.group(1).strip()

    wall_parts = [float(p) for p in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")]
    wall = sum(p * 60**i for i, p in enumerate(reversed(wall_parts)))
    cpu = float(field("User time (seconds)")) + float(field("System time (seconds)"))
    rss = int(field("Maximum resident set size (kbytes)")) / 1024
    disk = int(field("File system outputs")) * 512
    return Sample(wall, cpu, rss, disk)


def fill_database(server: PostgresServer, name: str, size_mib: int) -> int:
    """An orders table of mixed column types, like an application's: ~``size_mib`` of dump."""
    rows = size_mib * MIB // ROW_BYTES
    server.create_database(name)
    server.psql(ORDERS_SQL.format(rows=rows), name)
    server.psql("VACUUM ANALYZE orders", name)
    return rows


def dump_size(env: dict[str, str]) -> int:
    with subprocess.Popen(
        ["pg_dump", "-Fc", "-Z0", "--no-password"], env=env, stdout=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        total = 0
        while chunk := proc.stdout.read(MIB):
            total += len(chunk)
    return total


def contenders(
    server: PostgresServer, database: str, sink: str
) -> dict[str, tuple[list[str], dict[str, str]]]:
    base = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR"}}
    pg = {**base, **server.env(database)}
    backupd_env = {
        **base,
        "DB_TYPE": "postgres",
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(server.port),
        "DB_USER": server.user,
        "DB_PASSWORD": server.password,
        "DB_DATABASE": database,
        "STORAGE_TYPE": "s3",
        "STORAGE_ENDPOINT_URL": sink,
        "STORAGE_BUCKET_NAME": "bench",
        "STORAGE_ACCESS_KEY_ID": "bench",
        "STORAGE_SECRET_ACCESS_KEY": "bench-secret",
        "COMPRESSION": "none",
        "LOG_LEVEL": "WARNING",
    }
    runs = {
        BARE: (["sh", "-c", "pg_dump -Fc -Z0 --no-password > /dev/null"], pg),
        OURS: ([sys.executable, "-m", "backupd", "once"], backupd_env),
    }
    if shutil.which("age-keygen"):
        identity = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True)
        recipient = subprocess.run(
            ["age-keygen", "-y"], input=identity.stdout, capture_output=True, text=True, check=True
        ).stdout.strip()
        runs[ENCRYPTED] = (runs[OURS][0], {**backupd_env, "ENCRYPTION_RECIPIENTS": recipient})
    if shutil.which("aws"):
        aws_env = {**pg, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
        pipeline = f"pg_dump -Fc -Z0 --no-password | aws --endpoint-url {sink} s3 cp - s3://bench/peer.dump"
        runs[PEER] = (["bash", "-o", "pipefail", "-c", pipeline], aws_env)
    return runs


def run_round(
    runs: dict[str, tuple[list[str], dict[str, str]]], repeat: int
) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, (argv, env) in runs.items():
            samples[name].append(measure(argv, env))
    return samples


def median(samples: list[Sample]) -> Sample:
    return Sample(
        wall=statistics.median(s.wall for s in samples),
        cpu=statistics.median(s.cpu for s in samples),
        rss_mib=max(s.rss_mib for s in samples),
        disk_bytes=max(s.disk_bytes for s in samples),
    )


def table(title: str, size: int, samples: dict[str, list[Sample]]) -> list[str]:
    bare = median(samples[BARE]).wall
    lines = [
        f"### {title}: dump of {size / MIB:.0f} MiB",
        "",
        "| contender | wall s (median) | x bare dump | CPU s | peak RSS MiB | local disk written |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, runs in samples.items():
        m = median(runs)
        lines.append(
            f"| {name} | {m.wall:.2f} | {m.wall / bare:.2f} | {m.cpu:.2f} | {m.rss_mib:.1f} | "
            f"{m.disk_bytes / 1024:.0f} KiB |"
        )
    return [*lines, ""]


def verdict(rounds: dict[int, dict[str, list[Sample]]]) -> list[str]:
    """The targets, judged on every database of at least 500 MiB; RSS across all sizes."""
    smallest = min(rounds)
    lines = ["| target | dump size | result | measured |", "|---|---:|---|---|"]

    def row(name: str, size: int, ok: bool, value: str) -> None:
        lines.append(f"| {name} | {size / MIB:.0f} MiB | {'pass' if ok else 'FAIL'} | {value} |")

    for size, samples in sorted(rounds.items()):
        if size < 500 * MIB:
            continue
        bare, ours = median(samples[BARE]), median(samples[OURS])
        ratio = ours.wall / bare.wall
        row("wall time ≤ 1.10 x bare dump", size, ratio <= 1.10, f"{ratio:.3f}x")
        row("peak RSS ≤ 128 MiB", size, ours.rss_mib <= 128, f"{ours.rss_mib:.1f} MiB")
        row(
            "< 4 MiB written to local disk",
            size,
            ours.disk_bytes < 4 * MIB,
            f"{ours.disk_bytes / 1024:.0f} KiB",
        )
    low = median(rounds[smallest][OURS]).rss_mib
    high = max(median(samples[OURS]).rss_mib for samples in rounds.values())
    row(
        "RSS flat as the database grows (within 10%)",
        max(rounds),
        high <= low * 1.10,
        f"{low:.1f} → {high:.1f} MiB",
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes-mib", default="150,600,2000", help="dump sizes to measure, comma-separated"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.md")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes_mib.split(",")]

    root = Path(tempfile.mkdtemp(prefix="backupd-bench-"))
    root.chmod(0o755)
    server = PostgresServer(root / "pg")
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "bench.s3sink", str(sink_port)])
    try:
        server.start()
        wait_until(lambda: _listening(sink_port), 10, "the S3 sink")
        sink_url = f"http://127.0.0.1:{sink_port}"
        report = [f"# backupd benchmark ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)", ""]
        rounds: dict[int, dict[str, list[Sample]]] = {}
        for size in sizes:
            name = f"bench_{size}"
            print(f"filling {name} (~{size} MiB)...", flush=True)
            fill_database(server, name, size)
            actual = dump_size({**os.environ, **server.env(name)})  # also warms the page cache
            print(f"measuring {name}: dump is {actual / MIB:.0f} MiB", flush=True)
            rounds[actual] = run_round(contenders(server, name, sink_url), args.repeat)
            report += table(f"{size} MiB database", actual, rounds[actual])
            server.psql(f'DROP DATABASE "{name}"')
        report += ["### Targets (COMPRESSION=none, default part size and concurrency)", ""]
        report += verdict(rounds)
        text = "\n".join(report) + "\n"
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    finally:
        sink.terminate()
        sink.wait()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    main()
