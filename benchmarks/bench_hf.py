"""``laden.hf.pack_dataset`` beside TRL's ``pack_dataset`` on 1M rows (extra ``datasets``).

Both pack the ``input_ids`` of a ``datasets.Dataset`` (lengths of
PEERS.md's recipe, a few over-long rows added so truncation shows) into rows
of ``max_length``. Printed: time (median of 3), rows out, efficiency and tokens
lost, plus the ``hf_dataset`` source reading the lengths of a saved dataset.
Run: ``python benchmarks/bench_hf.py [rows] [max_length]``.
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

from benchmarks.common import median_time, peer_lengths, print_table


def make_dataset(n: int, max_length: int) -> object:
    import datasets

    lengths = peer_lengths(n)
    lengths[:: max(n // 1000, 1)] = max_length + 1000  # ~0.1% over-long: TRL bfd truncates them
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.random.default_rng(1).integers(0, 32_000, int(offsets[-1]), dtype=np.int32)
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    return datasets.Dataset(pa.table({"input_ids": column})), int(lengths.sum())


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    max_length = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    from laden.hf import pack_dataset

    dataset, tokens = make_dataset(n, max_length)
    rows = []
    report: dict[str, object] = {}
    seconds, out = median_time(lambda: pack_dataset(dataset, max_length, report=report))
    laden_time = seconds
    rows.append(
        [
            "laden.hf.pack_dataset bfd",
            f"{seconds:.2f}",
            "1.0x",
            len(out),
            f"{report['efficiency']:.4f}",
            f"{tokens - int(report['tokens_out']):,}",
        ]
    )
    try:
        import datasets
        from trl import pack_dataset as trl_pack
    except ImportError:
        print("(trl is not installed: pip install trl to compare)")
    else:
        datasets.disable_progress_bars()
        for strategy in ("bfd", "bfd_split"):
            # one run each: TRL is slow
            start = time.perf_counter()
            packed = trl_pack(dataset, max_length, strategy)
            seconds = time.perf_counter() - start
            kept = int(
                pa.compute.sum(
                    pa.compute.list_value_length(packed.data.column("input_ids"))
                ).as_py()
            )
            rows.append(
                [
                    f"TRL pack_dataset {strategy}",
                    f"{seconds:.2f}",
                    f"{seconds / laden_time:.1f}x",
                    len(packed),
                    f"{kept / (len(packed) * max_length):.4f}",
                    f"{tokens - kept:,}",
                ]
            )
    print(f"{n:,} rows, {tokens:,} tokens, max_length {max_length}")
    print_table(["packer", "seconds", "vs laden", "rows", "efficiency", "tokens lost"], rows)

    from laden.plugins.sources.hf_dataset import HFDatasetSource

    with tempfile.TemporaryDirectory() as tmp:
        dataset.save_to_disk(tmp)
        source = HFDatasetSource(path=tmp)
        seconds, table = median_time(source.lengths)
        print(
            f"\nhf_dataset source: lengths of {len(table.length):,} saved rows in {seconds:.3f} s"
        )


if __name__ == "__main__":
    main()
