"""Packing 1M lengths into 4096 (every packer), beside TRL when installed; collation cost.

    python benchmarks/bench_packer.py [--n 1000000] [--trl-n 100000]

Targets (issue 4): ``best_fit`` packs 1M lengths in at most 0.5 s, at an
efficiency at least TRL's ``pack_dataset(strategy="bfd")`` over the whole
dataset (0.9998 on 100k), and at least 20x faster than TRL on the same
lengths. Building ``cu_seqlens``/``position_ids`` costs O(tokens): the last
table shows collation throughput in tokens per second, beside a collator
that loops over segments in Python as most do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import median_time, peer_lengths, print_table

import laden
from laden.collate import BatchLayout, Ragged, collate


def run_trl(lengths: np.ndarray) -> tuple[float, float, int] | None:
    """TRL's best-fit decreasing over the whole dataset (one map batch)."""
    try:
        from datasets import Dataset, disable_progress_bars
        from trl import pack_dataset
    except Exception:
        return None
    disable_progress_bars()
    dataset = Dataset.from_dict({"input_ids": [[1] * int(n) for n in lengths]})
    seconds, packed = median_time(
        lambda: pack_dataset(
            dataset, 4096, strategy="bfd", map_kwargs={"batch_size": len(dataset)}
        ),
        1,
    )
    return seconds, float(lengths.sum()) / (len(packed) * 4096), len(packed)


def loop_collate(layout: BatchLayout, tokens: Ragged) -> dict[str, np.ndarray]:
    """What a typical collator does: one Python iteration per segment."""
    rows, width = layout.num_rows, layout.row_length
    input_ids = np.zeros((rows, width), dtype=np.int64)
    position_ids = np.zeros((rows, width), dtype=np.int64)
    labels = np.full((rows, width), -100, dtype=np.int64)
    fill = [0] * rows
    cu = [0]
    for sample, start, length, row in zip(
        layout.sample.tolist(),
        layout.start.tolist(),
        layout.length.tolist(),
        layout.row.tolist(),
        strict=True,
    ):
        piece = tokens[sample][start : start + length]
        at = fill[row]
        input_ids[row, at : at + length] = piece
        position_ids[row, at : at + length] = np.arange(length)
        labels[row, at + 1 : at + length] = piece[1:]
        fill[row] += length
        cu.append(cu[-1] + length)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--trl-n", type=int, default=100_000, help="lengths given to TRL too")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    kernel = laden.Kernel(autoload=False)
    lengths = peer_lengths(args.n)
    table = laden.LengthTable.from_lengths(lengths)
    bound = -(-int(lengths.sum()) // 4096)
    rows = []
    plans = {}
    for name in ("best_fit", "first_fit", "sequential"):
        packer = kernel.create("packer", {"name": name, "max_length": 4096})
        seconds, plan = median_time(lambda packer=packer: packer.pack(table), args.repeats)
        plans[name] = (seconds, plan)
        rows.append([f"laden {name}", f"{seconds:.3f}", f"{plan.efficiency:.6f}", f"{len(plan):,}"])
    rows.append(
        [
            "lower bound ceil(tokens / 4096)",
            "-",
            f"{lengths.sum() / (bound * 4096):.6f}",
            f"{bound:,}",
        ]
    )
    print(f"packing N={args.n:,} lengths into rows of 4096\n")
    print_table(["implementation", "seconds", "efficiency", "rows"], rows)
    best_seconds = plans["best_fit"][0]

    small = lengths[: args.trl_n]
    trl = run_trl(small)
    if trl is None:
        print("\nTRL not installed: pip install trl to compare")
    else:
        packer = kernel.create("packer", {"name": "best_fit", "max_length": 4096})
        small_table = laden.LengthTable.from_lengths(small)
        seconds, plan = median_time(lambda: packer.pack(small_table), args.repeats)
        print(f"\nbeside TRL on the first {small.size:,} lengths (whole dataset at once)\n")
        print_table(
            ["implementation", "seconds", "efficiency", "rows"],
            [
                ["laden best_fit", f"{seconds:.4f}", f"{plan.efficiency:.6f}", f"{len(plan):,}"],
                ["TRL pack_dataset bfd", f"{trl[0]:.3f}", f"{trl[1]:.6f}", f"{trl[2]:,}"],
            ],
        )
        print(f"laden is {trl[0] / seconds:.0f}x faster (target >= 20x)")

    # Collation: batches of 4 packed rows of 4096 drawn across the whole (shuffled) plan,
    # for the peer lengths and for short chat-style samples (many segments per row).
    collate_rows = []
    for label, sample_lengths in (
        ("peer lengths", lengths[:200_000]),
        ("short samples (median 55)", peer_lengths(400_000, seed=1) // 5 + 1),
    ):
        packed = kernel.create(
            "packer", {"name": "best_fit", "max_length": 4096, "shuffle": True}
        ).pack(laden.LengthTable.from_lengths(sample_lengths))
        tokens = Ragged(
            values=np.random.default_rng(0).integers(0, 50_000, int(sample_lengths.sum())),
            offsets=np.concatenate([[0], np.cumsum(sample_lengths)]),
        )
        layouts = [
            BatchLayout.packed(packed, np.arange(r, r + 4))
            for r in range(0, min(len(packed) - 4, 2_000), 4)
        ]
        total = sum(layout.num_tokens for layout in layouts)
        per_row = sum(layout.sample.size for layout in layouts) / (4 * len(layouts))
        vector, _ = median_time(
            lambda layouts=layouts, tokens=tokens: [collate(x, tokens) for x in layouts],
            args.repeats,
        )
        loop, _ = median_time(
            lambda layouts=layouts, tokens=tokens: [loop_collate(x, tokens) for x in layouts], 1
        )
        for name, seconds in (("laden collate, all columns", vector), ("Python loop", loop)):
            collate_rows.append(
                [
                    f"{label}: {name}",
                    f"{per_row:.1f}",
                    f"{1e3 * seconds / len(layouts):.2f}",
                    f"{total / seconds / 1e6:.1f}",
                ]
            )
    print("\ncollating batches of 4 packed rows of 4096 (the loop builds only 3 columns)\n")
    print_table(["case", "segments/row", "ms / batch", "M tokens / s"], collate_rows)
    print(f"\ntarget best_fit <= 0.5 s for 1M: {'met' if best_seconds <= 0.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
