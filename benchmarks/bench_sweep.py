"""Sweeps: a 1,000,000-point dry expansion and laden sweep's per-point overhead.

Peer: Hydra 1.3's basic sweeper, 0.23-0.33 s per job on this kind of machine
(PEERS.md; not installed here), with no resume, no dry run, failures only at
the end. Run: ``.venv/bin/python benchmarks/bench_sweep.py [--points 20000]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import laden
from laden.sweep import expand, parse_sweep, run_sweep
from tests import sweep_helpers

HYDRA_PER_JOB = (0.23, 0.33)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
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


if __name__ == "__main__":
    main()
