"""Where the time of ``backupd once`` goes: start-up, then per part read, hash and send.

For each backupd source tree (this one, and ``--before DIR``), interleaved, ``--repeat`` times:

- ``bench.inprocess`` runs ``backupd once`` with the byte path's CPU accounted per thread:
  start-up until the dump is spawned (wall, and the main thread's CPU), reading the pipe,
  SHA-256, and the event loop after the spawn (sending parts: aiohttp, botocore, sockets);
- ``bench.measure`` samples the dump tool's wait channel: the share of time it slept on a full
  pipe, which is wall time the dump lost;
- with ``py-spy`` installed (``pip install py-spy``), one sampled profile of the whole process.

Writes ``bench/results/profile.md``. Run: ``python -m bench.profile [--size-mib 600]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.measure import GIB, MIB, load_average, measure
from bench.scene import Scene, scene, stream_size

RESULTS = Path(__file__).parent / "results"
HARNESS = Path(__file__).with_name("inprocess.py")
CATEGORIES = (
    ("start-up: imports", ("_find_and_load",)),
    (
        "read: pipe to part buffer",
        ("pipe.py", "process.py:_read_into", "process.py:_fill", "_fill (backupd"),
    ),
    ("send: aiohttp, botocore, socket", ("_send_part", "aiohttp", "botocore", "PartPayload")),
    ("part buffers (allocation)", ("blank_body",)),
)


def inprocess(env: dict[str, str], cwd: Path) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        launched = time.monotonic()
        done = subprocess.run(
            # By path, not ``-m``: a ``--before`` tree first on PYTHONPATH may have a bench
            # package of its own, without this harness.
            [sys.executable, str(HARNESS), str(launched), out.name],
            env=env,
            capture_output=True,
            text=True,
            cwd=cwd,
        )
        if done.returncode != 0:
            raise RuntimeError(f"bench.inprocess failed ({done.returncode}): {done.stderr[-3000:]}")
        result: dict[str, float] = json.loads(Path(out.name).read_text())
    return result


def spy(env: dict[str, str], cwd: Path) -> Counter[str] | None:
    """Samples (at 200 Hz) per category, from one py-spy recording; None without py-spy."""
    tool = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(tool).exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
        record = [tool, "record", "--rate", "200", "--threads", "--nonblocking"]
        subprocess.run(
            [
                *record,
                "--format",
                "raw",
                "-o",
                raw.name,
                "--",
                sys.executable,
                "-m",
                "backupd",
                "once",
            ],
            env=env,
            check=True,
            capture_output=True,
            cwd=cwd,
        )
        counts: Counter[str] = Counter()
        for line in Path(raw.name).read_text().splitlines():
            stack, _, number = line.rpartition(" ")
            counts[categorize(stack)] += int(number)
    return counts


def categorize(stack: str) -> str:
    for name, markers in CATEGORIES:
        if any(marker in stack for marker in markers):
            return name
    if stack.rsplit(";", 1)[-1].startswith("_WorkItem.run"):
        return "hash: SHA-256 in a worker thread"
    return "other (event loop, scheduling, threads)"


def breakdown(samples: list[dict[str, float]], part_size: int) -> dict[str, float]:
    def med(key: str) -> float:
        return statistics.median(sample[key] for sample in samples)

    size = med("hashed_bytes")
    parts = max(size / part_size, 1)
    loop = statistics.median(s["main_cpu_s"] - s["main_cpu_at_spawn_s"] for s in samples)
    return {
        "dump MiB": size / MIB,
        "start-up until the dump is spawned, s (wall)": med("spawned_after_s"),
        "main thread CPU until then, s": med("main_cpu_at_spawn_s"),
        "read CPU per part, ms": med("read_cpu_s") / parts * 1000,
        "hash CPU per part, ms": med("hash_cpu_s") / parts * 1000,
        "event loop CPU per part after the spawn (send), ms": loop / parts * 1000,
        "read CPU per GiB, s": med("read_cpu_s") / (size / GIB),
        "hash CPU per GiB, s": med("hash_cpu_s") / (size / GIB),
        "event loop CPU per GiB after the spawn, s": loop / (size / GIB),
        "backupd process CPU per GiB, s": med("process_cpu_s") / (size / GIB),
        "of which system (kernel) per GiB, s": med("process_system_s") / (size / GIB),
        "peak RSS, MiB": med("peak_rss_mib"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another backupd source tree")
    parser.add_argument("--before-part-mib", type=int, default=16)
    parser.add_argument("--before-label", default="before", help="its column's title")
    parser.add_argument("--out", type=Path, default=RESULTS / "profile.md")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    trees = {"this tree": (str(here), 8 * MIB)}
    if args.before is not None:
        trees[args.before_label] = (f"{args.before}:{here}", args.before_part_mib * MIB)
    with scene(with_mariadb=False) as stage:
        stage.fill_postgres("profiled", args.size_mib)
        size = stream_size(["pg_dump", "-Fc", "-Z0", "--no-password"], stage.pg_env("profiled"))
        loads = [load_average()]
        results = profile(stage, trees, args.repeat)
        loads.append(load_average())
    write(args.out, size, results, loads)


def profile(
    stage: Scene, trees: dict[str, tuple[str, int]], repeat: int
) -> dict[str, tuple[dict[str, float], float, Counter[str] | None]]:
    env = stage.backupd_env("postgres", "profiled", COMPRESSION="none")
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    blocked: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(repeat):
        for name, (path, _) in trees.items():
            tree_env = {**env, "PYTHONPATH": path}
            # From the scratch folder: from the repository, ``-m`` would import this tree.
            samples[name].append(inprocess(tree_env, stage.root))
            argv = [sys.executable, "-m", "backupd", "once"]
            blocked[name].append(measure(argv, tree_env, watch_pipe=True, cwd=stage.root).blocked)
    return {
        name: (
            breakdown(samples[name], part),
            statistics.median(blocked[name]),
            spy({**env, "PYTHONPATH": path}, stage.root),
        )
        for name, (path, part) in trees.items()
    }


def write(
    out: Path,
    size: int,
    results: dict[str, tuple[dict[str, float], float, Counter[str] | None]],
    loads: list[str],
) -> None:
    names = list(results)
    lines = [
        f"### Where the time goes: `backupd once`, PostgreSQL dump of {size / MIB:.0f} MiB, "
        f"COMPRESSION=none ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load {loads[0]} → {loads[-1]})",
        "",
        "| measure (median) | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for key in results[names[0]][0]:
        lines.append(f"| {key} | " + " | ".join(f"{results[n][0][key]:.2f}" for n in names) + " |")
    lines.append(
        "| dump blocked on a full pipe (share of its run) | "
        + " | ".join(f"{results[n][1]:.0%}" for n in names)
        + " |"
    )
    lines.append("")
    for name in names:
        counts = results[name][2]
        if counts is None:
            continue
        total = sum(counts.values())
        lines += [f"py-spy, {name} (CPU samples of all threads at 200 Hz):", ""]
        lines += [f"- {category}: {n / total:.0%}" for category, n in counts.most_common()]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
