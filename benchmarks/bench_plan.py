"""A 3-epoch batch plan over 10M lengths: build, save, load, shard; sampler cost per batch.

    python benchmarks/bench_plan.py [--n 10000000] [--epochs 3]

Targets (issue 5): build in at most 10 s, save plus load in at most 3 s (load
streamed, so it does not double peak memory), at most 4.5 bytes per sample
per epoch on disk, and ``PlanBatchSampler`` yielding a batch in under 20 us.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_mb, peer_lengths, print_table

import laden
from laden.plan import BatchPlan
from laden.torch import PlanBatchSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    kernel = laden.Kernel(autoload=False)
    table = laden.LengthTable.from_lengths(peer_lengths(args.n))
    sampler = kernel.create(
        "sampler", {"name": "token_budget", "token_budget": 16384, "num_buckets": 4}
    )
    rows = []
    start = time.perf_counter()
    plan = BatchPlan.build(table, sampler, epochs=args.epochs, seed=0)
    build = time.perf_counter() - start
    rows.append(["build", f"{build:.2f}", "<= 10", f"{plan.total_steps:,} steps"])
    rss_built = peak_rss_mb()

    directory = Path(tempfile.mkdtemp(prefix="laden-bench-plan-"))
    try:
        start = time.perf_counter()
        plan.save(directory / "plan")
        save = time.perf_counter() - start
        size = sum(f.stat().st_size for f in (directory / "plan").iterdir())
        per_sample = size / (args.n * args.epochs)
        start = time.perf_counter()
        loaded = BatchPlan.load(directory / "plan")
        load = time.perf_counter() - start
        assert loaded.fingerprint == plan.fingerprint
        rows.append(["save", f"{save:.2f}", "", f"{size / 2**20:.1f} MiB"])
        rows.append(["load (streamed, checksummed)", f"{load:.2f}", "", ""])
        rows.append(["save + load", f"{save + load:.2f}", "<= 3", ""])
        rows.append(["bytes per sample per epoch", f"{per_sample:.2f}", "<= 4.5", ""])
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    start = time.perf_counter()
    shards = [plan.shard(rank, 8) for rank in range(8)]
    shard = time.perf_counter() - start
    rows.append(["shard into 8 ranks", f"{shard:.2f}", "", f"{shards[0].steps[0]:,} steps/epoch"])

    # The batch sampler itself needs no torch (the loader does).
    batch_sampler = PlanBatchSampler(plan)
    start = time.perf_counter()
    count = sum(1 for _ in batch_sampler)
    per_batch = (time.perf_counter() - start) / count * 1e6
    rows.append(["PlanBatchSampler, us per batch", f"{per_batch:.1f}", "< 20", f"{count:,}"])
    print(f"batch plan: N={args.n:,} peer lengths, {args.epochs} epochs, token budget 16384\n")
    print_table(["step", "seconds / value", "target", "note"], rows)
    print(
        f"\npeak RSS after build {rss_built:,.0f} MiB, at the end {peak_rss_mb():,.0f} MiB "
        "(load streams into the result: no second copy)"
    )


if __name__ == "__main__":
    main()
