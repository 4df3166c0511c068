"""Memory budgets: what counting and capping collated bytes adds to planning.

Side by side, in one run, on the peers' lengths (10M samples by default):

- one epoch of ``token_budget`` (65,536 tokens) without a memory budget;
- :func:`laden.memory.collated_bytes` of that epoch (every batch's bytes);
- :func:`laden.memory.cap_epoch` of it under a cap that splits about half of
  the batches (the splitting itself);
- a whole ``BatchPlan.build`` with and without ``memory_budget``.

Run: ``python benchmarks/bench_memory.py [--samples 10000000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median_time, peer_lengths, print_table

import laden
from laden.memory import BatchBytes, MemoryBudget, cap_epoch, collated_bytes, resolve_budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    lengths = peer_lengths(args.samples)
    table = laden.LengthTable.from_lengths(lengths)
    kernel = laden.Kernel(autoload=False)
    sampler = kernel.create("sampler", {"name": "token_budget", "token_budget": 65536})
    plan_s, epoch = median_time(lambda: sampler.plan_epoch(table, seed=0), args.repeats)
    model = BatchBytes.for_backend()
    count_s, per = median_time(lambda: collated_bytes(epoch, lengths, model), args.repeats)
    cap = int(np.median(per))
    recorded = resolve_budget(MemoryBudget(bytes=cap), table)
    split_s, capped = median_time(lambda: cap_epoch(epoch, recorded, lengths), args.repeats)
    assert int(collated_bytes(capped, lengths, model).max()) <= cap
    build_s, _ = median_time(lambda: laden.BatchPlan.build(table, sampler), args.repeats)
    budget = MemoryBudget(bytes=cap)
    capped_s, plan = median_time(
        lambda: laden.BatchPlan.build(table, sampler, memory_budget=budget), args.repeats
    )
    report = plan.epochs[0].report["memory"]
    print(
        f"{args.samples:,} samples, {len(epoch):,} batches; cap {cap:,} bytes (the median batch) "
        f"splits {report['split_batches']:,} batches into {report['extra_batches']:,} more"
    )
    print_table(
        ["step", "seconds", "x plan_epoch"],
        [
            ["token_budget plan_epoch", f"{plan_s:.3f}", "1.00"],
            ["collated_bytes (every batch)", f"{count_s:.3f}", f"{count_s / plan_s:.2f}"],
            ["cap_epoch (split under the cap)", f"{split_s:.3f}", f"{split_s / plan_s:.2f}"],
            ["BatchPlan.build", f"{build_s:.3f}", f"{build_s / plan_s:.2f}"],
            ["BatchPlan.build + memory_budget", f"{capped_s:.3f}", f"{capped_s / plan_s:.2f}"],
        ],
    )


if __name__ == "__main__":
    main()
