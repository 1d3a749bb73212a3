"""Benchmark: ``backupd`` side by side with the bare dump and with the shell pipes people use.

One run starts a throwaway PostgreSQL and MariaDB, fills databases of the requested sizes, and
a discarding S3 endpoint (``bench.s3sink``) so storage is never the bottleneck. For each size
it runs, interleaved (A, B, C, A, B, C, ...), ``--repeat`` times each:

- PostgreSQL, ``COMPRESSION=none``: the bare ``pg_dump -Fc -Z0 > /dev/null``, ``backupd once``
  and ``pg_dump | aws s3 cp -`` (skipped, with a note, without the ``aws`` CLI);
- MariaDB text dumps with zstd: ``mariadb-dump | zstd -T0 -3 > /dev/null``, ``backupd once``
  with ``COMPRESSION=zstd`` and ``mariadb-dump | zstd -T0 -3 | aws s3 cp -``;

and for both, ``backupd once`` again with ``VERIFY_ROW_COUNTS=off`` (what counting every table
beside the dump costs), and for PostgreSQL once more age-encrypted;

and then ``bench.many``: 50 targets in one ``backupd run`` for three minutes. It reports
medians of wall time, the CPU seconds of the backupd process itself (per GiB of dump), the CPU
of the whole process tree, peak RSS and bytes written to local disk, the machine's load while
measuring, and checks the targets. ``--before DIR`` adds rows for another backupd source tree
(``git archive`` of an older commit), measured in the same interleaving.

Run: ``make bench`` (full, about half an hour) or ``make bench ARGS=--quick`` (100 MiB only,
no many-target run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import many
from bench.measure import GIB, MIB, Sample, load_average, measure, median
from bench.scene import Scene, scene, stream_size

RESULTS = Path(__file__).parent / "results"
OURS = "backupd once"
ENCRYPTED = "backupd once, age-encrypted"
UNCOUNTED = "backupd once, VERIFY_ROW_COUNTS=off"
BEFORE = "backupd once (before)"
PG_BARE, PG_PEER = "pg_dump -Fc -Z0 > /dev/null", "pg_dump -Fc -Z0 | aws s3 cp -"
MY_BARE = "mariadb-dump | zstd -T0 -3 > /dev/null"
MY_PEER = "mariadb-dump | zstd -T0 -3 | aws s3 cp -"
MARIADB_DUMP_OPTIONS = (
    "--single-transaction --quick --routines --events --triggers --hex-blob"
    " --default-character-set=utf8mb4"
)
Runs = dict[str, tuple[list[str], dict[str, str]]]


@dataclass
class Round:
    engine: str
    size: int
    bare: str
    samples: dict[str, list[Sample]]
    load: str


def own_rows() -> tuple[str, ...]:
    """The rows that run backupd (``BEFORE`` is named at start-up)."""
    return (OURS, BEFORE, ENCRYPTED, UNCOUNTED)


def backupd_argv() -> list[str]:
    return [sys.executable, "-m", "backupd", "once"]


def pg_runs(stage: Scene, database: str, before: Path | None) -> Runs:
    ours = stage.backupd_env("postgres", database, COMPRESSION="none")
    pg = stage.pg_env(database)
    runs: Runs = {PG_BARE: (["sh", "-c", "pg_dump -Fc -Z0 --no-password > /dev/null"], pg)}
    runs[OURS] = (backupd_argv(), ours)
    runs[UNCOUNTED] = (backupd_argv(), {**ours, "VERIFY_ROW_COUNTS": "off"})
    if before is not None:
        runs[BEFORE] = (backupd_argv(), {**ours, "PYTHONPATH": str(before)})
    if shutil.which("age-keygen"):
        runs[ENCRYPTED] = (backupd_argv(), {**ours, "ENCRYPTION_RECIPIENTS": age_recipient()})
    if shutil.which("aws"):
        peer = f"pg_dump -Fc -Z0 --no-password | {aws_cp(stage, 'peer.dump')}"
        runs[PG_PEER] = (["bash", "-o", "pipefail", "-c", peer], {**pg, **aws_env()})
    return runs


def mariadb_runs(stage: Scene, database: str, before: Path | None) -> Runs:
    ours = stage.backupd_env("mariadb", database, COMPRESSION="zstd")
    dump = f"mariadb-dump --defaults-extra-file={stage.mariadb_defaults()} {MARIADB_DUMP_OPTIONS}"
    dump += f" --databases {database}"
    env = stage.pg_env("unused")  # PATH and friends
    runs: Runs = {
        MY_BARE: (["bash", "-o", "pipefail", "-c", f"{dump} | zstd -T0 -3 -q > /dev/null"], env)
    }
    runs[OURS] = (backupd_argv(), ours)
    runs[UNCOUNTED] = (backupd_argv(), {**ours, "VERIFY_ROW_COUNTS": "off"})
    if before is not None:
        runs[BEFORE] = (backupd_argv(), {**ours, "PYTHONPATH": str(before)})
    if shutil.which("aws"):
        peer = f"{dump} | zstd -T0 -3 -q | {aws_cp(stage, 'peer.sql.zst')}"
        runs[MY_PEER] = (["bash", "-o", "pipefail", "-c", peer], {**env, **aws_env()})
    return runs


def age_recipient() -> str:
    """A fresh age recipient whose identity is thrown away: the bench never decrypts."""
    identity = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True)
    return subprocess.run(
        ["age-keygen", "-y"], input=identity.stdout, capture_output=True, text=True, check=True
    ).stdout.strip()


def aws_cp(stage: Scene, key: str) -> str:
    return f"aws --endpoint-url {stage.sink_url} s3 cp - s3://bench/{key}"


def aws_env() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def run_round(runs: Runs, repeat: int, cwd: Path) -> dict[str, list[Sample]]:
    """Each contender ``repeat`` times, interleaved, so that load changes hit all alike.

    From ``cwd``, a scratch folder: run from the repository, ``python -m backupd`` would import
    this tree's backupd even for the rows of ``--before``.
    """
    samples: dict[str, list[Sample]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, (argv, env) in runs.items():
            watch = name in own_rows()
            samples[name].append(measure(argv, env, watch_pipe=watch, cwd=cwd))
    return samples


def table(result: Round) -> list[str]:
    bare = median(result.samples[result.bare]).wall
    gib = result.size / GIB
    lines = [
        f"#### {result.engine}: dump of {result.size / MIB:.0f} MiB (load {result.load})",
        "",
        "| contender | wall s | x bare | backupd CPU s | per GiB | tree CPU s | peak RSS MiB"
        " | dump blocked | disk written |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in result.samples.items():
        m = median(runs)
        ours = name in own_rows()
        own = f"{m.own_cpu:.2f} | {m.own_cpu / gib:.2f}" if ours else "n/a | n/a"
        blocked = f"{m.blocked:.0%}" if ours else "n/a"
        label = name.replace("|", "\\|")
        lines.append(
            f"| {label} | {m.wall:.2f} | {m.wall / bare:.2f} | {own} | {m.cpu:.2f} | "
            f"{m.rss_mib:.1f} | {blocked} | {m.disk_bytes / 1024:.0f} KiB |"
        )
    return [*lines, ""]


def verdict(rounds: list[Round], crowd: many.ManyResult | None) -> list[str]:
    lines = ["| target | dump | result | measured |", "|---|---:|---|---|"]

    def row(name: str, size: str, ok: bool, value: str) -> None:
        lines.append(f"| {name} | {size} | {'pass' if ok else 'FAIL'} | {value} |")

    for result in rounds:
        size = f"{result.engine} {result.size / MIB:.0f} MiB"
        bare, ours = median(result.samples[result.bare]), median(result.samples[OURS])
        gib = result.size / GIB
        ratio = ours.wall / bare.wall
        row("wall ≤ 1.05 x bare", size, ratio <= 1.05, f"{ratio:.2f}x")
        peer_name = PG_PEER if result.engine == "postgres" else MY_PEER
        if peer_name in result.samples:
            peer = median(result.samples[peer_name])
            row(
                "wall ≤ aws-cli pipe",
                size,
                ours.wall <= peer.wall,
                f"{ours.wall:.2f} s vs {peer.wall:.2f} s",
            )
        limit = 100 if result.engine == "postgres" else 130
        row(f"peak RSS ≤ {limit} MiB", size, ours.rss_mib <= limit, f"{ours.rss_mib:.1f} MiB")
        row(
            "no dump on local disk",
            size,
            ours.disk_bytes < MIB,
            f"{ours.disk_bytes / 1024:.0f} KiB",
        )
        if BEFORE in result.samples:
            then = median(result.samples[BEFORE])
            row(
                "backupd CPU per GiB ≤ half of before",
                size,
                ours.own_cpu <= then.own_cpu / 2,
                f"{ours.own_cpu / gib:.2f} vs {then.own_cpu / gib:.2f} s/GiB",
            )
    for engine in sorted({r.engine for r in rounds}):
        sized = sorted((r for r in rounds if r.engine == engine), key=lambda r: r.size)
        if len(sized) > 1:
            low, high = (
                median(sized[0].samples[OURS]).rss_mib,
                max(median(r.samples[OURS]).rss_mib for r in sized),
            )
            row(
                "RSS flat across sizes (10%)",
                engine,
                high <= low * 1.10,
                f"{low:.1f} → {high:.1f} MiB",
            )
    if crowd is not None:
        row(
            "many targets: every slot once",
            f"{crowd.targets} targets",
            not (crowd.missed or crowd.doubled),
            f"{crowd.runs} runs, {len(crowd.missed)} missed, {len(crowd.doubled)} doubled",
        )
        row(
            "many targets: every object stored",
            f"{crowd.targets} targets",
            not crowd.missing_objects and not crowd.failures,
            f"{len(crowd.missing_objects)} missing, {crowd.failures} failed",
        )
        row(
            "many targets: peak RSS ≤ 250 MiB",
            f"{crowd.targets} targets",
            crowd.peak_rss <= 250,
            f"{crowd.peak_rss:.1f} MiB",
        )
        growth = crowd.growth_after_first_minute
        row(
            "many targets: RSS flat after 1 min (10%)",
            f"{crowd.targets} targets",
            growth <= 1.10,
            f"x{growth:.2f}",
        )
    return lines


def crowd_summary(crowd: many.ManyResult, load: str) -> list[str]:
    return [
        f"#### {crowd.targets} targets in one `backupd run`, every {many.PERIOD} s, "
        f"MAX_CONCURRENT_BACKUPS=4, {crowd.seconds:.0f} s (load {load})",
        "",
        f"{crowd.runs} runs for {crowd.slots_expected} expected slots; "
        f"missed {len(crowd.missed)}, doubled {len(crowd.doubled)}, failed {crowd.failures}, "
        f"objects missing {len(crowd.missing_objects)}; peak RSS {crowd.peak_rss:.1f} MiB "
        f"(first minute {crowd.rss_between(0, 60):.1f}, "
        f"after it {crowd.rss_between(60, crowd.seconds + 1):.1f}). CPU per run: backupd "
        f"{crowd.cpu[0] / max(crowd.runs, 1) * 1000:.0f} ms, its children (probe, dump) "
        f"{crowd.cpu[1] / max(crowd.runs, 1) * 1000:.0f} ms.",
        "",
        "Peak RSS of each 30 s, MiB: "
        + ", ".join(f"{peak:.1f}" for peak in crowd.rss_windows(30))
        + ".",
        "",
    ]


def measure_sizes(stage: Scene, args: argparse.Namespace) -> list[Round]:
    rounds: list[Round] = []
    for size in args.sizes:
        name = f"bench_{size}"
        print(f"filling PostgreSQL {name} (~{size} MiB)...", flush=True)
        stage.fill_postgres(name, size)
        actual = stream_size(["pg_dump", "-Fc", "-Z0", "--no-password"], stage.pg_env(name))
        print(f"measuring PostgreSQL: dump of {actual / MIB:.0f} MiB", flush=True)
        load = load_average()
        samples = run_round(pg_runs(stage, name, args.before), args.repeat, stage.root)
        rounds.append(Round("postgres", actual, PG_BARE, samples, f"{load} → {load_average()}"))
        stage.pg.psql(f'DROP DATABASE "{name}"')
    for size in args.mariadb_sizes:
        name = f"bench_{size}"
        print(f"filling MariaDB {name} (~{size} MiB)...", flush=True)
        stage.fill_mariadb(name, size)
        dump = [
            "mariadb-dump",
            f"--defaults-extra-file={stage.mariadb_defaults()}",
            *MARIADB_DUMP_OPTIONS.split(),
            "--databases",
            name,
        ]
        actual = stream_size(dump, stage.pg_env("unused"))
        print(f"measuring MariaDB: dump of {actual / MIB:.0f} MiB", flush=True)
        load = load_average()
        samples = run_round(mariadb_runs(stage, name, args.before), args.repeat, stage.root)
        rounds.append(Round("mariadb zstd", actual, MY_BARE, samples, f"{load} → {load_average()}"))
        assert stage.mariadb is not None
        stage.mariadb.root_sql(f"DROP DATABASE `{name}`")
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100 MiB only, no many-target run")
    parser.add_argument("--sizes-mib", default="100,600,2000", help="PostgreSQL dump sizes")
    parser.add_argument("--mariadb-sizes-mib", default="100,600,2000", help="MariaDB dump sizes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--many-targets", type=int, default=50)
    parser.add_argument("--many-seconds", type=float, default=180)
    parser.add_argument("--before", type=Path, help="another backupd source tree to compare with")
    parser.add_argument("--before-label", default="before", help="how the tables name it")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.md")
    args = parser.parse_args()
    global BEFORE
    BEFORE = f"backupd once ({args.before_label})"
    args.sizes = [int(s) for s in ("100" if args.quick else args.sizes_mib).split(",") if s]
    args.mariadb_sizes = [
        int(s) for s in ("100" if args.quick else args.mariadb_sizes_mib).split(",") if s
    ]
    if args.quick:
        args.many_targets = 0

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report = [
        f"### backupd benchmark, {started}: {os.cpu_count()} cores, load {load_average()} at start",
        "",
    ]
    if not shutil.which("aws"):
        report += ["The `aws` CLI is not installed: the aws-cli rows are left out.", ""]
    with scene(with_mariadb=bool(args.mariadb_sizes)) as stage:
        rounds = measure_sizes(stage, args)
        crowd = None
        if args.many_targets:
            print(f"{args.many_targets} targets for {args.many_seconds:.0f} s...", flush=True)
            databases = many.prepare(stage, args.many_targets)
            load = load_average()
            crowd = many.run(stage, databases, args.many_seconds)
            report += crowd_summary(crowd, f"{load} → {load_average()}")
    for result in rounds:
        report += table(result)
    report += ["#### Targets", "", *verdict(rounds, crowd), ""]
    text = "\n".join(report)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
