"""``laden.hf.pack_dataset`` beside TRL's ``pack_dataset`` on 1M rows (extra ``datasets``).

Both pack the ``input_ids`` (``list<int32>``, as a tokenized ``datasets``
column) of one in-memory ``datasets.Dataset`` (lengths of PEERS.md's recipe,
0.1% of rows over-long so truncation shows) into rows of ``max_length``.
laden and TRL ``bfd`` run in turns, ``rounds`` times (default 3), so the load
of the machine falls on both alike (laden also with ``num_threads=1``, as
TRL runs in one thread); TRL ``bfd_split`` runs once. Printed per
packer: the median wall time and CPU time (user + system of this process,
less sensitive to other processes), its first call, the ratios to laden's
medians with ``num_threads=1``, rows out, efficiency, tokens lost; then whether the schemas agree
where they overlap, and ``/proc/loadavg`` before and after. Last, the
``hf_dataset`` source reading the lengths of the saved dataset.
Run: ``python benchmarks/bench_hf.py [rows] [max_length] [rounds]``.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).parent))
from common import median_time, peer_lengths, print_table


def make_dataset(n: int, max_length: int) -> tuple[Any, int]:
    import datasets

    lengths = peer_lengths(n)
    lengths[:: max(n // 1000, 1)] = max_length + 1000  # ~0.1% over-long: TRL bfd truncates them
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.random.default_rng(1).integers(0, 32_000, int(offsets[-1]), dtype=np.int32)
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    return datasets.Dataset(pa.table({"input_ids": column})), int(lengths.sum())


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """``(wall s, CPU s, result)`` of one call."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def kept_tokens(packed: Any) -> int:
    return int(pc.sum(pc.list_value_length(packed.data.column("input_ids"))).as_py())


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    max_length = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    import datasets

    from laden.hf import pack_dataset

    datasets.disable_progress_bars()
    try:
        from trl import pack_dataset as trl_pack
    except ImportError:
        trl_pack = None
        print("(trl is not installed: pip install trl to compare)")
    dataset, tokens = make_dataset(n, max_length)
    load_before = loadavg()
    runs: dict[str, list[tuple[float, float]]] = {}
    shape: dict[str, tuple[int, int, Any]] = {}
    report: dict[str, Any] = {}

    def run(name: str, fn: Callable[[], Any]) -> None:
        wall, cpu, packed = timed(fn)
        runs.setdefault(name, []).append((wall, cpu))
        shape[name] = (len(packed), kept_tokens(packed), packed.features)
        del packed

    candidates: list[tuple[str, Callable[[], Any]]] = [
        ("laden.hf.pack_dataset bfd", lambda: pack_dataset(dataset, max_length, report=report)),
        (
            "laden.hf.pack_dataset bfd, 1 thread",
            lambda: pack_dataset(dataset, max_length, num_threads=1),
        ),
    ]
    if trl_pack is not None:
        candidates.append(("TRL pack_dataset bfd", lambda: trl_pack(dataset, max_length, "bfd")))
    for _ in range(rounds):  # in turns, so the machine's load falls on both alike
        for name, fn in candidates:
            run(name, fn)
    if trl_pack is not None:  # once: TRL is slow
        run("TRL pack_dataset bfd_split", lambda: trl_pack(dataset, max_length, "bfd_split"))

    laden_name = candidates[1][0]  # the conservative reference: one thread, as TRL
    laden_wall = statistics.median(w for w, _ in runs[laden_name])
    laden_cpu = statistics.median(c for _, c in runs[laden_name])
    rows = []
    for name, times in runs.items():
        wall = statistics.median(w for w, _ in times)
        cpu = statistics.median(c for _, c in times)
        out_rows, kept, _ = shape[name]
        rows.append(
            [
                name,
                len(times),
                f"{wall:.2f}",
                f"{cpu:.2f}",
                f"{times[0][0]:.2f}",
                f"{wall / laden_wall:.1f}x",
                f"{cpu / laden_cpu:.1f}x",
                f"{out_rows:,}",
                f"{kept / (out_rows * max_length):.4f}",
                f"{tokens - kept:,}",
            ]
        )
    print(f"{n:,} rows, {tokens:,} tokens, max_length {max_length}, {os.cpu_count()} CPUs")
    print_table(
        [
            "packer",
            "runs",
            "wall s",
            "cpu s",
            "first wall s",
            "wall / laden 1 thread",
            "cpu / laden 1 thread",
            "rows",
            "efficiency",
            "tokens lost",
        ],
        rows,
    )
    print(f"load average: {load_before} before, {loadavg()} after")
    if trl_pack is not None:
        trl_wall = statistics.median(w for w, _ in runs["TRL pack_dataset bfd"])
        speedups = ", ".join(
            f"{name}: {trl_wall / statistics.median(w for w, _ in runs[name]):.1f}x"
            for name, _ in candidates[:2]
        )
        print(f"TRL bfd wall / laden wall (medians): {speedups}")
    if trl_pack is not None:
        ours, theirs = shape[candidates[0][0]][2], shape["TRL pack_dataset bfd"][2]
        same = all(ours[k] == theirs[k] for k in theirs)
        print(
            f"schema: TRL {dict(theirs)}; laden adds "
            f"{sorted(set(ours) - set(theirs))}; equal where they overlap: {same}"
        )

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
