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

    python benchmarks/bench_depth.py [--n 20000] [--batch-size 32]
"""

from __future__ import annotations

import argparse
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


def seed_epoch(dataset: SeedDataset, batch_size: int) -> tuple[int, float, float]:
    from torch.utils.data import DataLoader

    random.seed(0)
    sampler = BucketSampler(dataset, batch_size)
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=0, collate_fn=collate_compressed_batch
    )
    return _steady(loader)


# ------------------------------------------------------------ laden


def laden_epoch(plan: Any, path: str, table: Any, workers: int) -> tuple[int, float, float]:
    from laden.contrib.staged_h5 import StagedH5Source, StagedSamples
    from laden.torch import PlanDataset, PlanLoader

    dataset = PlanDataset.for_plan(plan, StagedSamples(StagedH5Source(path=path)), table)
    loader = PlanLoader(plan, dataset, num_workers=workers, prefetch_factor=4 if workers else None)
    return _steady(loader)


def _steady(loader: Any) -> tuple[int, float, float]:
    """``(batches, seconds to the first batch, batches/s after it)``: worker start-up apart."""
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter()
    rest = sum(1 for _ in it)
    return rest + 1, first - start, rest / max(time.perf_counter() - first, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
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
        seed_dataset = SeedDataset(samples)
        rows = []
        runs = [
            (
                "seed: BucketSampler + collate_compressed_batch, 0 workers",
                lambda: seed_epoch(seed_dataset, args.batch_size),
            )
        ]
        for workers in (0, 2):
            runs.append(
                (
                    f"laden: depth_buckets + staged_h5 + PlanLoader, {workers} workers",
                    lambda w=workers: laden_epoch(plan, path, table, w),
                )
            )
        seed_rate = 0.0
        for label, run in runs:
            results = [run() for _ in range(args.repeats)]
            batches = results[0][0]
            startup = statistics.median(r[1] for r in results)
            rate = statistics.median(r[2] for r in results)
            seed_rate = seed_rate or rate
            rows.append(
                [
                    label,
                    batches,
                    f"{startup * 1e3:,.0f}",
                    f"{rate:,.0f}",
                    f"{rate / seed_rate:.2f}x",
                ]
            )
    print(
        f"{args.n:,} samples, batch size {args.batch_size}; write {written:.2f} s, "
        f"measure {measured * 1e3:.1f} ms, plan {planned * 1e3:.1f} ms (medians of "
        f"{args.repeats})"
    )
    print_table(["loader", "batches", "first batch ms", "batches/s after", "vs seed"], rows)


if __name__ == "__main__":
    main()
