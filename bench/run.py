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
        "bare pg_dump > /dev/null": (["sh", "-c", "pg_dump -Fc -Z0 --no-password > /dev/null"], pg),
        "backupd once": ([sys.executable, "-m", "backupd", "once"], backupd_env),
    }
    if shutil.which("aws"):
        aws_env = {**pg, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}
        pipeline = f"pg_dump -Fc -Z0 --no-password | aws --endpoint-url {sink} s3 cp - s3://bench/peer.dump"
        runs["pg_dump | aws s3 cp -"] = (["bash", "-o", "pipefail", "-c", pipeline], aws_env)
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
    bare = median(samples["bare pg_dump > /dev/null"]).wall
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


def verdict(big: dict[str, list[Sample]], small: dict[str, list[Sample]]) -> list[str]:
    bare = median(big["bare pg_dump > /dev/null"])
    ours = median(big["backupd once"])
    small_ours = median(small["backupd once"])
    checks = [
        (
            "wall time ≤ 1.10 x bare dump",
            ours.wall / bare.wall <= 1.10,
            f"{ours.wall / bare.wall:.3f}x",
        ),
        ("peak RSS ≤ 128 MiB", ours.rss_mib <= 128, f"{ours.rss_mib:.1f} MiB"),
        (
            "< 4 MiB written to local disk",
            ours.disk_bytes < 4 * MIB,
            f"{ours.disk_bytes / 1024:.0f} KiB",
        ),
        (
            "RSS flat as the database grows (within 10%)",
            ours.rss_mib <= small_ours.rss_mib * 1.10,
            f"{small_ours.rss_mib:.1f} → {ours.rss_mib:.1f} MiB",
        ),
    ]
    lines = ["| target | result | measured |", "|---|---|---|"]
    lines += [f"| {name} | {'pass' if ok else 'FAIL'} | {value} |" for name, ok, value in checks]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--size-mib", type=int, default=600, help="size of the large database's dump"
    )
    parser.add_argument(
        "--small-mib", type=int, default=150, help="size of the small one, for RSS flatness"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.md")
    args = parser.parse_args()

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
        rounds = {}
        for label, name, size in (
            ("small", "bench_small", args.small_mib),
            ("large", "bench_large", args.size_mib),
        ):
            print(f"filling {name} (~{size} MiB)...", flush=True)
            fill_database(server, name, size)
            actual = dump_size({**os.environ, **server.env(name)})  # also warms the page cache
            print(f"measuring {name}: dump is {actual / MIB:.0f} MiB", flush=True)
            rounds[label] = run_round(contenders(server, name, sink_url), args.repeat)
            report += table(label, actual, rounds[label])
        report += ["### Targets (COMPRESSION=none, default part size and concurrency)", ""]
        report += verdict(rounds["large"], rounds["small"])
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
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    main()
