"""``check_env``: the conformance check every batched env (ours or a third party's) must pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from laden.stream.envs.base import EnvSpec, tree_map, tree_take

__all__ = ["check_env"]


def _host(tree: Any) -> Any:
    """Host numpy copies of a pytree's leaves (torch tensors on any device too)."""
    from laden.stream.envs.runner import _host as host_of

    return tree_map(lambda leaf: np.array(host_of(leaf)), tree)


def _same(a: Any, b: Any, what: str) -> None:
    def compare(x: Any, y: Any) -> None:
        assert x.dtype == y.dtype, f"{what}: {x.dtype} vs {y.dtype}"
        assert x.shape == y.shape, f"{what}: shape {x.shape} vs {y.shape}"
        assert x.tobytes() == y.tobytes(), f"{what}: values differ"

    tree_map(compare, _host(a), _host(b))


def check_env(
    factory: Callable[..., Any],
    *,
    backend: str = "numpy",
    num_envs: int = 6,
    seed: int = 0,
    steps: int = 24,
    functional: bool | None = None,
) -> None:
    """Check that ``factory(num_envs=..., backend=...)`` makes a conforming batched env.

    Checked: the spec; ``reset`` gives ``[N, *obs_shape]`` observations of the
    spec's dtype, the same bytes for the same keys, and env ``i``'s result from
    its key alone (resetting the first ``k`` keys gives the first ``k`` rows);
    ``step`` gives ``reward`` ``[N]`` float, ``terminated``/``truncated`` ``[N]``
    bool, does not change its input state, and (for functional envs) gives the
    same result twice and the same rows when stepping a subset of the envs; a
    rollout with the runner is byte-identical on a rerun and env ``i``'s columns
    do not change with ``num_envs``; actions of the wrong shape are refused.

    A torch-native env (``backend = "torch"``: state and outputs torch tensors,
    on any device) is called as the runner calls it (through
    :class:`~laden.stream.envs.runner.TorchBoundary`): actions go in as torch
    tensors, and what it returns is compared on the host.

    :param factory: the env factory (the keywords it takes among ``num_envs``, ``backend``).
    :param backend: ``numpy`` (also torch envs) or ``jax``.
    :param functional: the state is arrays (default: the env has no ``reset_where``).
    """
    from laden.stream.envs.make import make_env, make_runner
    from laden.stream.envs.runner import POLICY, RESET, TorchBoundary, random_policy

    array_backend = "jax" if backend == "jax" else "numpy"
    made = make_env(factory, num_envs=num_envs, array_backend=array_backend)
    env: Any = TorchBoundary(made) if getattr(made, "backend", "numpy") == "torch" else made
    spec = env.spec
    assert isinstance(spec, EnvSpec), f"env.spec is {type(spec).__name__}, not EnvSpec"
    if functional is None:
        functional = not hasattr(made, "reset_where")
    if backend == "jax":
        from laden.stream.envs.jaxrun import jax_env_keys, jax_random_policy

        keys = jax_env_keys(seed, np.arange(num_envs), RESET)
        policy_keys = jax_env_keys(seed, np.arange(num_envs), POLICY)
        policy: Callable[..., Any] = jax_random_policy
    else:
        from laden.stream.envs.base import env_keys

        keys = env_keys(seed, np.arange(num_envs), RESET)
        policy_keys = env_keys(seed, np.arange(num_envs), POLICY)
        policy = random_policy

    state, obs = env.reset(keys)
    obs_np = _host(obs)
    assert obs_np.shape == (num_envs, *spec.obs_shape), f"reset obs shape {obs_np.shape}"
    assert obs_np.dtype == spec.obs_dtype, f"reset obs dtype {obs_np.dtype}, spec {spec.obs_dtype}"
    if functional:
        again = env.reset(keys)
        _same(again, (state, obs), "reset twice with the same keys")
        k = max(1, num_envs // 2)
        part = env.reset(keys[:k])
        _same(part[1], obs_np[:k], "reset of the first k keys vs the first k rows")

    action = policy(obs, policy_keys, spec)
    before = _host(state) if functional else None
    out = env.step(state, action)
    assert len(out) == 5, "step must return (state, obs, reward, terminated, truncated)"
    new_state, new_obs, reward, term, trunc = (_host(x) if i else x for i, x in enumerate(out))
    assert np.shape(new_obs) == (num_envs, *spec.obs_shape), f"step obs shape {np.shape(new_obs)}"
    assert reward.shape == (num_envs,), f"reward shape {reward.shape}"
    assert reward.dtype.kind == "f", f"reward dtype {reward.dtype}"
    for name, flags in (("terminated", term), ("truncated", trunc)):
        assert flags.shape == (num_envs,), f"{name} shape {flags.shape}"
        assert flags.dtype == np.bool_, f"{name} dtype {flags.dtype}"
    if functional:
        _same(state, before, "step changed its input state")
        _same(env.step(state, action)[1:], (new_obs, reward, term, trunc), "step twice")
        k = max(1, num_envs // 2)
        sub = env.step(tree_take(state, slice(0, k)), action[:k])
        _same(sub[1], new_obs[:k], "step of a subset vs the same rows")

    try:
        wrong = np.zeros((num_envs + 1, *spec.action_shape), dtype=spec.action_dtype)
        env.step(state if functional else new_state, wrong)
    except Exception:
        pass
    else:
        raise AssertionError("step accepted actions with the wrong number of rows")

    def rollout(n: int) -> Any:
        runner = make_runner(
            make_env(factory, num_envs=n, array_backend=array_backend),
            num_envs=n,
            seed=seed,
            autoreset="same_step",
        )
        return runner.rollout(steps)

    first, rerun = rollout(num_envs), rollout(num_envs)
    for key, column in first.columns.items():
        _same(column, rerun.columns[key], f"rollout rerun: {key}")
    fewer = rollout(max(1, num_envs // 2))
    k = fewer.num_envs
    for key, column in fewer.columns.items():
        _same(column, _host(first.columns[key])[:, :k], f"env i's {key} vs num_envs")
