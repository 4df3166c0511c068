"""JAX: a ``vmap`` + ``jit`` adapter for one env's functions, a rollout runner over ``lax.scan``.

Imported only when a JAX run is asked for (``jax`` is an extra). Keys are
``[N, 2]`` uint32 PRNG keys: env ``i``'s is ``fold_in(fold_in(PRNGKey(seed),
i), crc32(purpose))``, episode ``k``'s ``fold_in(key_i, k)``, the policy's at
global step ``t`` ``fold_in(policy_key_i, t)``: none depends on ``num_envs``.

Under ``scan`` the whole rollout of ``rollout_len`` steps is one compiled
call. Resets are computed only when some env needs one (``lax.cond``); the
``pool`` autoreset gathers precomputed reset states instead, which is what
keeps resets cheap under ``scan`` (gymnax-style reset-every-step costs 16-68x).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from laden.errors import ConfigError, DataError
from laden.stream.envs.base import EPISODE_STRIDE, EnvSpec, purpose_tag
from laden.stream.envs.runner import (
    _COUNTERS,
    POLICY,
    POOL,
    RESET,
    Rollout,
    RunnerSettings,
    _episodes,
    check_actions,
)

__all__ = ["JaxRunner", "VmapEnv", "jax_below", "jax_env_keys", "jax_random_policy"]


def jax_env_keys(seed: int, indices: Any, purpose: str) -> Any:
    """``[len(indices), 2]`` uint32 keys: ``fold_in(fold_in(PRNGKey(seed), i), purpose)``."""
    import jax

    if not 0 <= seed < 1 << 32:
        raise ConfigError(f"must be in 0 .. 2**32 - 1 on jax, got {seed}", path=("seed",))
    root = jax.random.PRNGKey(seed)
    tag = np.uint32(purpose_tag(purpose))
    index = np.asarray(indices, dtype=np.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(root, i), tag))(index)


def jax_below(key: Any, shape: tuple[int, ...], high: Any) -> Any:
    """Integers in ``[0, high)`` (``high`` <= 2**16) from one ``random.bits`` call."""
    import jax
    import jax.numpy as jnp

    raw = jax.random.bits(key, shape, dtype=jnp.uint32) >> 16
    return ((raw * jnp.asarray(high, dtype=jnp.uint32)) >> 16).astype(jnp.int32)


def jax_random_policy(obs: Any, keys: Any, spec: EnvSpec) -> Any:
    """Uniform actions from per-env, per-step JAX keys (traceable)."""
    import jax
    import jax.numpy as jnp

    if spec.discrete:
        high = np.broadcast_to(np.asarray(spec.action_high), spec.action_shape)
        if int(np.max(high, initial=0)) <= 1 << 16:
            return jax.vmap(lambda key: jax_below(key, spec.action_shape, high))(keys).astype(
                spec.action_dtype
            )

        def one(key: Any) -> Any:
            return jax.random.randint(key, spec.action_shape, 0, jnp.asarray(high), dtype=jnp.int32)

        return jax.vmap(one)(keys).astype(spec.action_dtype)

    def uniform(key: Any) -> Any:
        return jax.random.uniform(
            key, spec.action_shape, minval=spec.action_low, maxval=spec.action_high
        )

    return jax.vmap(uniform)(keys).astype(spec.action_dtype)


class VmapEnv:
    """A batched env from one env's pure functions: ``reset_one(key)``, ``step_one(state, action)``.

    Both are ``vmap``-ed over the env axis and ``jit``-compiled.
    """

    backend: ClassVar[str] = "jax"

    def __init__(
        self, reset_one: Callable[..., Any], step_one: Callable[..., Any], spec: EnvSpec
    ) -> None:
        import jax

        self.spec = spec
        self.reset = jax.jit(jax.vmap(reset_one))
        self.step = jax.jit(jax.vmap(step_one))


def _mix32(x: Any) -> Any:
    """murmur3's 32-bit finalizer (cheap per-step pool choice)."""
    import jax.numpy as jnp

    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


class JaxRunner(RunnerSettings):
    """:class:`~laden.stream.envs.runner.EnvRunner`'s counterpart for JAX envs (same settings).

    Resumable like it: :meth:`state_dict` (host numpy copies of the carry) and
    :meth:`load_state_dict`, of kind ``laden.jax_runner``.

    :param scan: run a rollout as one ``lax.scan`` (else a jitted step in a Python loop).
    :param settings: :class:`~laden.stream.envs.runner.EnvRunner`'s (``num_envs``, ``seed``,
        ``policy``, ``autoreset``, ``reset_pool_size``, ``final_obs``, ``first_env``).
    """

    def __init__(self, env: Any, *, scan: bool = True, **settings: Any) -> None:
        self.scan = scan
        super().__init__(env, **settings)

    def _random_policy(self) -> Callable[..., Any]:
        return jax_random_policy

    def _setup(self, index: np.ndarray) -> None:
        import jax
        import jax.numpy as jnp

        env, seed = self.env, self.seed
        self.reset_keys = jax_env_keys(seed, index, RESET)
        self.policy_keys = jax_env_keys(seed, index, POLICY)
        self._ids = index.astype(np.int64) * EPISODE_STRIDE
        self.pool: tuple[Any, Any] | None = None
        if self.autoreset == "pool":
            self.pool = env.reset(jax_env_keys(seed, np.arange(self.reset_pool_size), POOL))
        self._fold = jax.vmap(jax.random.fold_in)
        self.carry: Any = None
        self.t = 0
        self._compiled: dict[tuple[int, bool], Callable[..., Any]] = {}
        self._jnp = jnp

    # ------------------------------------------------------------ the step

    def _where(self, mask: Any, a: Any, b: Any) -> Any:
        import jax

        jnp = self._jnp
        return jax.tree_util.tree_map(
            lambda x, y: jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y), a, b
        )

    def _reset_for(self, mask: Any, episode: Any, state: Any, obs: Any) -> tuple[Any, Any]:
        """``(state, obs)`` with the envs in ``mask`` reset into episode ``episode``."""
        import jax

        jnp = self._jnp
        if self.pool is not None:
            pool_state, pool_obs = self.pool
            size = pool_obs.shape[0]
            word = self.reset_keys[:, 0] ^ (episode.astype(jnp.uint32) * jnp.uint32(0x9E3779B9))
            pick = (_mix32(word) % jnp.uint32(size)).astype(jnp.int32)
            fresh_state = jax.tree_util.tree_map(lambda leaf: leaf[pick], pool_state)
            return self._where(mask, fresh_state, state), self._where(mask, pool_obs[pick], obs)

        def reset(args: Any) -> Any:
            st, ob = args
            fresh_state, fresh_obs = self.env.reset(self._fold(self.reset_keys, episode))
            return self._where(mask, fresh_state, st), self._where(mask, fresh_obs, ob)

        return jax.lax.cond(jnp.any(mask), reset, lambda args: args, (state, obs))  # type: ignore[no-any-return]

    def _one_step(self, carry: Any, _: Any = None) -> tuple[Any, Any]:
        jnp = self._jnp
        state, obs, episode, ep_step, ep_return, pending, alive, t = carry
        keys = self._fold(self.policy_keys, jnp.broadcast_to(t, (self.num_envs,)))
        action = self.policy(obs, keys, self.spec)
        out = {"obs": obs, "action": action, "episode": episode, "step_index": ep_step}
        new_state, new_obs, reward, term, trunc = self.env.step(state, action)
        reward = reward.astype(jnp.float32)
        mode = self.autoreset
        zero_obs = jnp.zeros_like(obs)
        final_mask = jnp.zeros_like(term)
        if mode == "next_step":
            live = ~pending
            reward = jnp.where(live, reward, 0.0)
            term, trunc = term & live, trunc & live
            episode = episode + pending.astype(jnp.int32)
            new_state, new_obs = self._reset_for(pending, episode, new_state, new_obs)
            ep_step = jnp.where(pending, 0, ep_step + 1)
            ep_return = jnp.where(pending, 0.0, ep_return + reward)
            active = live
            done = term | trunc
            pending = done
            final = zero_obs
        elif mode == "disabled":
            active = alive
            reward = jnp.where(alive, reward, 0.0)
            term, trunc = term & alive, trunc & alive
            new_obs = self._where(alive, new_obs, obs)
            new_state = self._where(alive, new_state, state)
            ep_step = ep_step + alive.astype(jnp.int32)
            ep_return = ep_return + reward
            done = term | trunc
            alive = alive & ~done
            all_done = ~jnp.any(alive)
            final_mask = done & all_done
            final = self._where(final_mask, new_obs, zero_obs)
            episode = episode + all_done.astype(jnp.int32)
            new_state, new_obs = self._reset_for(
                jnp.broadcast_to(all_done, alive.shape), episode, new_state, new_obs
            )
            alive = alive | all_done
        else:
            active = jnp.ones_like(term)
            ep_step = ep_step + 1
            ep_return = ep_return + reward
            done = term | trunc
            final_mask = done
            final = self._where(done, new_obs, zero_obs)
            episode = episode + done.astype(jnp.int32)
            new_state, new_obs = self._reset_for(done, episode, new_state, new_obs)
        out.update(
            reward=reward,
            terminated=term,
            truncated=trunc,
            active=active,
            ended_return=ep_return,
            ended_length=ep_step,
            final_mask=final_mask,
        )
        if self.final_obs:
            out["final_obs"] = final
        if mode != "disabled":
            reset_now = done if mode != "next_step" else jnp.zeros_like(done)
            ep_step = jnp.where(reset_now, 0, ep_step)
            ep_return = jnp.where(reset_now, 0.0, ep_return)
        else:
            ep_step = jnp.where(final_mask.any(), 0, ep_step)
            ep_return = jnp.where(final_mask.any(), 0.0, ep_return)
        return (new_state, new_obs, episode, ep_step, ep_return, pending, alive, t + 1), out

    def _compiled_rollout(self, steps: int) -> Callable[..., Any]:
        import jax

        key = (steps, self.scan)
        fn = self._compiled.get(key)
        if fn is None:
            if self.scan:

                def rollout(carry: Any) -> Any:
                    return jax.lax.scan(self._one_step, carry, None, length=steps)

                fn = jax.jit(rollout)
            else:
                fn = jax.jit(self._one_step)
            self._compiled[key] = fn
        return fn

    def start(self) -> None:
        """Reset every env (episode 0)."""
        jnp = self._jnp
        n = self.num_envs
        episode = jnp.zeros(n, dtype=jnp.int32)
        state, obs = self.env.reset(self._fold(self.reset_keys, episode))
        self.carry = (
            state,
            obs,
            episode,
            jnp.zeros(n, dtype=jnp.int32),
            jnp.zeros(n, dtype=jnp.float32),
            jnp.zeros(n, dtype=bool),
            jnp.ones(n, dtype=bool),
            jnp.int32(0),
        )

    def _check_policy(self) -> None:
        """One eager policy call, so a wrong shape, dtype or NaN is named before compiling."""
        _state, obs, *_ = self.carry
        keys = self._fold(self.policy_keys, self._jnp.full(self.num_envs, self.t, dtype="int32"))
        action = self.policy(obs, keys, self.spec)
        check_actions(np.asarray(action), self.spec, self.num_envs, np.asarray(keys), self.t)

    def rollout(self, steps: int) -> Rollout:
        """The next ``steps`` steps of every env, as host numpy columns."""
        import jax

        if steps < 1:
            raise ConfigError(f"must be > 0, got {steps}", path=("rollout_len",))
        if self.carry is None:
            self.start()
            self._check_policy()
        fn = self._compiled_rollout(steps)
        if self.scan:
            self.carry, out = fn(self.carry)
        else:
            rows = []
            for _ in range(steps):
                self.carry, row = fn(self.carry)
                rows.append(row)
            out = jax.tree_util.tree_map(lambda *xs: self._jnp.stack(xs), *rows)
        host = jax.device_get(out)
        start = self.t
        self.t += steps
        action = np.asarray(host["action"])
        if action.dtype.kind == "f" and not np.isfinite(action).all():
            bad = ~np.isfinite(action).reshape(steps, self.num_envs, -1).all(2)
            s, j = (int(v[0]) for v in np.nonzero(bad))
            from laden.stream.envs.base import EnvStepError

            raise EnvStepError(
                f"policy returned a non-finite action at step {start + s}",
                env_index=self.first_env + j,
                key=np.asarray(self.policy_keys)[j],
            )
        episode = np.asarray(host["episode"]).astype(np.int64)
        term = np.asarray(host["terminated"])
        done = term | np.asarray(host["truncated"])
        steps_at, envs_at = np.nonzero(done)
        order = np.lexsort((envs_at, steps_at))
        steps_at, envs_at = steps_at[order], envs_at[order]
        ended = [
            (
                envs_at + self.first_env,
                self._ids[envs_at] + episode[steps_at, envs_at],
                np.asarray(host["ended_return"])[steps_at, envs_at].astype(np.float64),
                np.asarray(host["ended_length"])[steps_at, envs_at],
                term[steps_at, envs_at],
            )
        ]
        columns: dict[str, Any] = {
            "obs": np.asarray(host["obs"]),
            "action": action,
            "reward": np.asarray(host["reward"]),
            "terminated": term,
            "truncated": np.asarray(host["truncated"]),
            "episode_id": self._ids[None, :] + episode,
            "step_index": np.asarray(host["step_index"]),
            "active": np.asarray(host["active"]),
        }
        if self.final_obs:
            columns["final_obs"] = np.asarray(host["final_obs"])
        return Rollout(
            columns=columns,
            last_obs=np.asarray(jax.device_get(self.carry[1])),
            episodes=_episodes(ended),
            spec=self.spec,
            start=start,
            first_env=self.first_env,
            final_mask=np.asarray(host["final_mask"]),
        )

    # ------------------------------------------------------------ state

    #: The carry's per-env counters' dtypes (in ``_COUNTERS`` order).
    _DTYPES = (np.int32, np.int32, np.float32, np.bool_, np.bool_)

    def state_dict(self) -> dict[str, Any]:
        """Where the run is: the step, the per-env counters, env state and observation.

        Host numpy copies of the scan's carry (``state`` and ``obs`` None before the
        first rollout), with the settings a state needs to fit, as
        :meth:`EnvRunner.state_dict <laden.stream.envs.runner.EnvRunner.state_dict>`.
        """
        import jax

        n = self.num_envs
        if self.carry is None:
            env_state = obs = None
            counters: list[np.ndarray] = [np.zeros(n, dtype=d) for d in self._DTYPES[:4]] + [
                np.ones(n, dtype=bool)
            ]
        else:
            host = jax.device_get(self.carry)
            env_state = jax.tree_util.tree_map(lambda leaf: np.array(leaf, copy=True), host[0])
            obs = np.array(host[1], copy=True)
            counters = [np.array(v, dtype=d) for v, d in zip(host[2:7], self._DTYPES, strict=True)]
        return {
            **self._identity("laden.jax_runner"),
            "t": int(self.t),
            **dict(zip(_COUNTERS, counters, strict=True)),
            "state": env_state,
            "obs": obs,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (same env, seed, envs, autoreset and policy);
        a state that does not fit is refused with a DataError before anything changes."""
        import jax

        jnp = self._jnp
        found = self._check_fits(state, "laden.jax_runner", max_t=(1 << 31) - 1)
        counters: list[np.ndarray] = [
            found[k].astype(d) for k, d in zip(_COUNTERS, self._DTYPES, strict=True)
        ]
        t = int(state["t"])
        if state["state"] is None and state["obs"] is None:
            self.carry, self.t = None, t
            return
        obs = np.array(state["obs"], copy=True)
        if obs.shape[:1] != (self.num_envs,):
            raise DataError(f"the state's obs has shape {obs.shape}, want ({self.num_envs}, ...)")
        # copies on the device: the caller's arrays stay the caller's
        env_state = jax.tree_util.tree_map(lambda leaf: jnp.array(leaf, copy=True), state["state"])
        self.carry = (
            env_state,
            jnp.array(obs),
            *(jnp.asarray(c) for c in counters),
            jnp.int32(t),
        )
        self.t = t
