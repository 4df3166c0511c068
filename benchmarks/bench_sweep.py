"""Sweeps: a 1,000,000-point dry expansion and laden sweep's per-point overhead.

Peer: Hydra 1.3's basic sweeper, 0.23-0.33 s per job on this kind of machine
(PEERS.md; not installed here), with no resume, no dry run, failures only at
the end. Run: ``.venv/bin/python benchmarks/bench_sweep.py [--points 20000] [--slow-points 100]``.

Then ``--slow-points`` points of a builtin generator doing ~20 ms of numpy
work each, with 0, 1 and 2 local workers (alternated, medians of 3), with the
parent's and the workers' CPU seconds and the other jobs' CPU use.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import laden
from laden.sweep import expand, parse_sweep, run_sweep
from tests import sweep_helpers

HYDRA_PER_JOB = (0.23, 0.33)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--slow-points", type=int, default=100, help="points of ~20 ms each (0: skip)"
    )
    args = parser.parse_args()
    kernel = laden.Kernel(autoload=False)
    kernel.register(sweep_helpers, "sweep_helpers")

    big = parse_sweep(
        {
            "sweep": {
                "stimuli": [
                    {
                        "type": "gaussian",
                        "parameters": {"amplitude": list(range(100)), "sigma": list(range(100))},
                        "repetitions": 100,
                    }
                ]
            }
        },
        kernel=kernel,
    )
    times, full = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        points = expand(big)  # order, seeds; ids of the points shown
        shown = [points[i]["id"] for i in (0, 1, 2, len(points) - 1)]
        times.append(time.perf_counter() - t0)
        assert len(points.ids) == 1_000_000
        assert shown[0] == str(points.ids[0])
        full.append(time.perf_counter() - t0)
    assert len(points) == 1_000_000
    dry, every_id = sorted(times)[1], sorted(full)[1]

    side = int(args.points**0.5)
    spec = parse_sweep(
        {
            "sweep": {
                "points": [
                    {
                        "type": "instant",
                        "parameters": {
                            "i": list(range(side)),
                            "j": list(range(args.points // side)),
                        },
                    }
                ]
            },
            "output": {"writer": "npz", "points_per_file": 1000},
        },
        kernel=kernel,
    )
    rows = []
    for workers in (0, args.workers):
        runs = []
        for _ in range(3):
            out = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
            t0 = time.perf_counter()
            result = run_sweep(
                spec,
                kernel=kernel,
                output=out / "o",
                executor={"name": "local", "workers": workers},
                progress=False,
            )
            runs.append(time.perf_counter() - t0)
            shutil.rmtree(out)
            assert result.ok == spec.total
        rows.append((workers, sorted(runs)[1], spec.total))

    slow = slow_points(kernel, args.slow_points) if args.slow_points else None

    print("| what | laden | Hydra basic sweeper (PEERS.md) | ratio |")
    print("|---|---|---|---|")
    print(
        f"| dry run, 1,000,000 points (expand, seed, example ids) | {dry:.2f} s | no dry run | - |"
    )
    print(f"| the same plus all 1,000,000 ids as an array | {every_id:.2f} s | no dry run | - |")
    for workers, seconds, n in rows:
        per = seconds / n * 1000
        print(
            f"| per-point overhead, {n} points, local workers={workers} | {per:.3f} ms "
            f"| {HYDRA_PER_JOB[0] * 1000:.0f}-{HYDRA_PER_JOB[1] * 1000:.0f} ms "
            f"| {HYDRA_PER_JOB[0] * 1000 / per:.0f}x less |"
        )
    if slow is not None:
        print(
            f"\n{args.slow_points} points of moving_gaussian ({SLOW['grid_size']}^2 x "
            f"{SLOW['frames']} frames, ~{slow['ms']:.0f} ms and {slow['mb']:.2f} MB each here), "
            "local executor, alternated, medians of 3 (load before/after: "
            f"{slow['load']}):\n"
        )
        print("| workers | seconds | vs 1 worker | parent CPU s | workers CPU s | others' cores |")
        print("|---|---|---|---|---|---|")
        one = slow["rows"][1][0]
        for workers, (wall, parent, children, others) in slow["rows"].items():
            ratio = f"{one / wall:.2f}x" if workers else ""
            print(
                f"| {workers} | {wall:.2f} | {ratio} | {parent:.2f} | {children:.2f} "
                f"| {others:.2f} |"
            )


#: A builtin generator sized to ~20 ms of numpy work per point here (its output is large).
SLOW = {"grid_size": 96, "frames": 60}


def slow_points(kernel: laden.Kernel, n: int) -> dict[str, Any]:
    """``laden sweep`` of ``n`` slow points with 0, 1 and 2 workers: wall, our CPU, others'.

    The parent writes every part file and checksums it; with a generator whose
    output is large for its work, that share of the parent is what keeps 2
    workers from 2x (the ``parent CPU`` column)."""
    from bench_write_parallel import children_cpu, load, machine_busy

    generator = kernel.create("generator", "moving_gaussian")
    params = {**generator.parameters, **SLOW}
    generator.generate(params, 0)
    started = time.perf_counter()
    arrays = [generator.generate(params, seed) for seed in range(5)]
    ms = (time.perf_counter() - started) / 5 * 1000
    spec = parse_sweep(
        {
            "sweep": {
                "points": [
                    {
                        "type": "moving_gaussian",
                        "parameters": {
                            "velocity": [float(v) for v in range(n)],
                            **{k: [v] for k, v in SLOW.items()},
                        },
                    }
                ]
            },
            "output": {"writer": "npz", "points_per_file": 10},
        },
        kernel=kernel,
    )
    runs: dict[int, list[tuple[float, float, float, float]]] = {0: [], 1: [], 2: []}
    loads = [load()]
    for _ in range(3):
        for workers in runs:
            out = Path(tempfile.mkdtemp(prefix="bench-sweep-slow-"))
            cpu, children, busy = time.process_time(), children_cpu(), machine_busy()
            t0 = time.perf_counter()
            result = run_sweep(
                spec,
                kernel=kernel,
                output=out / "o",
                executor={"name": "local", "workers": workers},
                progress=False,
            )
            wall = time.perf_counter() - t0
            ours = (time.process_time() - cpu, children_cpu() - children)
            others = max(0.0, machine_busy() - busy - sum(ours)) / wall
            runs[workers].append((wall, *ours, others))
            shutil.rmtree(out)
            assert result.ok == n
    loads.append(load())
    return {
        "ms": ms,
        "mb": sum(v.nbytes for v in arrays[0].values()) / 2**20,
        "load": " | ".join(loads),
        "rows": {
            w: tuple(statistics.median(column) for column in zip(*r, strict=True))
            for w, r in runs.items()
        },
    }


if __name__ == "__main__":
    main()
