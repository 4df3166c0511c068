# ruff: noqa: E402  (BLAS thread settings must precede importing numpy)
"""The chunked ``local`` executor against ``ProcessPoolExecutor.map``; ``ray`` against ``local``.

Run: ``python benchmarks/bench_executor.py [--ray]``. The Ray part starts Ray,
so run it only inside a network namespace with only loopback up:

    unshare --net --map-root-user bash -c \
        'ip link set lo up && python benchmarks/bench_executor.py --ray'

Medians of 3; ratios are measured in the same run. Rows:

- 10,000 tiny tasks: whole map (pool start included) and after the first result;
- 1,000,000 rows in 4,096-row batches, a numpy pass per batch;
- a ~20 ms numpy task per item: 1 worker vs 2 workers (and ray with 2 CPUs).
"""

from __future__ import annotations

import os

# One BLAS thread per worker, as Ray sets for its workers: the worker count is the parallelism.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from laden.plugins.executors.local import LocalExecutor

ROWS = 1_000_000
BATCH = 4096


def tiny(i: int) -> int:
    return i + 1


def batch_work(batch: np.ndarray) -> float:
    return float(np.sort(np.sqrt(batch.astype(np.float64) + 1.0)).sum())


def twenty_ms(seed: int) -> float:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((220, 220))
    deadline = time.perf_counter() + 0.02
    total = 0.0
    while time.perf_counter() < deadline:  # ~20 ms of numpy work whatever the machine
        total += float((a @ a).sum())
    return total


def timed(run: Callable[[], Iterable[Any]]) -> tuple[float, float]:
    """(whole seconds, seconds after the first result)."""
    started = time.perf_counter()
    it = iter(run())
    next(it)
    first = time.perf_counter()
    for _ in it:
        pass
    end = time.perf_counter()
    return end - started, end - first


def median(run: Callable[[], Iterable[Any]], repeats: int = 3) -> tuple[float, float]:
    times = [timed(run) for _ in range(repeats)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def pool_map(fn: Callable[[Any], Any], items: Any, workers: int, chunksize: int) -> Iterable[Any]:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
        yield from pool.map(fn, items, chunksize=chunksize)


def row(name: str, whole: float, after: float, ratio: str = "") -> None:
    print(f"| {name} | {whole:.3f} | {after:.3f} | {ratio} |")


def main() -> None:
    use_ray = "--ray" in sys.argv
    print("| case | seconds (whole) | seconds (after first result) | ratio |")
    print("|---|---|---|---|")
    n = 10_000
    peer = median(lambda: pool_map(tiny, range(n), 2, 100))
    ours = median(lambda: LocalExecutor(workers=2).map(tiny, range(n)))
    unchunked = median(lambda: LocalExecutor(workers=2, chunksize=1).map(tiny, range(n)), 1)
    row("10k tiny: ProcessPool map(chunksize=100), 2 workers, spawn", *peer)
    row(
        "10k tiny: laden local auto, 2 workers", *ours, f"{ours[1] / peer[1]:.2f}x peer after start"
    )
    row("10k tiny: laden local chunksize=1 (no chunking)", *unchunked)

    rows = np.random.default_rng(0).integers(1, 4096, ROWS)
    batches = [rows[i : i + BATCH] for i in range(0, ROWS, BATCH)]
    peer = median(lambda: pool_map(batch_work, batches, 2, 1))
    ours = median(lambda: LocalExecutor(workers=2).map(batch_work, batches))
    row("1M rows / 4096-row batches: ProcessPool map, 2 workers", *peer)
    row("1M rows / 4096-row batches: laden local auto", *ours, f"{ours[0] / peer[0]:.2f}x peer")

    items = list(range(100))
    one = median(lambda: LocalExecutor(workers=1).map(twenty_ms, items))
    two = median(lambda: LocalExecutor(workers=2).map(twenty_ms, items))
    row("100 x 20 ms: laden local, 1 worker", *one)
    row("100 x 20 ms: laden local, 2 workers", *two, f"{one[1] / two[1]:.2f}x speed-up")
    if use_ray:
        import ray

        from laden.plugins.executors.ray import RayExecutor

        with open("/proc/net/dev") as devices:
            names = [line.split(":")[0].strip() for line in devices.readlines()[2:]]
        assert names == ["lo"], f"run the Ray part in a loopback-only namespace, not {names}"
        started = time.perf_counter()
        ray.init(**RayExecutor(num_cpus=2).init_settings())
        print(f"| ray.init (local cluster, 2 CPUs) | {time.perf_counter() - started:.3f} | | |")
        try:
            ray_tiny = median(lambda: RayExecutor().map(tiny, range(n)))
            row("10k tiny: ray auto, 2 CPUs (cluster up)", *ray_tiny)
            ray_two = median(lambda: RayExecutor().map(twenty_ms, items))
            row(
                "100 x 20 ms: ray, 2 CPUs (cluster up)",
                *ray_two,
                f"{two[1] / ray_two[1]:.2f}x local 2 workers",
            )
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
