"""Time-series windows: planning 10M rows, reading batches of 64, and memory.

Side by side, in one run:

- planning every window of a 10,000,000-row x 13-feature float32 series
  (window 48, overlap 12) with ``timeseries`` (goal: under 1 s);
- reading collated batches of 64 random windows: laden's ``WindowDataset``
  beside raw ``np.lib.stride_tricks.sliding_window_view`` slicing of the
  memory map (goal: at least 0.8x) and beside a torch ``Dataset`` whose
  ``__getitem__`` slices one window, with the default collate (goal: 10x);
  ``WindowDataset.batches(threads=N)`` is laden's own loop with N threads
  collating ahead (the gather releases the GIL), beside the one-thread rows;
- the anonymous memory (RssAnon: not the file's pages) a pass of batches
  adds, for two file sizes, beside 2 x batch bytes x prefetch.

Run: ``python benchmarks/bench_timeseries.py [--rows 10000000] [--dir /tmp]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import print_table
from laden.contrib.timeseries import TimeseriesSource, WindowDataset, release
from laden.prefetch import ordered_prefetch

WINDOW, OVERLAP, FEATURES, BATCH = 48, 12, 13, 64


def rss_anon() -> int:
    """Bytes of this process's anonymous resident memory (file pages are not counted)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def make_file(path: Path, rows: int) -> None:
    """A float32 [rows, 13] .npy written in chunks (never whole in memory)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, FEATURES))
    rng = np.random.default_rng(0)
    step = 1 << 20
    for a in range(0, rows, step):
        k = min(step, rows - a)
        out[a : a + k] = rng.standard_normal((k, FEATURES), dtype=np.float32)
    out.flush()
    del out


def median(fn: Any, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def batches_of(n_windows: int, count: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_windows, BATCH) for _ in range(count)]


def read_rates(
    src: TimeseriesSource, count: int, rounds: int = 7, threads: tuple[int, ...] = (2,)
) -> list[list[Any]]:
    """Batches/s of laden (one thread, and ``threads``), raw slicing and a per-window
    torch Dataset, measured in rounds.

    Each round times all of them on the same batches one after the other, so a
    noisy neighbour slows them alike; the table gives the median rate of each
    and the median of the per-round ratios (this reader's speed / raw's, / torch's).
    """
    table = src.lengths()
    data = WindowDataset(src, table)
    picks = batches_of(len(table), count)
    starts = [table.offset[p] for p in picks]  # type: ignore[index]
    mm = np.load(src.path, mmap_mode="r")
    sw = np.lib.stride_tricks.sliding_window_view(mm, WINDOW, axis=0)  # [n, F, W]

    def ours() -> float:
        start = time.perf_counter()
        for p in picks:
            data.collate(p)
        return count / (time.perf_counter() - start)

    def raw() -> float:
        start = time.perf_counter()
        for s in starts:
            sw[s]  # [B, F, W]: the same bytes (not even made [B, W, F])
        return count / (time.perf_counter() - start)

    def ahead(n: int) -> Any:
        def run() -> float:
            start = time.perf_counter()
            for _batch in data.batches(picks, threads=n):
                pass
            return count / (time.perf_counter() - start)

        return run

    runs: dict[str, Any] = {
        "laden WindowDataset.collate": ours,
        **{f"laden WindowDataset.batches, {n} threads": ahead(n) for n in threads},
        "raw sliding_window_view[starts]": raw,
    }
    try:
        import torch
        from torch.utils.data import DataLoader, Dataset
    except ImportError:
        torch = None
    if torch is not None:

        class OneWindow(Dataset):  # type: ignore[type-arg]
            def __len__(self) -> int:
                return len(table)

            def __getitem__(self, i: int) -> Any:
                s = int(table.offset[i])  # type: ignore[index]
                return torch.from_numpy(np.array(mm[s : s + WINDOW]))

        few = max(count // 10, 5)  # the slow one reads a tenth of the batches
        loader = DataLoader(OneWindow(), batch_sampler=[p.tolist() for p in picks[:few]])

        def naive() -> float:
            start = time.perf_counter()
            for _batch in loader:
                pass
            return few / (time.perf_counter() - start)

        runs["torch Dataset (one window) + default collate"] = naive
    for fn in runs.values():  # warm the page cache and the maps for all
        fn()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            rates[name].append(fn())

    def ratio(values: list[float], name: str) -> str:
        if name not in rates:
            return "-"
        return f"{statistics.median(v / o for v, o in zip(values, rates[name], strict=True)):.2f}"

    rows = [
        [
            name,
            f"{statistics.median(values):,.0f}",
            ratio(values, "raw sliding_window_view[starts]"),
            ratio(values, "torch Dataset (one window) + default collate"),
        ]
        for name, values in rates.items()
    ]
    if torch is None:
        rows.append(
            ["torch Dataset, one window per __getitem__", "(torch not installed)", "-", "-"]
        )
    return rows


def memory_pass(src: TimeseriesSource, count: int, prefetch: int = 2) -> tuple[int, int]:
    """Peak RssAnon added while reading ``count`` batches through a prefetch of ``prefetch``."""
    table = src.lengths()
    data = WindowDataset(src, table)
    picks = batches_of(len(table), count, seed=2)
    base = rss_anon()
    peak = 0
    with ThreadPoolExecutor(1) as pool:
        work = ordered_prefetch(lambda p: pool.submit(data.collate, p), picks, ahead=prefetch)
        for i, (_, batch) in enumerate(work):
            peak = max(peak, rss_anon() - base)
            del batch
            if i % 256 == 255:
                release(data)
    batch_bytes = BATCH * WINDOW * FEATURES * 4
    return peak, batch_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--threads", type=int, nargs="*", default=[2], help="thread rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        big, small = root / "big.npy", root / "small.npy"
        make_file(big, args.rows)
        make_file(small, args.rows // 10)
        src = TimeseriesSource(path=str(big), window=WINDOW, overlap=OVERLAP)
        store = src.open()
        t_plan = median(lambda: src.lengths(store))
        n = len(src.lengths(store))
        print(
            f"\nplanning {args.rows:,} rows x {FEATURES} float32 (window {WINDOW}, overlap "
            f"{OVERLAP}): {n:,} windows"
        )
        print_table(
            ["step", "seconds (median of 3)", "goal"],
            [
                ["plan every window -> LengthTable", f"{t_plan:.3f}", "< 1 s"],
                ["plan only (plan_windows)", f"{median(lambda: src.windows(store)):.3f}", "-"],
            ],
        )
        print(
            f"\nreading batches of {BATCH} random windows ({args.batches} batches; medians "
            f"of 7 rounds; load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)"
        )
        print_table(
            ["reader", "batches/s", "speed / raw (goal >= 0.8)", "speed / torch (goal >= 10)"],
            read_rates(src, args.batches, threads=tuple(args.threads)),
        )
        print(f"load after: {Path('/proc/loadavg').read_text().strip()}")
        print("\nanonymous memory added by a pass (prefetch 2), by file size")
        rows = []
        for path in (small, big):
            s = TimeseriesSource(path=str(path), window=WINDOW, overlap=OVERLAP)
            peak, batch_bytes = memory_pass(s, args.batches)
            size = os.path.getsize(path)
            rows.append(
                [
                    f"{size / 2**20:,.0f} MiB file",
                    f"{peak / 2**20:.2f} MiB",
                    f"{2 * batch_bytes * 2 / 2**20:.2f} MiB + constant",
                ]
            )
        print_table(["file", "peak RssAnon added", "2 x batch bytes x prefetch"], rows)


if __name__ == "__main__":
    main()
