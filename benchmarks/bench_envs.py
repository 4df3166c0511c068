"""The bundled grid env at 256 envs: laden (numpy, JAX scan) beside a bare loop and gymnasium.

    python benchmarks/bench_envs.py [--num-envs 256] [--steps 200] [--rounds 15]
                                    [--no-jax] [--no-torch] [--no-gym]

Every row steps the same rules (``laden.contrib.grid_env``: 6x6 grids, 4
colors, episodes truncated at 48 steps) under a uniform random policy:

- laden numpy / JAX scan: the rollout runner with autoreset ``same_step``,
  recording every ``[T, N, ...]`` column (observations included), episode ids,
  step indices and statistics, with and without ``final_obs`` (the terminal
  observations of reset envs, a second observation column; the bare loop does
  not record them); ``pool`` (resets gathered from 64 precomputed states) and
  ``no resets`` (episodes never end) beside it;
- laden torch: the same runner over ``GridEnvTorch`` on the CPU (the env's
  state in torch tensors, the columns recorded on the host), ``same_step``,
  one torch thread;
- bare numpy loop: the same rules written inline with ``GridEnv.step``'s
  arithmetic (flat grids, per-action lookup tables, a new grid array per
  step), one ``default_rng`` for the actions and resets (the env's draws:
  target colors, noisy cells, shifts), recording obs/action/reward/
  terminated/truncated as ``[T, N, ...]`` arrays and resetting done envs
  within the step: a hand-written rollout collector without laden, so the
  ratio measures what laden adds, not a different step;
- gymnasium ``SyncVectorEnv`` of ``num_envs`` single grid envs (extra gym).

The numpy and torch rows take turns for ``--rounds`` rounds (see
:func:`side_by_side`) and report medians of wall time (env-steps/s, vs bare)
and of this process's CPU time (vs bare (cpu): steadier when other jobs load
the machine); the load average is printed before and after.

Targets (issue 13): >= 600k env-steps/s with numpy and JAX scan, >= 10x
gymnasium, within 15% of the bare loop; ``pool`` <= 1.5x the no-reset cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import median_time, print_table

from laden.contrib.grid_env import GridConfig, GridEnv
from laden.stream.envs import EnvRunner

NEVER = 10**9


def laden_numpy(
    n: int, steps: int, autoreset: str, limit: int, final_obs: bool = True
) -> Callable[[], Any]:
    """One rollout chunk of the runner (warmed up), as the timed call."""
    env = GridEnv(max_episode_steps=limit)
    runner = EnvRunner(env, num_envs=n, seed=0, autoreset=autoreset, final_obs=final_obs)
    runner.rollout(steps)  # warm up
    return lambda: runner.rollout(steps)


def laden_torch(n: int, steps: int, limit: int) -> Callable[[], Any]:
    """One rollout chunk of the runner over the torch grid env (warmed up).

    One torch thread: a step's tensors are a few KB, and on the 2 shared cores
    torch's intra-op threads only spin against the numpy rows (4x slower).
    """
    import torch

    from laden.contrib.grid_env import GridEnvTorch

    torch.set_num_threads(1)

    runner = EnvRunner(
        GridEnvTorch(max_episode_steps=limit), num_envs=n, seed=0, autoreset="same_step"
    )
    runner.rollout(steps)
    return lambda: runner.rollout(steps)


def side_by_side(
    calls: dict[str, Callable[[], Any]], rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU seconds per call, the calls taking turns round after round
    (the order rotated each round), so a load change on the shared machine hits
    every row alike. The CPU time (this process's) is what the load of other
    processes disturbs least.

    Each turn is one untimed call, then two timed ones: the first call after
    another row's settles the allocator (freed chunk memory handed back to the
    system and faulted in again, which on this VM costs more than a rollout step),
    so every row is timed in its own steady state, as a run of one config is.
    """
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            calls[name]()
            for _ in range(2):
                began, began_cpu = time.perf_counter(), time.process_time()
                calls[name]()
                cpu[name].append(time.process_time() - began_cpu)
                wall[name].append(time.perf_counter() - began)
    return (
        {k: statistics.median(v) for k, v in wall.items()},
        {k: statistics.median(v) for k, v in cpu.items()},
    )


def laden_jax(n: int, steps: int, autoreset: str, limit: int) -> tuple[float, float]:
    from laden.contrib.grid_env import GridEnvJax
    from laden.stream.envs.jaxrun import JaxRunner

    runner = JaxRunner(GridEnvJax(max_episode_steps=limit), num_envs=n, autoreset=autoreset)
    began = time.perf_counter()
    runner.rollout(steps)
    first = time.perf_counter() - began
    seconds, _ = median_time(lambda: runner.rollout(steps))
    return n * steps / seconds, first - seconds


def bare_numpy(n: int, steps: int) -> Callable[[], None]:
    """The grid rules written inline, with :meth:`GridEnv.step`'s arithmetic: no laden.

    The same step as the env's: the grids flat (``[N * 2 * cells]`` int8), the
    painted cell and color from lookup tables per action, a new grid array per
    step, the match count updated by the int8 delta, the reward divided in
    float32. One ``default_rng`` draws the chunk's actions up front and the
    resets (target colors, noisy cells, shifts: the env's draws); ``obs``,
    ``action``, ``reward``, ``terminated`` and ``truncated`` are recorded as
    ``[T, N, ...]`` arrays, and done envs are reset within the step. No
    episode ids, step indices, final observations, statistics, per-env keys or
    input checks.
    """
    c = GridConfig()
    cells, colors, limit = c.cells, c.colors, c.max_episode_steps
    high = cells * colors
    rng = np.random.default_rng(0)
    cell_of = (np.arange(high) // colors).astype(np.intp)
    color_of = (np.arange(high) % colors).astype(np.int8)
    offsets = np.arange(n, dtype=np.intp) * (2 * cells)
    scale = np.float32(cells)

    def fresh(k: int) -> np.ndarray:
        """``[k, 2 * cells]`` new grids: working, then target."""
        target = rng.integers(0, colors, (k, cells), dtype=np.int8)
        noisy = rng.integers(0, cells, (k, c.noise))
        shift = rng.integers(1, colors, (k, c.noise))
        rows = np.arange(k)[:, None]
        working = target.copy()
        working[rows, noisy] = (target[rows, noisy] + shift) % colors
        return np.concatenate([working, target], axis=1)

    grid = fresh(n)
    matches = (grid[:, :cells] == grid[:, cells:]).sum(1, dtype=np.int32)
    count = np.zeros(n, dtype=np.int32)

    def loop() -> None:
        nonlocal grid, matches, count
        obs_rec = np.empty((steps, n, 2, c.height, c.width), dtype=np.int8)
        rew_rec = np.empty((steps, n), dtype=np.float32)
        term_rec = np.empty((steps, n), dtype=bool)
        trunc_rec = np.empty((steps, n), dtype=bool)
        act_rec = rng.integers(0, high, (steps, n), dtype=np.int32)
        for s in range(steps):
            a = act_rec[s]
            obs_rec[s] = grid.reshape(n, 2, c.height, c.width)
            color = color_of[a]
            where = offsets + cell_of[a]
            grid = grid.copy()
            flat = grid.reshape(-1)
            old = flat[where]
            want = flat[where + cells]
            flat[where] = color
            delta = np.subtract(color == want, old == want, dtype=np.int8)
            matches = matches + delta
            count = count + 1
            rew_rec[s] = delta.astype(np.float32) / scale
            term = matches == cells
            trunc = (count >= limit) > term
            term_rec[s], trunc_rec[s] = term, trunc
            done = term | trunc
            if done.any():
                envs = np.flatnonzero(done)
                new = fresh(envs.size)
                grid[envs] = new
                matches[envs] = (new[:, :cells] == new[:, cells:]).sum(1, dtype=np.int32)
                count[envs] = 0

    return loop


def gymnasium_sync(n: int, steps: int) -> float:
    import gymnasium as gym

    from laden.contrib.gym_adapter import grid_gym_env

    vec = gym.vector.SyncVectorEnv([grid_gym_env for _ in range(n)])
    vec.reset(seed=0)
    rng = np.random.default_rng(0)
    high = GridConfig().cells * GridConfig().colors

    def loop() -> None:
        for _ in range(steps):
            vec.step(rng.integers(0, high, n))

    seconds, _ = median_time(loop)
    vec.close()
    return n * steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--no-gym", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--rounds", type=int, default=15, help="turns of the numpy rows")
    args = parser.parse_args()
    n, steps, limit = args.num_envs, args.steps, GridConfig().max_episode_steps
    print("load before:", Path("/proc/loadavg").read_text().strip())
    bare = "bare numpy loop (same_step resets)"
    calls = {
        bare: bare_numpy(n, steps),
        "laden numpy, same_step": laden_numpy(n, steps, "same_step", limit),
        "laden numpy, same_step, no final_obs": laden_numpy(
            n, steps, "same_step", limit, final_obs=False
        ),
        "laden numpy, pool": laden_numpy(n, steps, "pool", limit, final_obs=False),
        "laden numpy, no resets": laden_numpy(n, steps, "same_step", NEVER, final_obs=False),
    }
    if not args.no_torch:
        try:
            calls["laden torch (GridEnvTorch, cpu), same_step"] = laden_torch(n, steps, limit)
        except ImportError:
            print("torch not installed: skipping the torch row")
    wall, cpu = side_by_side(calls, args.rounds)
    rates: dict[str, Any] = {k: n * steps / v for k, v in wall.items()}
    compile_s = {}
    if not args.no_jax:
        try:
            import jax  # noqa: F401
        except ImportError:
            print("jax not installed: skipping the JAX rows")
        else:
            for label, mode, lim in (
                ("laden JAX scan, same_step", "same_step", limit),
                ("laden JAX scan, pool", "pool", limit),
                ("laden JAX scan, no resets", "same_step", NEVER),
            ):
                rates[label], compile_s[label] = laden_jax(n, steps, mode, lim)
    gym_rate = None
    if not args.no_gym:
        try:
            gym_rate = gymnasium_sync(n, max(steps // 10, 10))
            rates["gymnasium SyncVectorEnv"] = gym_rate
        except ImportError:
            print("gymnasium not installed: skipping its row")
    print("load after:", Path("/proc/loadavg").read_text().strip())
    bare_rate = rates[bare]
    rows = []
    for label, value in rates.items():
        rows.append(
            [
                label,
                f"{value:,.0f}",
                f"{value / bare_rate:.2f}",
                f"{cpu[bare] / cpu[label]:.2f}" if label in cpu else "-",
                f"{value / gym_rate:.1f}x" if gym_rate else "-",
                f"{compile_s[label]:.1f}" if label in compile_s else "-",
            ]
        )
    print(f"grid env, {n} envs, {steps} steps per rollout, random policy")
    headers = ["implementation", "env-steps/s", "vs bare", "vs bare (cpu)", "vs gymnasium"]
    print_table([*headers, "compile s"], rows)
    print()
    for family in ("laden numpy", "laden JAX scan"):
        if f"{family}, pool" in rates:
            cost = rates[f"{family}, no resets"] / rates[f"{family}, pool"]
            print(f"{family}: pool costs {cost:.2f}x the no-reset step (target <= 1.5x)")


if __name__ == "__main__":
    main()
