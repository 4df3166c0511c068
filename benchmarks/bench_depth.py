"""Depth buckets: batches per second through a DataLoader, laden beside the seed's approach.

The seed (CompressedAD, ``shared/seeds/002_*``) holds one dict per sample,
groups indices by depth in a Python ``BucketSampler`` and pads each stage in
``collate_compressed_batch`` (a loop per sample and stage), with
``num_workers=0``. It is reimplemented here from that description. laden
reads the same samples from a staged HDF5 file (``staged_h5``, csr layout,
memory-mapped), plans them with ``depth_buckets`` and collates each batch in
one gather per field (:func:`laden.collate.collate_staged`) behind
``laden.torch.PlanLoader``, with 0 and 2 worker processes.

Synthetic data: depths 0-3 (1-4 stages), 20-60 steps per stage, 16 state
features, ``actions [T]`` and ``rewards [T]``.

Each loader's first pass is reported apart (spawned workers import torch
before their first batch); the steady rate is the median over rounds of one
pass per loader in turn, with persistent workers. On a machine with fewer
free cores than workers + 1, 2 workers cannot beat 0: the rate then shows
the cost of moving batches between processes, not of making them.

    python benchmarks/bench_depth.py [--n 20000] [--batch-size 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import median_time, print_table


def make_samples(n: int, seed: int = 0, features: int = 16) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        steps = rng.integers(20, 61, int(rng.integers(0, 4)) + 1)
        samples.append(
            {
                "states": [rng.random((t, features), dtype=np.float32) for t in steps],
                "actions": [rng.integers(0, 5, t) for t in steps],
                "rewards": [rng.random(t, dtype=np.float32) for t in steps],
            }
        )
    return samples


# ------------------------------------------------------------ the seed's approach


class SeedDataset:
    """One dict per sample, as the seed's dataset keeps them."""

    def __init__(self, samples: list[dict[str, Any]]) -> None:
        self.samples = [
            {
                "compression_depth": len(s["states"]) - 1,
                "num_compression_stages": len(s["states"]),
                "compression_stages": [
                    {"states": st, "actions": ac, "rewards": rw}
                    for st, ac, rw in zip(s["states"], s["actions"], s["rewards"], strict=True)
                ],
            }
            for s in samples
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]


class BucketSampler:
    """Groups samples by compression depth; shuffles within and across buckets."""

    def __init__(self, dataset: SeedDataset, batch_size: int, shuffle: bool = True) -> None:
        self.buckets: dict[int, list[int]] = defaultdict(list)
        for idx, sample in enumerate(dataset.samples):
            self.buckets[sample["compression_depth"]].append(idx)
        self.batch_size, self.shuffle = batch_size, shuffle

    def __iter__(self) -> Any:
        batches = []
        for indices in self.buckets.values():
            indices = list(indices)
            if self.shuffle:
                random.shuffle(indices)
            for i in range(0, len(indices), self.batch_size):
                batches.append(indices[i : i + self.batch_size])
        if self.shuffle:
            random.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        return sum(-(-len(b) // self.batch_size) for b in self.buckets.values())


def collate_compressed_batch(batch: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    num_stages = batch[0]["num_compression_stages"]
    assert all(item["num_compression_stages"] == num_stages for item in batch)
    stages = []
    for s in range(num_stages):
        max_len = max(item["compression_stages"][s]["states"].shape[0] for item in batch)
        out: dict[str, Any] = {}
        for key in ("states", "actions", "rewards"):
            padded = []
            for item in batch:
                x = torch.as_tensor(item["compression_stages"][s][key])
                pad = torch.zeros((max_len - x.shape[0], *x.shape[1:]), dtype=x.dtype)
                padded.append(torch.cat([x, pad]))
            out[key] = torch.stack(padded)
        mask = torch.zeros(len(batch), max_len, dtype=torch.bool)
        for b, item in enumerate(batch):
            mask[b, : item["compression_stages"][s]["states"].shape[0]] = True
        out["mask"] = mask
        stages.append(out)
    return {"num_compression_stages": num_stages, "compression_stages": stages}


def seed_loader(dataset: SeedDataset, batch_size: int) -> Any:
    from torch.utils.data import DataLoader

    random.seed(0)
    sampler = BucketSampler(dataset, batch_size)
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=0, collate_fn=collate_compressed_batch
    )


# ------------------------------------------------------------ laden


def laden_loader(plan: Any, path: str, table: Any, workers: int) -> Any:
    """Workers persist across passes: start-up is paid once, as in a training run."""
    from laden.contrib.staged_h5 import StagedH5Source, StagedSamples
    from laden.torch import PlanDataset, PlanLoader

    dataset = PlanDataset.for_plan(plan, StagedSamples(StagedH5Source(path=path)), table)
    return PlanLoader(
        plan,
        dataset,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        persistent_workers=bool(workers),
    )


def first_batch(loader: Any) -> tuple[float, float]:
    """``(seconds to the first batch, batches/s of the rest)`` of a first pass."""
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter()
    rest = sum(1 for _ in it)
    return first - start, rest / max(time.perf_counter() - first, 1e-9)


def one_pass(loader: Any) -> float:
    """Batches/s of one whole pass."""
    start = time.perf_counter()
    n = sum(1 for _ in loader)
    return n / max(time.perf_counter() - start, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from laden.contrib.depth_buckets import DepthBucketSampler
    from laden.contrib.staged_h5 import StagedH5Source, write_staged_h5
    from laden.plan import BatchPlan

    samples = make_samples(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = write_staged_h5(Path(tmp) / "staged.h5", samples)
        written = time.perf_counter() - start
        start = time.perf_counter()
        table = StagedH5Source(path=path).length_table()
        measured = time.perf_counter() - start
        sampler = DepthBucketSampler(batch_size=args.batch_size)
        planned, plan = median_time(lambda: BatchPlan.build(table, sampler, epochs=1, seed=0))
        seed = "seed: BucketSampler + collate_compressed_batch, 0 workers"
        loaders = {seed: seed_loader(SeedDataset(samples), args.batch_size)}
        for workers in (0, 2):
            label = f"laden: depth_buckets + staged_h5 + PlanLoader, {workers} workers"
            loaders[label] = laden_loader(plan, path, table, workers)
        # The first pass of each: start-up (spawned workers import torch) and warm-up.
        firsts = {label: first_batch(loader) for label, loader in loaders.items()}
        # Then rounds of one pass each, all loaders in turn, so a noisy neighbour
        # slows them alike: medians of the rates and of the per-round ratios.
        rates: dict[str, list[float]] = {label: [] for label in loaders}
        for _ in range(args.rounds):
            for label, loader in loaders.items():
                rates[label].append(one_pass(loader))
        rows = []
        for label, values in rates.items():
            ratio = statistics.median(v / b for v, b in zip(values, rates[seed], strict=True))
            rows.append(
                [
                    label,
                    len(loaders[label]),
                    f"{firsts[label][0] * 1e3:,.0f}",
                    f"{firsts[label][1]:,.0f}",
                    f"{statistics.median(values):,.0f}",
                    f"{ratio:.2f}x",
                ]
            )
        del loaders  # stops the persistent workers
    load = os.getloadavg()[0]
    print(
        f"{args.n:,} samples, batch size {args.batch_size}; write {written:.2f} s, "
        f"measure {measured * 1e3:.1f} ms, plan {planned * 1e3:.1f} ms; medians of "
        f"{args.rounds} rounds; load {load:.2f} on {os.cpu_count()} CPUs"
    )
    print_table(
        [
            "loader",
            "batches",
            "first batch ms",
            "first pass b/s",
            "batches/s (steady)",
            "vs seed",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
