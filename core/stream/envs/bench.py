"""Throughput, memory per env and compile time per batch size, and the best batch size.

What JaxARC's ``find_optimal_batch_size`` and ``analyze_memory_usage`` do,
for any batched env laden can make, through the same runner as a real run
(policy, autoreset and recording included).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from laden.analysis import pyplot, save_png
from laden.stream.envs.base import tree_nbytes
from laden.stream.envs.make import make_env, make_runner

__all__ = ["bench_env", "plot_bench"]


def _state_bytes(runner: Any) -> int:
    carry = getattr(runner, "carry", None)
    if carry is not None:  # JaxRunner: (state, obs, ...)
        return tree_nbytes(carry[0]) + tree_nbytes(carry[1])
    return tree_nbytes(runner.state) + tree_nbytes(runner.obs)


def bench_env(
    env: str | Callable[..., Any] = "grid",
    *,
    num_envs: Sequence[int] = (1, 16, 256, 4096),
    steps: int = 200,
    repeats: int = 3,
    array_backend: str = "numpy",
    autoreset: str = "same_step",
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    scan: bool = True,
) -> dict[str, Any]:
    """Measure each batch size; the report's ``best_num_envs`` has the most env-steps/s.

    Per batch size: ``env_steps_per_s`` (median of ``repeats`` rollouts of
    ``steps`` steps after a first, warm-up one), ``compile_s`` (the first
    rollout's extra time: JIT compilation on JAX), ``state_bytes_per_env`` (env
    state + observation) and ``rollout_bytes_per_env_step`` (what recording
    costs). A batch size that fails (out of memory) is reported with its error
    and ends the sweep.
    """
    rows: list[dict[str, Any]] = []
    for n in num_envs:
        try:
            runner = make_runner(
                make_env(env, num_envs=n, array_backend=array_backend, options=options),
                num_envs=n,
                seed=seed,
                autoreset=autoreset,
                scan=scan,
            )
            began = time.perf_counter()
            first = runner.rollout(steps)
            first_s = time.perf_counter() - began
            times = []
            for _ in range(repeats):
                began = time.perf_counter()
                runner.rollout(steps)
                times.append(time.perf_counter() - began)
        except MemoryError as exc:
            rows.append({"num_envs": n, "error": f"{type(exc).__name__}: {exc}"})
            break
        median = sorted(times)[len(times) // 2]
        recorded = sum(tree_nbytes(v) for v in first.columns.values())
        rows.append(
            {
                "num_envs": n,
                "env_steps_per_s": n * steps / median,
                "step_ms": 1000 * median / steps,
                "compile_s": max(0.0, first_s - median),
                "state_bytes_per_env": _state_bytes(runner) / n,
                "rollout_bytes_per_env_step": recorded / (n * steps),
            }
        )
    measured = [r for r in rows if "error" not in r]
    best = max(measured, key=lambda r: r["env_steps_per_s"])["num_envs"] if measured else None
    return {
        "env": env if isinstance(env, str) else getattr(env, "__qualname__", repr(env)),
        "array_backend": array_backend,
        "autoreset": autoreset,
        "steps": steps,
        "repeats": repeats,
        "rows": rows,
        "best_num_envs": best,
    }


def plot_bench(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """A PNG of env-steps/s and memory per env against the batch size. Needs matplotlib."""
    plt = pyplot()
    rows = [r for r in report["rows"] if "error" not in r]
    sizes = [r["num_envs"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    left.plot(sizes, [r["env_steps_per_s"] for r in rows], marker="o")
    left.set_ylabel("env-steps/s")
    right.plot(sizes, [r["state_bytes_per_env"] for r in rows], marker="o", color="#c44e52")
    right.set_ylabel("state + obs bytes per env")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("num_envs")
    fig.suptitle(
        f"{report['env']} ({report['array_backend']}): best num_envs {report['best_num_envs']}"
    )
    return save_png(fig, path)
