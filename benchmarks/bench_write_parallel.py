"""``laden write`` with 1 and 2 workers, in one run, and where the time goes.

    python benchmarks/bench_write_parallel.py [--n 20000] [--repeats 3] [--max-workers 2]

Issue 16: 2 workers wrote at 0.79x of one worker under load (1.35x at low
load). The write is one plan of prose-like documents (lognormal lengths, a
BPE trained on them, batches of <= 16,384 tokens, npz), written with 0
(in this process), 1 and 2 workers, alternated ``--repeats`` times so every
worker count sees the same moments of other jobs' load; medians are printed.
Beside the wall time: this process's CPU seconds (what the parent takes from
the cores the workers need: task making, result handling, the manifest) and
the workers' CPU seconds (their start-up, tokenizing, collating, writing,
checksums), and the other jobs' CPU use during the run, in cores (from
``/proc/stat``, less ours). On a 2-core machine shared with other jobs no
worker count gets 2 cores while they run: Linux gives every session an equal
share (autogroup), however many processes it runs, so with one busy job
beside it the write gets one core with 1 worker or 2. ``--quiet-wait``
waits for a quiet second before each run. Every run's files are checked to hold the same content.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_reader import trained_tokenizer
from common import print_table, write_prose_corpus

import laden
from laden.files.write import load_manifest, write_batches
from laden.lengths import build_lengths
from laden.plan import BatchPlan


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """CPU seconds every process of the machine has used so far (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def wait_for_quiet(limit: float) -> None:
    """Wait (at most ``limit`` seconds) for a second in which other jobs used < 10% of a CPU."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = machine_busy()
        time.sleep(1.0)
        if machine_busy() - before < 0.1:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="documents")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each run, wait up to this many seconds for the other jobs to go quiet",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="laden-bench-write-parallel-"))
    try:
        run(root, args.n, args.repeats, args.max_workers, args.quiet_wait)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, n: int, repeats: int, max_workers: int, quiet_wait: float) -> None:
    kernel = laden.Kernel(autoload=False)
    data = root / "data.jsonl"
    write_prose_corpus(data, n)
    source = kernel.create("source", {"name": "jsonl", "path": str(data)})
    tokenizer = trained_tokenizer(kernel, root, data)
    inline = kernel.create("executor", {"name": "local", "workers": 0})
    table = build_lengths(source, tokenizer, executor=inline)
    sampler = kernel.create(
        "sampler", {"name": "token_budget", "token_budget": 16384, "num_buckets": 4}
    )
    plan = BatchPlan.build(table, sampler, epochs=1, seed=0)
    writer = kernel.create("writer", "npz")
    counts = list(range(max_workers + 1))
    times: dict[int, list[tuple[float, float, float, float]]] = {w: [] for w in counts}
    contents: set[tuple[tuple[str, str], ...]] = set()
    loads = [load()]
    for repeat in range(repeats):
        for workers in counts:
            out = root / f"batches-{workers}-{repeat}"
            executor = kernel.create("executor", {"name": "local", "workers": workers})
            if quiet_wait:
                wait_for_quiet(quiet_wait)
            cpu, workers_cpu, busy = time.process_time(), children_cpu(), machine_busy()
            start = time.perf_counter()
            write_batches(plan, table, source, tokenizer, writer, out, executor=executor)
            wall = time.perf_counter() - start
            ours = (time.process_time() - cpu, children_cpu() - workers_cpu)
            # Other jobs' CPU seconds per second of this run: 1.0 is a whole core taken.
            others = max(0.0, machine_busy() - busy - sum(ours)) / wall
            times[workers].append((wall, *ours, others))
            files = load_manifest(out)["files"]
            contents.add(tuple(sorted((k, r["content"]) for k, r in files.items())))
            shutil.rmtree(out)
        loads.append(load())
    one = statistics.median(t[0] for t in times[1]) if max_workers >= 1 else float("nan")
    rows = []
    for workers in counts:
        wall = statistics.median(t[0] for t in times[workers])
        rows.append(
            [
                "in this process" if workers == 0 else f"{workers} worker(s)",
                f"{wall:.2f}",
                f"{plan.total_steps / wall:.0f}",
                f"{statistics.median(t[1] for t in times[workers]):.2f}",
                f"{statistics.median(t[2] for t in times[workers]):.2f}",
                "" if workers == 0 else f"{one / wall:.2f}x",
                f"{statistics.median(t[3] for t in times[workers]):.2f}",
                " ".join(f"{t[0]:.2f}" for t in times[workers]),
            ]
        )
    print(
        f"{n:,} documents, {table.num_tokens:,} tokens ({type(tokenizer).name} tokenizer), "
        f"{plan.total_steps:,} batches of <= 16,384 tokens, npz; medians of {repeats}, "
        f"alternated; load average (1, 5, 15 min) before and after each round: "
        f"{' | '.join(loads)}\n"
    )
    print_table(
        [
            "write",
            "seconds",
            "files/s",
            "parent CPU s",
            "workers CPU s",
            "vs 1 worker",
            "others' cores",
            "each run",
        ],
        rows,
    )
    if max_workers >= 2:
        # Round by round: the ratio within a round, where the other jobs took least
        # (Linux shares the CPUs per session, so only a quiet round shows what 2 cores give).
        rounds = [
            [
                str(r + 1),
                f"{times[1][r][0]:.2f}",
                f"{times[2][r][0]:.2f}",
                f"{times[1][r][0] / times[2][r][0]:.2f}x",
                f"{times[1][r][3]:.2f} / {times[2][r][3]:.2f}",
            ]
            for r in range(repeats)
        ]
        print()
        print_table(
            ["round", "1 worker s", "2 workers s", "2 vs 1", "others' cores (1 / 2)"], rounds
        )
        quiet = min(range(repeats), key=lambda r: max(times[1][r][3], times[2][r][3]))
        print(
            f"\nquietest round ({quiet + 1}): 2 workers "
            f"{times[1][quiet][0] / times[2][quiet][0]:.2f}x one worker"
        )
    print(f"\nevery run wrote the same content: {len(contents) == 1}")
    if len(contents) != 1:
        raise SystemExit("runs with different worker counts wrote different batches")


if __name__ == "__main__":
    main()
