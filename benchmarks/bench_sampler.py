"""Token-budget batching over 10 million lengths, beside np.argsort and the peers.

    python benchmarks/bench_sampler.py [--n 10000000] [--repeats 3]

Targets (issue 3): planning one epoch takes at most 3x np.argsort on the same
array in the same process, peaks under 1 GB, and reaches a padding efficiency
of at least 0.95 with suggested edges. HF transformers' LengthGroupedSampler
and chuk-lazarus' TokenBudgetBatchSampler run on the same lengths when they
are installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import median_time, peer_lengths, print_table

import laden
from laden.batching import suggest_bucket_edges

BUDGET = 16384


def padding_efficiency(batches: list[np.ndarray], lengths: np.ndarray) -> float:
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return real / padded


def over_budget(batches: list[np.ndarray], lengths: np.ndarray) -> float:
    return float(np.mean([len(b) * int(lengths[b].max()) > BUDGET for b in batches]))


def run_hf(lengths: np.ndarray, batch_size: int) -> tuple[str, float, float, str] | None:
    try:
        from transformers.trainer_pt_utils import LengthGroupedSampler
    except Exception:
        return None
    import torch

    torch.manual_seed(0)
    sampler = LengthGroupedSampler(batch_size, lengths=lengths.tolist())
    seconds, order = median_time(lambda: np.fromiter(iter(sampler), dtype=np.int64), 1)
    batches = [order[i : i + batch_size] for i in range(0, order.size, batch_size)]
    note = f"no budget: {over_budget(batches, lengths):.0%} of batches over it"
    return ("HF LengthGroupedSampler", seconds, padding_efficiency(batches, lengths), note)


def run_lazarus(lengths: np.ndarray, edges: np.ndarray) -> tuple[str, float, float, str] | None:
    try:
        import asyncio

        from chuk_lazarus.data import BucketSpec, TokenBudgetBatchSampler
    except Exception:
        return None
    spec = BucketSpec(edges=tuple(int(e) for e in edges[:-1]), overflow_max=int(edges[-1]))
    sampler = TokenBudgetBatchSampler(
        lengths={f"s{i}": int(v) for i, v in enumerate(lengths)},
        bucket_spec=spec,
        token_budget=BUDGET,
        seed=0,
    )

    async def collect() -> list[np.ndarray]:
        out = []
        async for batch in sampler.iter_epoch(epoch=0):
            out.append(np.array([int(s[1:]) for s in batch.sample_ids]))
        return out

    start = time.perf_counter()
    batches = asyncio.run(collect())
    seconds = time.perf_counter() - start
    return (
        "chuk-lazarus TokenBudgetBatchSampler",
        seconds,
        padding_efficiency(batches, lengths),
        "",
    )


def peak_memory_of_planning(n: int, edges: list[int]) -> float:
    """Peak RSS of a fresh process that builds a table and plans one epoch (MiB)."""
    script = f"""
import sys, numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from common import peak_rss_mb, peer_lengths
import laden
lengths = peer_lengths({n})
table = laden.LengthTable.from_lengths(lengths)
sampler = laden.Kernel(autoload=False).create(
    "sampler", {{"name": "token_budget", "token_budget": {BUDGET}, "bucket_edges": {edges}}})
plan = sampler.plan_epoch(table, seed=0)
print(peak_rss_mb())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-n", type=int, default=1_000_000, help="lengths given to peers")
    args = parser.parse_args()

    lengths = peer_lengths(args.n)
    table = laden.LengthTable.from_lengths(lengths)
    kernel = laden.Kernel(autoload=False)
    suggest_seconds, edges = median_time(lambda: suggest_bucket_edges(lengths, 4), 1)
    sampler = kernel.create(
        "sampler", {"name": "token_budget", "token_budget": BUDGET, "bucket_edges": edges.tolist()}
    )
    argsort_seconds, _ = median_time(lambda: np.argsort(lengths), args.repeats)
    plan_seconds, plan = median_time(lambda: sampler.plan_epoch(table, seed=0), args.repeats)
    efficiency = plan.efficiency(lengths)
    cost = plan.batch_sizes * plan.max_length
    fixed = kernel.create(
        "sampler", {"name": "fixed", "batch_size": int(np.median(plan.batch_sizes))}
    )
    fixed_seconds, fixed_plan = median_time(lambda: fixed.plan_epoch(table, seed=0), args.repeats)
    peak = peak_memory_of_planning(args.n, edges.tolist())

    print(f"token-budget batching, N={args.n:,}, budget {BUDGET}, edges {edges.tolist()}")
    print(f"(edges suggested by exact DP in {suggest_seconds:.2f}s, not timed below)\n")
    rows = [
        ["np.argsort (int64), the floor", f"{argsort_seconds:.3f}", "-", "1.00", ""],
        [
            "laden token_budget",
            f"{plan_seconds:.3f}",
            f"{efficiency:.4f}",
            f"{plan_seconds / argsort_seconds:.2f}",
            f"{len(plan):,} batches, max cost {int(cost.max())}, peak RSS {peak:.0f} MiB",
        ],
        [
            "laden fixed (random, same median size)",
            f"{fixed_seconds:.3f}",
            f"{fixed_plan.efficiency(lengths):.4f}",
            f"{fixed_seconds / argsort_seconds:.2f}",
            "what no bucketing costs",
        ],
    ]
    peer_lengths_ = lengths[: args.peer_n]
    for peer in (
        run_hf(peer_lengths_, int(np.median(plan.batch_sizes))),
        run_lazarus(peer_lengths_, edges),
    ):
        if peer is None:
            continue
        name, seconds, eff, note = peer
        ours, _ = median_time(
            lambda: sampler.plan_epoch(laden.LengthTable.from_lengths(peer_lengths_)), 1
        )
        rows.append(
            [
                f"{name} (N={args.peer_n:,})",
                f"{seconds:.3f}",
                f"{eff:.4f}",
                f"laden {seconds / ours:.1f}x faster",
                note,
            ]
        )
    print_table(["implementation", "seconds", "efficiency", "x argsort", "notes"], rows)
    ok = plan_seconds <= 3 * argsort_seconds and efficiency >= 0.95 and peak < 1024
    print(
        f"\ntargets (<= 3x argsort, efficiency >= 0.95, peak < 1 GiB): {'met' if ok else 'MISSED'}"
    )
    print(
        f"peers installed: transformers={'yes' if _has('transformers') else 'no'}, "
        f"chuk-lazarus={'yes' if _has('chuk_lazarus') else 'no'}"
    )


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
