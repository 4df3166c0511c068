"""``gym_adapter``: gymnasium envs (any registered id, or a ``SyncVectorEnv``) as a batched env.

Each env is seeded from laden's per-env keys (``SeedSequence([seed, i,
purpose])``, then one key per episode), never ``seed + i`` as gymnasium's
``VectorEnv.reset(seed=s)`` does, so env ``i + 1`` of seed 41 is not env ``i``
of seed 42 and env ``i``'s episodes do not change with ``num_envs``. Resets
are laden's (the adapter is stepped with autoreset ``next_step``,
``same_step`` or ``disabled``; ``pool`` needs array state): an env that is done
is not stepped again until it is reset. Needs the ``gym`` extra.

Registers the ``gym_batch`` source: ``env_batch`` with ``env`` a gymnasium id.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import numpy as np

from laden.errors import ConfigError
from laden.hookspecs import hookimpl
from laden.plugins.sources.env_batch import EnvBatchSource
from laden.registry import Registry
from laden.stream.envs.base import EnvSpec, EnvStepError
from laden.validators import one_of

__all__ = ["GymBatchSource", "GymBatchedEnv", "grid_gym_env", "make", "spec_of"]


def _gym() -> Any:
    try:
        import gymnasium
    except ImportError:
        raise ConfigError(
            'gymnasium envs need gymnasium, which is not installed; run: pip install "laden[gym]"',
            path=("env",),
        ) from None
    return gymnasium


def spec_of(observation_space: Any, action_space: Any, max_episode_steps: int | None) -> EnvSpec:
    """An :class:`EnvSpec` from one env's gymnasium spaces (Discrete, MultiDiscrete or Box)."""
    spaces = _gym().spaces
    action: dict[str, Any]
    obs: dict[str, Any]
    if isinstance(action_space, spaces.Discrete):
        action = {"action_shape": (), "action_dtype": np.int64, "action_high": int(action_space.n)}
    elif isinstance(action_space, spaces.MultiDiscrete):
        action = {
            "action_shape": tuple(action_space.shape),
            "action_dtype": np.int64,
            "action_high": np.asarray(action_space.nvec).ravel(),
        }
    elif isinstance(action_space, spaces.Box):
        action = {
            "action_shape": tuple(action_space.shape),
            "action_dtype": action_space.dtype,
            "action_high": action_space.high,
            "action_low": action_space.low,
        }
    else:
        raise ConfigError(f"unsupported action space {action_space}", path=("env",))
    if isinstance(observation_space, spaces.Discrete):
        obs = {"obs_shape": (), "obs_dtype": np.int64, "obs_high": int(observation_space.n)}
    elif isinstance(observation_space, spaces.Box):
        high = None
        if np.dtype(observation_space.dtype).kind in "iu":
            high = int(np.max(observation_space.high)) + 1
        obs = {
            "obs_shape": tuple(observation_space.shape),
            "obs_dtype": observation_space.dtype,
            "obs_high": high,
        }
    else:
        raise ConfigError(f"unsupported observation space {observation_space}", path=("env",))
    return EnvSpec(**obs, **action, max_episode_steps=max_episode_steps)


class GymBatchedEnv:
    """``num_envs`` gymnasium envs behind the batched protocol (one Python call per env)."""

    backend: ClassVar[str] = "numpy"

    def __init__(self, envs: list[Any]) -> None:
        if not envs:
            raise ConfigError("must be > 0, got 0", path=("num_envs",))
        self.envs = envs
        first = envs[0]
        limit = getattr(getattr(first, "spec", None), "max_episode_steps", None)
        self.spec = spec_of(first.observation_space, first.action_space, limit)
        self._done = np.zeros(len(envs), dtype=bool)
        self._obs: np.ndarray | None = None

    def _seed(self, key: Any) -> int:
        return int(key) >> 1  # gymnasium wants a non-negative int; 63 bits of the key

    def reset(self, keys: Any) -> tuple[Any, Any]:
        keys = np.asarray(keys)
        if len(keys) != len(self.envs):
            raise EnvStepError(f"reset got {len(keys)} keys for {len(self.envs)} envs")
        obs = [env.reset(seed=self._seed(k))[0] for env, k in zip(self.envs, keys, strict=True)]
        self._obs = np.stack([np.asarray(o) for o in obs]).astype(self.spec.obs_dtype)
        self._done[:] = False
        return None, self._obs.copy()

    def reset_where(self, state: Any, mask: Any, keys: Any) -> tuple[Any, Any]:
        assert self._obs is not None
        for j in np.flatnonzero(mask).tolist():
            self._obs[j] = self.envs[j].reset(seed=self._seed(keys[j]))[0]
            self._done[j] = False
        return state, self._obs.copy()

    def step(self, state: Any, action: Any) -> tuple[Any, Any, Any, Any, Any]:
        assert self._obs is not None
        action = np.asarray(action)
        n = len(self.envs)
        if action.shape[:1] != (n,):
            raise EnvStepError(f"actions must have {n} rows, got shape {action.shape}")
        reward = np.zeros(n, dtype=np.float32)
        term = np.zeros(n, dtype=bool)
        trunc = np.zeros(n, dtype=bool)
        for j, env in enumerate(self.envs):
            if self._done[j]:
                continue  # not stepped again until laden resets it
            try:
                obs, r, te, tr, _ = env.step(action[j])
            except Exception as exc:
                raise EnvStepError(
                    f"step failed: {type(exc).__name__}: {exc}", env_index=j
                ) from exc
            self._obs[j], reward[j], term[j], trunc[j] = obs, r, te, tr
        self._done |= term | trunc
        return state, self._obs.copy(), reward, term, trunc


def make(
    *,
    env_id: str | None = None,
    num_envs: int,
    vector_env: Any = None,
    make_kwargs: dict[str, Any] | None = None,
) -> GymBatchedEnv:
    """A batched env of ``num_envs`` ``gymnasium.make(env_id)``, or a ``SyncVectorEnv``'s."""
    gym = _gym()
    if vector_env is not None:
        envs = getattr(vector_env, "envs", None)
        if envs is None:
            raise ConfigError(
                f"{type(vector_env).__name__} does not expose its envs; pass a SyncVectorEnv "
                "or an env id",
                path=("env",),
            )
        return GymBatchedEnv(list(envs))
    if env_id is None:
        raise ConfigError("give a gymnasium env id (env = 'gym:CartPole-v1')", path=("env",))
    if num_envs < 1:
        raise ConfigError(f"must be > 0, got {num_envs}", path=("num_envs",))
    kwargs = {"disable_env_checker": True, **(make_kwargs or {})}
    try:
        envs = [gym.make(env_id, **kwargs) for _ in range(num_envs)]
    except gym.error.Error as exc:
        raise ConfigError(f"gymnasium cannot make {env_id!r}: {exc}", path=("env",)) from exc
    return GymBatchedEnv(envs)


def grid_gym_env(**settings: Any) -> Any:
    """The bundled grid rules as one ``gymnasium.Env`` (``SyncVectorEnv`` of these is the peer)."""
    gym = _gym()
    from laden.contrib.grid_env import GridEnv

    class GridGymEnv(gym.Env):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self.rules = GridEnv(**settings)
            c = self.rules.config
            self.observation_space = gym.spaces.Box(
                0, c.colors - 1, (2, c.height, c.width), np.int8
            )
            self.action_space = gym.spaces.Discrete(c.cells * c.colors)
            self.state: Any = None

        def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
            super().reset(seed=seed)
            key = np.asarray([self.np_random.integers(0, 2**63)], dtype=np.uint64)
            self.state, obs = self.rules.reset(key)
            return obs[0], {}

        def step(self, action: Any) -> Any:
            self.state, obs, r, te, tr = self.rules.step(
                self.state, np.asarray([action], dtype=np.int32)
            )
            return obs[0], float(r[0]), bool(te[0]), bool(tr[0]), {}

    return GridGymEnv()


@attrs.frozen(kw_only=True)
class GymBatchSource(EnvBatchSource):
    """``env_batch`` over gymnasium env ids (``env = "CartPole-v1"``); autoreset not ``pool``."""

    name: ClassVar[str] = "gym_batch"
    requires: ClassVar[tuple[str, ...]] = ("gymnasium",)
    extra: ClassVar[str] = "gym"

    env: str = "CartPole-v1"
    autoreset: str = attrs.field(
        default="next_step", validator=one_of("next_step", "same_step", "disabled")
    )


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(GymBatchSource)
