"""Best-fit decreasing packing of 1M lengths into 4096, beside TRL when installed.

    python benchmarks/bench_packer.py [--n 1000000]

Target (issue 4): at most 0.5 s for 1M lengths, efficiency at least TRL's
``pack_dataset(strategy="bfd")`` over the whole dataset (0.9998 on 100k).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import median_time, peer_lengths, print_table

import laden


def run_trl(lengths: np.ndarray) -> tuple[float, float] | None:
    try:
        from datasets import Dataset
        from trl import pack_dataset
    except Exception:
        return None
    dataset = Dataset.from_dict({"input_ids": [[1] * int(n) for n in lengths]})
    seconds, packed = median_time(
        lambda: pack_dataset(
            dataset, 4096, strategy="bfd", map_kwargs={"batch_size": len(dataset)}
        ),
        1,
    )
    return seconds, float(lengths.sum()) / (len(packed) * 4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lengths = peer_lengths(args.n)
    table = laden.LengthTable.from_lengths(lengths)
    packer = laden.Kernel(autoload=False).create("packer", {"name": "best_fit", "max_length": 4096})
    seconds, plan = median_time(lambda: packer.pack(table), args.repeats)
    bound = -(-int(lengths.sum()) // 4096)
    rows = [
        ["laden best_fit", f"{seconds:.3f}", f"{plan.efficiency:.6f}", f"{len(plan):,}"],
        [
            "lower bound ceil(tokens / 4096)",
            "-",
            f"{lengths.sum() / (bound * 4096):.6f}",
            f"{bound:,}",
        ],
    ]
    trl = run_trl(lengths)
    if trl is not None:
        rows.append(
            [
                "TRL pack_dataset bfd (whole dataset)",
                f"{trl[0]:.3f}",
                f"{trl[1]:.6f}",
                f"laden {trl[0] / seconds:.1f}x faster",
            ]
        )
    print(f"packing N={args.n:,} lengths into rows of 4096\n")
    print_table(["implementation", "seconds", "efficiency", "rows"], rows)
    print(
        f"\ntarget (<= 0.5 s for 1M): {'met' if seconds <= 0.5 else 'MISSED'}"
        + ("" if trl else "; TRL not installed")
    )


if __name__ == "__main__":
    main()
