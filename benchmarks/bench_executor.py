# ruff: noqa: E402  (BLAS thread settings must precede importing numpy)
"""The chunked ``local`` executor against ``ProcessPoolExecutor.map``; ``ray`` against ``local``.

Run: ``python benchmarks/bench_executor.py [--ray] [--only-20ms]``. The Ray part starts Ray,
so run it only inside a network namespace with only loopback up:

    unshare --net --map-root-user bash -c \
        'ip link set lo up && python benchmarks/bench_executor.py --ray'

Medians of 3; ratios are measured in the same run. Rows:

- 10,000 tiny tasks: whole map (pool start included) and after the first result;
- 1,000,000 rows in 4,096-row batches, a numpy pass per batch;
- a ~20 ms numpy task per item (a fixed number of matrix products, sized to
  20 ms once before the runs): 1 worker vs 2 workers, alternated, medians of 5,
  with the parent's CPU time (what the pool costs the cores the workers need);
  with ``--ray``, ray with 2 CPUs alternated with local with 2 workers.

The load average is printed with the 20 ms rows: on a 2-core machine shared
with other jobs, 2 workers cannot reach 2x while the other jobs run.
"""

from __future__ import annotations

import os

# One BLAS thread per worker, as Ray sets for its workers: the worker count is the parallelism.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import functools
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from bench_write_parallel import children_cpu, machine_busy

from laden.plugins.executors.local import LocalExecutor

ROWS = 1_000_000
#: Runs of each 20 ms case, alternated; medians are reported.
REPEATS_20MS = 5
BATCH = 4096


def tiny(i: int) -> int:
    return i + 1


def batch_work(batch: np.ndarray) -> float:
    return float(np.sort(np.sqrt(batch.astype(np.float64) + 1.0)).sum())


def products(seed: int, repeats: int) -> float:
    """A fixed amount of numpy work: ``repeats`` products of a 220 x 220 matrix."""
    a = np.random.default_rng(seed).standard_normal((220, 220))
    total = 0.0
    for _ in range(repeats):
        total += float((a @ a).sum())
    return total


def repeats_for(seconds: float) -> int:
    """How many products take ``seconds`` here (fastest of 5 tries, so load does not
    shrink the work): every item then does the same work, whoever runs it and when."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        products(0, 10)
        best = min(best, (time.perf_counter() - started) / 10)
    return max(1, round(seconds / best))


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


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


def with_cpu(
    mapper: Callable[..., Iterable[Any]], fn: Callable[[Any], Any], items: list[Any]
) -> tuple[float, float, float, float]:
    """(whole seconds, seconds after the first result, this process's CPU seconds,
    the other jobs' CPU use meanwhile in cores: all of the machine's less ours)."""
    cpu, children, busy = time.process_time(), children_cpu(), machine_busy()
    whole, after = timed(lambda: mapper(fn, items))
    ours = time.process_time() - cpu
    others = machine_busy() - busy - ours - (children_cpu() - children)
    return whole, after, ours, max(0.0, others) / whole


def medians(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
    return tuple(statistics.median(column) for column in zip(*runs, strict=True))


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
    if "--only-20ms" not in sys.argv:
        peer = median(lambda: pool_map(tiny, range(n), 2, 100))
        ours = median(lambda: LocalExecutor(workers=2).map(tiny, range(n)))
        unchunked = median(lambda: LocalExecutor(workers=2, chunksize=1).map(tiny, range(n)), 1)
        row("10k tiny: ProcessPool map(chunksize=100), 2 workers, spawn", *peer)
        row(
            "10k tiny: laden local auto, 2 workers",
            *ours,
            f"{ours[1] / peer[1]:.2f}x peer after start",
        )
        row("10k tiny: laden local chunksize=1 (no chunking)", *unchunked)

        rows = np.random.default_rng(0).integers(1, 4096, ROWS)
        batches = [rows[i : i + BATCH] for i in range(0, ROWS, BATCH)]
        peer = median(lambda: pool_map(batch_work, batches, 2, 1))
        ours = median(lambda: LocalExecutor(workers=2).map(batch_work, batches))
        row("1M rows / 4096-row batches: ProcessPool map, 2 workers", *peer)
        row("1M rows / 4096-row batches: laden local auto", *ours, f"{ours[0] / peer[0]:.2f}x peer")

    items = list(range(100))
    twenty_ms = functools.partial(products, repeats=repeats_for(0.02))
    # Alternated, so both worker counts see the same moments of other jobs' load.
    runs: dict[int, list[tuple[float, float, float, float]]] = {1: [], 2: []}
    for _ in range(REPEATS_20MS):
        for workers in (1, 2):
            runs[workers].append(with_cpu(LocalExecutor(workers=workers).map, twenty_ms, items))
    one = medians(runs[1])
    two = medians(runs[2])
    row(
        f"100 x 20 ms: laden local, 1 worker (load {load()})",
        *one[:2],
        f"parent CPU {one[2]:.3f} s",
    )
    row(
        "100 x 20 ms: laden local, 2 workers",
        *two[:2],
        f"{one[1] / two[1]:.2f}x speed-up (whole: {one[0] / two[0]:.2f}x); "
        f"parent CPU {two[2]:.3f} s",
    )
    # Linux shares the CPUs per session: only a round where the other jobs were quiet
    # shows what 2 cores give. Each round: 1 worker, then 2, back to back.
    for r, (a, b) in enumerate(zip(runs[1], runs[2], strict=True)):
        print(
            f"| round {r + 1}: 1 worker {a[1]:.3f} s, 2 workers {b[1]:.3f} s "
            f"| | | {a[1] / b[1]:.2f}x; others' cores {a[3]:.2f} / {b[3]:.2f} |"
        )
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
            ray_runs, local_runs = [], []
            for _ in range(REPEATS_20MS):  # alternated with local, as above
                ray_runs.append(with_cpu(RayExecutor().map, twenty_ms, items))
                local_runs.append(with_cpu(LocalExecutor(workers=2).map, twenty_ms, items))
            ray_two, local_two = medians(ray_runs), medians(local_runs)
            for r, (a, b) in enumerate(zip(local_runs, ray_runs, strict=True)):
                print(
                    f"| round {r + 1}: local {a[1]:.3f} s, ray {b[1]:.3f} s | | "
                    f"| {a[1] / b[1]:.2f}x; others' cores {a[3]:.2f} during local "
                    "(during ray they include Ray's own workers) |"
                )
            row(f"100 x 20 ms: laden local, 2 workers (load {load()})", *local_two[:2])
            row(
                "100 x 20 ms: ray, 2 CPUs (cluster up)",
                *ray_two[:2],
                f"{local_two[1] / ray_two[1]:.2f}x local 2 workers (whole: "
                f"{local_two[0] / ray_two[0]:.2f}x, local starting its workers)",
            )
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
