"""The torch grid env (``GridEnvTorch``, env ``grid_torch``) and torch-native envs in the runner."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from laden.contrib.grid_env import GridConfig, GridEnv, GridEnvTorch, make_torch, oracle_policy
from laden.errors import ConfigError
from laden.stream.envs import EnvRunner, EnvStepError, env_keys
from laden.testing import check_env

torch = pytest.importorskip("torch")

AUTORESETS = ["same_step", "pool", "next_step", "disabled"]


def _bytes(x: Any) -> tuple[str, tuple[int, ...], bytes]:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return str(array.dtype), array.shape, array.tobytes()


def test_check_env_on_the_torch_grid() -> None:
    check_env(make_torch)


class TensorOnlyGrid:
    """The torch grid taking torch tensors only, as many torch-native envs do."""

    backend = "torch"

    def __init__(self, in_place: bool = False) -> None:
        self.inner = GridEnvTorch()
        self.spec = self.inner.spec
        self.in_place = in_place

    def reset(self, keys: Any) -> Any:
        return self.inner.reset(keys)

    def step(self, state: Any, action: Any) -> Any:
        if not isinstance(action, torch.Tensor):
            raise TypeError(f"actions must be a torch.Tensor, got {type(action).__name__}")
        out = self.inner.step(state, action)
        if self.in_place:  # a bug check_env must catch: the input state changes
            state["grid"].copy_(out[0]["grid"])
        return out


def test_check_env_takes_a_torch_env_as_the_runner_calls_it() -> None:
    """Actions go in as tensors (through the runner's TorchBoundary), outputs are compared
    on the host; a torch env that writes into its input state is still caught."""
    check_env(TensorOnlyGrid)
    with pytest.raises(AssertionError, match="step changed its input state"):
        check_env(lambda: TensorOnlyGrid(in_place=True))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 12),
    height=st.integers(1, 5),
    width=st.integers(1, 5),
    colors=st.integers(2, 9),
    limit=st.integers(1, 6),
)
def test_torch_grid_steps_byte_identically_to_numpy(
    seed: int, n: int, height: int, width: int, colors: int, limit: int
) -> None:
    config = GridConfig(height=height, width=width, colors=colors, noise=1, max_episode_steps=limit)
    a, b = GridEnv(config), GridEnvTorch(config)
    keys = env_keys(seed, np.arange(n), "test")
    state_a, obs_a = a.reset(keys)
    state_b, obs_b = b.reset(keys)
    assert isinstance(obs_b, torch.Tensor)
    assert _bytes(obs_a) == _bytes(obs_b)
    rng = np.random.default_rng(seed)
    for _ in range(8):
        action = rng.integers(0, config.cells * colors, n).astype(np.int32)
        out_a = a.step(state_a, action)
        out_b = b.step(state_b, torch.from_numpy(action))
        for x, y in zip(out_a[1:], out_b[1:], strict=True):
            assert _bytes(x) == _bytes(y)
        for key in state_a:
            assert _bytes(out_a[0][key]) == _bytes(out_b[0][key]), key
        state_a, state_b = out_a[0], out_b[0]


def test_torch_grid_from_numpy_grids_matches() -> None:
    a, b = GridEnv(), GridEnvTorch()
    target, working = a.initial_grids(env_keys(3, np.arange(4), "x"))
    state_a, _ = a.initial_state(target, working)
    state_b, _ = b.initial_state(torch.from_numpy(target), torch.from_numpy(working))
    for key in state_a:
        assert _bytes(state_a[key]) == _bytes(state_b[key])
    assert _bytes(b.from_numpy_state(state_a)["grid"]) == _bytes(state_b["grid"])


@pytest.mark.parametrize("autoreset", AUTORESETS)
@pytest.mark.parametrize("policy", ["random", oracle_policy])
def test_runner_rollouts_of_the_torch_grid_match_the_numpy_grid(
    autoreset: str, policy: Any
) -> None:
    a = EnvRunner(
        GridEnv(max_episode_steps=5), num_envs=7, seed=9, autoreset=autoreset, policy=policy
    )
    b = EnvRunner(
        GridEnvTorch(max_episode_steps=5), num_envs=7, seed=9, autoreset=autoreset, policy=policy
    )
    for steps in (6, 1, 11):
        ra, rb = a.rollout(steps), b.rollout(steps)
        assert ra.columns.keys() == rb.columns.keys()
        for key in ra.columns:
            assert _bytes(ra.columns[key]) == _bytes(rb.columns[key]), key
        for key in ra.episodes:
            assert _bytes(ra.episodes[key]) == _bytes(rb.episodes[key]), key
        assert _bytes(ra.last_obs) == _bytes(rb.last_obs)
    assert ra.summary()["episodes"] > 0
    # the env's state stays torch inside the runner
    assert all(isinstance(v, torch.Tensor) for v in b.state.values())


def test_env_batch_source_runs_grid_torch_into_torch_columns(kernel: Any) -> None:
    def chunks(env: str, array_backend: str) -> list[dict[str, Any]]:
        source = kernel.create(
            "source",
            {
                "name": "env_batch",
                "env": env,
                "num_envs": 4,
                "seed": 5,
                "rollout_len": 6,
                "max_steps": 18,
                "autoreset": "same_step",
                "array_backend": array_backend,
                "env_options": {"max_episode_steps": 4},
            },
        )
        return list(source.chunks())

    torch_chunks = chunks("grid_torch", "torch")
    numpy_chunks = chunks("grid", "numpy")
    assert len(torch_chunks) == len(numpy_chunks) == 3
    for got, want in zip(torch_chunks, numpy_chunks, strict=True):
        assert isinstance(got["obs"], torch.Tensor)
        assert isinstance(got["last_obs"], torch.Tensor)
        for key, column in want.items():
            if key != "episodes":
                assert _bytes(got[key]) == _bytes(column), key


def test_a_resumed_torch_run_continues_the_same_streams() -> None:
    whole = EnvRunner(GridEnvTorch(max_episode_steps=4), num_envs=5, seed=1, autoreset="same_step")
    first = EnvRunner(GridEnvTorch(max_episode_steps=4), num_envs=5, seed=1, autoreset="same_step")
    whole.rollout(7)
    first.rollout(7)
    saved = first.state_dict()
    resumed = EnvRunner(
        GridEnvTorch(max_episode_steps=4), num_envs=5, seed=1, autoreset="same_step"
    )
    resumed.load_state_dict(saved)
    want, got = whole.rollout(9), resumed.rollout(9)
    for key in want.columns:
        assert _bytes(want.columns[key]) == _bytes(got.columns[key]), key


def test_torch_grid_refuses_bad_actions() -> None:
    env = GridEnvTorch()
    state, _ = env.reset(env_keys(0, np.arange(3), "x"))
    with pytest.raises(EnvStepError, match=r"actions must have shape \(3,\)"):
        env.step(state, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(EnvStepError, match="must be integers"):
        env.step(state, torch.zeros(3, dtype=torch.float32))
    with pytest.raises(EnvStepError, match=r"env 1: grid: action 144 is outside \[0, 144\)"):
        env.step(state, torch.tensor([0, 144, 2]))
    with pytest.raises(EnvStepError, match=r"env 2: grid: action -1 is outside"):
        env.step(state, np.array([0, 1, -1]))


class ResetWhereGrid(GridEnvTorch):
    """A torch env that resets envs itself (as wrappers of stateful envs do)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.masks: list[np.ndarray] = []

    def reset_where(self, state: Any, mask: np.ndarray, keys: np.ndarray) -> tuple[Any, Any]:
        self.masks.append(np.array(mask))
        return self.reset(keys)  # every env afresh: the test only looks at the calls


def test_a_torch_env_with_its_own_reset_where_is_reset_through_it() -> None:
    env = ResetWhereGrid(max_episode_steps=3)
    runner = EnvRunner(env, num_envs=4, seed=0, autoreset="same_step")
    runner.rollout(10)
    assert env.masks  # episodes of 3 steps ended: every reset went through reset_where
    assert all(mask.dtype == np.bool_ and mask.shape == (4,) for mask in env.masks)
    with pytest.raises(ConfigError, match="'pool' needs a functional env"):
        EnvRunner(ResetWhereGrid(), num_envs=4, seed=0, autoreset="pool")
