"""Vectorized envs: per-env keys, the rollout runner, autoreset, the env_batch source, bad input."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from laden.contrib.grid_env import GridEnv, make, oracle_policy
from laden.errors import ConfigError
from laden.stream import ReplayBuffer
from laden.stream.envs import EPISODE_STRIDE, EnvRunner, EnvSpec, EnvStepError, env_keys
from laden.testing import check_env

COLUMNS = ("obs", "action", "reward", "terminated", "truncated", "episode_id", "step_index")


def run(num_envs: int, seed: int, steps: int = 40, **settings: Any) -> Any:
    env = GridEnv(max_episode_steps=settings.pop("max_episode_steps", 48))
    return EnvRunner(env, num_envs=num_envs, seed=seed, **settings).rollout(steps)


# ------------------------------------------------------------------- keys


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    small=st.integers(1, 6),
    extra=st.integers(1, 20),
    autoreset=st.sampled_from(["next_step", "same_step", "pool", "disabled"]),
)
def test_env_i_stream_is_the_same_whatever_num_envs(
    seed: int, small: int, extra: int, autoreset: str
) -> None:
    a = run(small, seed, autoreset=autoreset, max_episode_steps=7)
    b = run(small + extra, seed, autoreset=autoreset, max_episode_steps=7)
    for key in (*COLUMNS, "active", "final_obs"):
        if autoreset == "disabled" and key not in ("obs", "action"):
            continue  # a batch episode ends when every env is done: it depends on the batch
        assert np.array_equal(a[key], b[key][:, :small]), key
    if autoreset != "disabled":
        assert np.array_equal(a["obs"], b["obs"][:, :small])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(1, 2**32), i=st.integers(0, 50))
def test_env_i_of_seed_s_never_equals_env_i_plus_1_of_seed_s_minus_1(seed: int, i: int) -> None:
    assert env_keys(seed, [i], "env.reset")[0] != env_keys(seed - 1, [i + 1], "env.reset")[0]
    a = EnvRunner(GridEnv(), num_envs=1, seed=seed, first_env=i).rollout(5)
    b = EnvRunner(GridEnv(), num_envs=1, seed=seed - 1, first_env=i + 1).rollout(5)
    assert not np.array_equal(a["obs"], b["obs"])
    assert not np.array_equal(a["action"], b["action"])


def test_first_env_runs_a_slice_of_the_same_streams() -> None:
    whole = run(8, 3)
    part = EnvRunner(GridEnv(), num_envs=3, seed=3, first_env=5).rollout(40)
    for key in COLUMNS:
        assert np.array_equal(part[key], whole[key][:, 5:8]), key


@pytest.mark.parametrize("array_backend", ["numpy", "torch", "jax"])
def test_byte_identical_across_runs(array_backend: str) -> None:
    if array_backend != "numpy":
        pytest.importorskip(array_backend)
    script = f"""
import hashlib, numpy as np, laden
k = laden.Kernel(autoload=False)
s = k.create("source", {{"name": "env_batch", "num_envs": 5, "seed": 11, "rollout_len": 12,
    "max_steps": 24, "autoreset": "same_step", "array_backend": "{array_backend}",
    "env_options": {{"max_episode_steps": 5}}}})
h = hashlib.sha256()
for chunk in s.chunks():
    for key in sorted(k for k in chunk if k != "episodes"):
        h.update(key.encode()); h.update(np.ascontiguousarray(np.asarray(chunk[key])).tobytes())
    for key in sorted(chunk["episodes"]):
        h.update(chunk["episodes"][key].tobytes())
print(h.hexdigest())
"""
    runs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # side by side: each run compiles on its own
    outs = [p.communicate()[0] for p in runs]
    assert all(p.returncode == 0 for p in runs)
    assert outs[0] == outs[1]
    assert len(outs[0]) == 65


# ------------------------------------------------------------------- autoreset


def test_next_step_resets_at_the_step_after_done() -> None:
    r = run(4, 0, steps=30, policy=oracle_policy, autoreset="next_step")
    done = r["terminated"] | r["truncated"]
    t, i = np.nonzero(done[:-1])
    assert t.size
    assert not r["active"][t + 1, i].any()
    assert (r["reward"][t + 1, i] == 0).all()
    assert (r["episode_id"][t + 2, i] == r["episode_id"][t, i] + 1).all() or t.max() + 2 >= 30
    assert (r["step_index"][t + 2, i] == 0).all()
    assert r["terminated"].any()
    assert r.summary()["completion_rate"] == 1.0


def test_same_step_records_the_final_observation() -> None:
    r = run(4, 1, steps=30, policy=oracle_policy, autoreset="same_step")
    assert r["active"].all()
    t, i = np.nonzero(r["terminated"])
    final = r["final_obs"][t, i]
    assert (final[:, 0] == final[:, 1]).all()  # the terminal grid matches its target
    after = r["obs"][t[t < 29] + 1, i[t < 29]]
    assert (after[:, 0] != after[:, 1]).any(axis=(1, 2)).all()  # a fresh episode
    assert (r["step_index"][t[t < 29] + 1, i[t < 29]] == 0).all()
    transitions = r.transitions()
    assert transitions["next_obs"].shape == transitions["obs"].shape
    ended = transitions["terminated"]
    nxt = transitions["next_obs"][ended]
    assert (nxt[:, 0] == nxt[:, 1]).all()


def test_pool_takes_resets_from_the_pool() -> None:
    env = GridEnv()
    runner = EnvRunner(env, num_envs=6, seed=2, policy=oracle_policy, autoreset="pool",
                       reset_pool_size=5)  # fmt: skip
    r = runner.rollout(30)
    assert runner.pool is not None
    pool_obs = runner.pool[1]
    t, i = np.nonzero(r["terminated"][:-1])
    for obs in r["obs"][t + 1, i]:
        assert any(np.array_equal(obs, p) for p in pool_obs)


def test_disabled_masks_done_envs_until_all_are_done() -> None:
    r = run(5, 4, steps=60, autoreset="disabled", max_episode_steps=9)
    active = r["active"]
    # an env inactive at t stays inactive until the batch resets, then all are active
    for t in range(1, 60):
        if active[t].all():
            continue
        assert not (active[t] & ~active[t - 1]).any()
    assert r.summary()["episodes"] >= 5
    lengths = r.episodes["length"]
    assert (lengths <= 9).all()


def test_episode_statistics() -> None:
    r = run(8, 5, steps=50, policy=oracle_policy, autoreset="same_step")
    s = r.summary()
    assert s["completion_rate"] == 1.0
    assert s["mean_length"] <= 3
    assert np.allclose(s["mean_return"], r.episodes["return"].mean())
    ids = r.episodes["episode_id"]
    assert len(set(ids.tolist())) == ids.size
    assert ((ids // EPISODE_STRIDE) == r.episodes["env"]).all()


# ------------------------------------------------------------------- numpy vs JAX


def test_numpy_and_jax_grids_step_identically() -> None:
    pytest.importorskip("jax")
    import jax.numpy as jnp

    from laden.contrib.grid_env import GridEnvJax

    np_env, jax_env = GridEnv(), GridEnvJax()
    state, obs = np_env.reset(env_keys(9, np.arange(32), "env.reset"))
    jstate = jax_env.from_numpy_state(state)
    rng = np.random.default_rng(0)
    for _ in range(40):
        action = rng.integers(0, np_env.spec.action_high, 32).astype(np.int32)
        if rng.random() < 0.5:
            action = oracle_policy(obs, None, np_env.spec)
        state, *out = np_env.step(state, action)
        jstate, *jout = jax_env.step(jstate, jnp.asarray(action))
        obs = out[0]
        for a, b in zip(out, jout, strict=True):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype
            assert a.tobytes() == b.tobytes()


def test_jax_runner_keys_and_modes() -> None:
    pytest.importorskip("jax")
    from laden.contrib.grid_env import GridEnvJax
    from laden.stream.envs.jaxrun import JaxRunner

    env = GridEnvJax(max_episode_steps=6)
    a = JaxRunner(env, num_envs=3, seed=7, autoreset="pool", reset_pool_size=4).rollout(16)
    b = JaxRunner(env, num_envs=5, seed=7, autoreset="pool", reset_pool_size=4).rollout(16)
    for key in COLUMNS:
        assert np.array_equal(a[key], b[key][:, :3]), key
    assert (a.episodes["length"] == 6).all()
    assert a.summary()["episodes"] == 6
    t, i = np.nonzero(a["truncated"][:-1])
    assert (a["step_index"][t + 1, i] == 0).all()
    assert a["active"].all()


# ------------------------------------------------------------------- into laden


def test_source_samples_fill_a_replay_buffer(kernel: Any) -> None:
    source = kernel.create(
        "source", {"name": "env_batch", "num_envs": 4, "rollout_len": 10, "max_steps": 30}
    )
    buffer = ReplayBuffer(capacity=1000, seed=0)
    for sample in source:
        buffer.add(sample)
    assert (
        buffer.stats()["size"] == 4 * 30
    )  # next_step: reset steps are not transitions... none yet
    first = next(iter(source))
    assert first["loss_mask"].sum() == 1
    assert first["input_ids"].size == 2 * 6 * 6 + 1


def test_trajectory_slices_never_cross_an_episode_boundary() -> None:
    r = run(6, 8, steps=40, policy=oracle_policy, autoreset="same_step")
    width = 2 * 6 * 6 + 1
    count = 0
    for sample in r.samples("trajectory", slice_len=4):
        env, t0 = divmod(sample["sample_id"], EPISODE_STRIDE)
        n = sample["input_ids"].size // width
        assert 1 <= n <= 4
        assert (r["episode_id"][t0 : t0 + n, env] == sample["episode_id"]).all()
        assert r["step_index"][t0, env] == sample["step_index"]
        count += n
    assert count == r["active"].sum()


def test_array_backends_convert_the_columns() -> None:
    torch = pytest.importorskip("torch")
    r = run(3, 0, steps=4).to("torch")
    assert isinstance(r["obs"], torch.Tensor)
    assert r["obs"].shape == (4, 3, 2, 6, 6)


def test_jax_backend_passes_check_backend() -> None:
    pytest.importorskip("jax")
    from laden.plugins.backends.jax import JaxBackend
    from laden.testing import check_backend

    check_backend(JaxBackend, max_examples=15)


def test_check_env_on_the_bundled_envs() -> None:
    check_env(make)
    pytest.importorskip("gymnasium")
    from laden.contrib import gym_adapter

    check_env(lambda num_envs: gym_adapter.make(env_id="CartPole-v1", num_envs=num_envs))


def test_check_env_on_puzzle_games() -> None:
    pytest.importorskip("chuk_puzzles_gym")
    from laden.contrib import puzzle_env

    check_env(lambda num_envs: puzzle_env.make(num_envs=num_envs, game="binary"), steps=6)


def test_gym_adapter_seeds_per_env_not_seed_plus_i() -> None:
    pytest.importorskip("gymnasium")
    from laden.contrib import gym_adapter

    def first_obs(seed: int, num_envs: int) -> np.ndarray:
        env = gym_adapter.make(env_id="CartPole-v1", num_envs=num_envs)
        return np.asarray(EnvRunner(env, num_envs=num_envs, seed=seed).rollout(1)["obs"][0])

    s42, s41 = first_obs(42, 3), first_obs(41, 3)
    assert not np.array_equal(s42[0], s41[1])  # gymnasium's seed + i would make these equal
    assert np.array_equal(first_obs(42, 1)[0], s42[0])


def test_puzzle_games_played_into_samples(kernel: Any) -> None:
    pytest.importorskip("chuk_puzzles_gym")
    source = kernel.create(
        "source",
        {"name": "puzzle_batch", "num_envs": 2, "rollout_len": 40, "max_steps": 40,
         "env_options": {"game": "binary"}},
    )  # fmt: skip
    rollout = next(source.rollouts())
    assert rollout.summary()["completion_rate"] == 1.0
    assert next(iter(source))["loss_mask"].sum() == 3


# ------------------------------------------------------------------- bad input


class FloatEnv:
    """A tiny continuous-action env: obs is the running sum of actions."""

    backend: ClassVar[str] = "numpy"
    spec = EnvSpec(obs_shape=(1,), obs_dtype=np.float32, action_shape=(1,),
                   action_dtype=np.float32, action_low=-1.0, action_high=1.0)  # fmt: skip

    def reset(self, keys: Any) -> Any:
        obs = np.zeros((len(keys), 1), dtype=np.float32)
        return obs, obs

    def step(self, state: Any, action: Any) -> Any:
        if np.asarray(action).shape[1:] != (1,):
            raise ValueError("bad action shape")
        new = (state + action).astype(np.float32)
        if (new > 3).any() and len(new) > 1:
            pass
        n = len(new)
        return new, new, np.ones(n, np.float32), np.zeros(n, bool), np.zeros(n, bool)


def test_wrong_action_shape_names_the_policy() -> None:
    def bad(obs: Any, keys: Any, spec: Any) -> Any:
        return np.zeros((len(keys), 2), dtype=np.int32)

    with pytest.raises(ConfigError, match=r"policy: returned actions of shape \(4, 2\)"):
        run(4, 0, policy=bad)
    with pytest.raises(EnvStepError, match="actions must have shape"):
        GridEnv().step(GridEnv().reset(env_keys(0, range(3), "x"))[0], np.zeros(2, np.int32))


def test_wrong_action_dtype_names_the_policy() -> None:
    def bad(obs: Any, keys: Any, spec: Any) -> Any:
        return np.zeros(len(keys), dtype=np.float32)

    with pytest.raises(ConfigError, match="policy: returned float32 actions"):
        run(4, 0, policy=bad)
    with pytest.raises(EnvStepError, match="must be integers"):
        GridEnv().step(GridEnv().reset(env_keys(0, range(3), "x"))[0], np.zeros(3, np.float32))


def test_policy_returning_nan_names_the_env_and_key() -> None:
    def policy(obs: Any, keys: Any, spec: Any) -> Any:
        out = np.zeros((len(keys), 1), dtype=np.float32)
        out[2] = np.nan
        return out

    with pytest.raises(
        EnvStepError, match=r"env 2 \(key 0x[0-9a-f]{16}\): policy returned a non-finite"
    ):
        EnvRunner(FloatEnv(), num_envs=4, policy=policy).rollout(3)


def test_a_failing_env_is_named_with_its_index_and_key() -> None:
    class Fragile(GridEnv):
        def step(self, state: Any, action: Any) -> Any:
            if (state["steps"] >= 2).any() and (state["grid"][:, 0, 0, 0] == 3).any():
                raise RuntimeError("cell (0, 0) is cursed")
            return super().step(state, action)

    runner = EnvRunner(Fragile(), num_envs=8, seed=0)
    with pytest.raises(EnvStepError, match=r"env \d \(key 0x[0-9a-f]{16}\): step \d+ failed: "
                       r"RuntimeError: cell \(0, 0\) is cursed"):  # fmt: skip
        runner.rollout(20)


def test_factory_that_raises_names_the_env_setting(kernel: Any) -> None:
    source = kernel.create("source", {"name": "env_batch", "env": "tests.test_envs:broken_factory"})
    with pytest.raises(ConfigError, match=r"env: the env factory .* raised OSError: no display"):
        next(iter(source))


def broken_factory(num_envs: int) -> Any:
    raise OSError("no display")


def test_num_envs_zero_is_refused(kernel: Any) -> None:
    with pytest.raises(ConfigError, match="num_envs"):
        kernel.create("source", {"name": "env_batch", "num_envs": 0})
    with pytest.raises(ConfigError, match="num_envs: must be an integer > 0, got 0"):
        EnvRunner(GridEnv(), num_envs=0)


def test_jax_requested_without_jax() -> None:
    script = """
import sys
sys.modules["jax"] = None  # as if the extra were not installed
import laden
from laden.errors import ConfigError
k = laden.Kernel(autoload=False)
s = k.create("source", {"name": "env_batch", "array_backend": "jax"})
try:
    next(iter(s))
except ConfigError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "array_backend: 'jax' needs jax, which is not installed; run: pip install \"laden[jax]\""
    )


def test_envs_bench_command(tmp_path: Any) -> None:
    import json

    from click.testing import CliRunner

    from laden.cli.main import build_cli
    from laden.kernel import Kernel

    result = CliRunner().invoke(
        build_cli(Kernel(autoload=False)),
        ["envs", "bench", "grid", "--num-envs", "1,8", "--steps", "5", "--repeats", "1", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [r["num_envs"] for r in report["rows"]] == [1, 8]
    assert report["best_num_envs"] in (1, 8)
    assert report["rows"][0]["state_bytes_per_env"] > 0


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 9),
    limit=st.integers(1, 6),
    chunks=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    autoreset=st.sampled_from(["next_step", "same_step", "pool"]),
    oracle=st.booleans(),
)
def test_chunked_rollouts_are_one_rollout_and_statistics_add_up(
    seed: int, n: int, limit: int, chunks: list[int], autoreset: str, oracle: bool
) -> None:
    def runner() -> EnvRunner:
        return EnvRunner(
            GridEnv(max_episode_steps=limit),
            num_envs=n,
            seed=seed,
            autoreset=autoreset,
            policy=oracle_policy if oracle else "random",
            reset_pool_size=3,
        )

    chunked = runner()
    parts = [chunked.rollout(steps) for steps in chunks]
    whole = runner().rollout(sum(chunks))
    for key in (*COLUMNS, "active", "final_obs"):
        joined = np.concatenate([p[key] for p in parts])
        assert np.array_equal(joined, whole[key]), key
    # every finished episode's statistics, from the columns one env at a time
    ended = {k: np.concatenate([p.episodes[k] for p in parts]) for k in whole.episodes}
    active = whole["active"]
    for row in range(ended["env"].size):
        env, episode = int(ended["env"][row]), int(ended["episode_id"][row])
        rows = (whole["episode_id"][:, env] == episode) & active[:, env]
        assert ended["length"][row] == rows.sum()
        assert ended["return"][row] == whole["reward"][rows, env].astype(np.float64).sum()
        last = np.flatnonzero(rows)[-1]
        assert ended["terminated"][row] == whole["terminated"][last, env]
        assert whole["terminated"][last, env] | whole["truncated"][last, env]
        assert (whole["step_index"][rows, env] == np.arange(rows.sum())).all()
    done = whole["terminated"] | whole["truncated"]
    assert ended["env"].size == done.sum()


@pytest.mark.parametrize("autoreset", ["same_step", "pool", "next_step"])
def test_env_returning_nan_reward_names_the_env_step_and_key(autoreset: str) -> None:
    class Broken(GridEnv):
        def step(self, state: Any, action: Any) -> Any:
            out = list(super().step(state, action))
            if (state["steps"] == 4).any():
                out[2] = out[2].copy()
                out[2][3] = np.nan
            return tuple(out)

    runner = EnvRunner(Broken(max_episode_steps=30), num_envs=5, seed=0, autoreset=autoreset)
    runner.rollout(2)
    with pytest.raises(
        EnvStepError, match=r"env 3 \(key 0x[0-9a-f]{16}\): the env returned reward nan at step 4"
    ):
        runner.rollout(6)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint64"])
def test_grid_names_the_env_of_an_action_out_of_range_whatever_its_dtype(dtype: str) -> None:
    """Small ints are checked by the table lookup itself (a negative one viewed as unsigned
    is past the tables' end), wide ones by a pass first: both name the env."""
    env = GridEnv(height=2, width=2, colors=3)  # 12 actions
    state, _ = env.reset(env_keys(0, np.arange(4), "x"))
    good = np.array([0, 11, 5, 3], dtype=dtype)
    assert env.step(state, good)[0]["grid"].shape == (4, 2, 2, 2)
    with pytest.raises(EnvStepError, match=r"env 2: grid: action 12 is outside \[0, 12\)"):
        env.step(state, np.array([0, 11, 12, 3], dtype=dtype))
    if np.dtype(dtype).kind == "i":
        with pytest.raises(EnvStepError, match=r"env 3: grid: action -1 is outside"):
            env.step(state, np.array([0, 1, 2, -1], dtype=dtype))
        lowest = np.iinfo(dtype).min
        with pytest.raises(EnvStepError, match=rf"env 0: grid: action {lowest} is outside"):
            env.step(state, np.array([lowest, 1, 2, 3], dtype=dtype))


def test_a_chunk_with_many_done_steps_adds_up_as_short_chunks_do() -> None:
    """Episodes ending at most steps of one chunk (more runs of rows than are summed in
    the loop), and every env resetting at once: the same columns, statistics and state
    as chunks short enough to sum every run in the loop."""

    def runner(limit: int, policy: Any) -> EnvRunner:
        env = GridEnv(max_episode_steps=limit, noise=4)
        return EnvRunner(env, num_envs=16, seed=5, autoreset="same_step", policy=policy)

    for limit, policy in ((5, oracle_policy), (3, "random")):
        whole = runner(limit, policy).rollout(120)
        done_steps = np.flatnonzero((whole["terminated"] | whole["truncated"]).any(1))
        assert done_steps.size > 32  # more runs than the loop sums
        chunked = runner(limit, policy)
        parts = [chunked.rollout(6) for _ in range(20)]
        for key in (*COLUMNS, "final_obs"):
            assert np.array_equal(np.concatenate([p[key] for p in parts]), whole[key]), key
        for key in whole.episodes:
            joined = np.concatenate([p.episodes[key] for p in parts])
            assert joined.tobytes() == whole.episodes[key].tobytes(), key
        for row in range(whole.episodes["env"].size):
            env, episode = int(whole.episodes["env"][row]), int(whole.episodes["episode_id"][row])
            rows = whole["episode_id"][:, env] == episode
            want = whole["reward"][rows, env].astype(np.float64).sum()
            assert whole.episodes["return"][row] == want
