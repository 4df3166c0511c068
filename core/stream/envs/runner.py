"""The rollout runner: a batched env stepped under a policy, with autoreset, into ``[T, N]`` chunks.

Every per-step operation is over whole arrays (no Python loop per env);
resets are computed for the envs that need one only (or gathered from a pool
of precomputed reset states). The runner tracks, per env, the episode it is
in, the step index within it, its running return, and records per finished
episode its return, length and whether it terminated (vs. was truncated).

Autoreset modes (gymnasium's names, https://farama.org/Vector-Autoreset-Mode):

- ``next_step``: an env done at step ``t`` is reset at step ``t + 1``; that
  step's action is ignored, its reward is 0 and ``active`` is False.
- ``same_step``: an env done at step ``t`` is reset within step ``t``; the
  observation returned is the new episode's, the terminal one is ``final_obs``.
- ``pool``: as ``same_step``, but the reset state is taken from a pool of
  ``reset_pool_size`` precomputed reset states (chosen per env and episode by
  key), so a reset costs a gather, not a reset computation.
- ``disabled``: a done env stays done (``active`` False, its observation frozen)
  until every env is done; then all reset together (one batch episode).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

try:  # the C count, without np.count_nonzero's dispatch (a third of the cost)
    from numpy._core.multiarray import count_nonzero as _count_nonzero
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core.multiarray import (  # type: ignore[no-redef]
        count_nonzero as _count_nonzero,
    )

from laden.errors import ConfigError, DataError
from laden.stream.envs.base import (
    EPISODE_STRIDE,
    BatchedEnv,
    EnvSpec,
    EnvStepError,
    below_into,
    bits,
    env_keys,
    fold,
    integers_below,
    tree_map,
    tree_take,
    uniform,
)

__all__ = [
    "AUTORESETS",
    "EnvRunner",
    "Rollout",
    "RunnerSettings",
    "TorchBoundary",
    "check_actions",
    "check_num_envs",
    "random_policy",
]

AUTORESETS = ("next_step", "same_step", "disabled", "pool")
#: Up to this many groups of rows, :meth:`EnvRunner._chunk_returns` sums slice by slice.
_SLICED_SUMS = 32
#: Purposes of the per-env keys (see :func:`laden.stream.envs.base.env_keys`).
RESET, POLICY, POOL = "env.reset", "env.policy", "env.pool"


def check_num_envs(num_envs: Any) -> int:
    if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ConfigError(f"must be an integer > 0, got {num_envs!r}", path=("num_envs",))
    return int(num_envs)


def random_policy(obs: Any, keys: np.ndarray, spec: EnvSpec) -> np.ndarray:
    """Uniform actions from per-env, per-step keys (the same for env ``i`` whatever ``N`` is)."""
    n = keys.shape[0]
    size = int(np.prod(spec.action_shape, dtype=np.int64))
    raw = bits(keys, size)
    if spec.discrete:
        if spec.action_high is None:
            raise ConfigError("the env's spec has no action_high to draw from", path=("policy",))
        actions = integers_below(raw, np.broadcast_to(spec.action_high, (size,)))
        return actions.reshape(n, *spec.action_shape).astype(spec.action_dtype)
    low = np.asarray(spec.action_low, dtype=np.float64)
    high = np.asarray(spec.action_high, dtype=np.float64)
    values = low + uniform(raw).reshape(n, *spec.action_shape) * (high - low)
    return values.astype(spec.action_dtype)


#: The runner draws a whole chunk's actions in one call for policies that ignore ``obs``.
random_policy.obs_independent = True  # type: ignore[attr-defined]


def check_actions(action: Any, spec: EnvSpec, num_envs: int, keys: Any, step: int) -> np.ndarray:
    """The policy's actions as an array, or an error naming ``policy`` (and the env for NaN)."""
    array = np.asarray(action)
    want = (num_envs, *spec.action_shape)
    if array.shape != want:
        raise ConfigError(
            f"returned actions of shape {array.shape}; the env takes {want} "
            f"(num_envs, *action_shape) at step {step}",
            path=("policy",),
        )
    kind = array.dtype.kind
    if spec.discrete:
        if kind not in "iu":
            raise ConfigError(
                f"returned {array.dtype} actions; the env takes integer actions "
                f"({spec.action_dtype}) at step {step}",
                path=("policy",),
            )
        if spec.action_high is not None and array.size:
            bad = np.flatnonzero(
                ((array < 0) | (array >= spec.action_high)).reshape(num_envs, -1).any(1)
            )
            if bad.size:
                j = int(bad[0])
                raise EnvStepError(
                    f"policy returned action {array[j].tolist()} outside [0, "
                    f"{spec.action_high}) at step {step}",
                    env_index=j,
                    key=np.asarray(keys)[j],
                )
    else:
        if kind not in "fiu":
            raise ConfigError(
                f"returned {array.dtype} actions; the env takes {spec.action_dtype}",
                path=("policy",),
            )
        if kind == "f":
            finite = np.isfinite(array).reshape(num_envs, -1).all(1)
            if not finite.all():
                j = int(np.flatnonzero(~finite)[0])
                raise EnvStepError(
                    f"policy returned a non-finite action {array[j].tolist()} at step {step}",
                    env_index=j,
                    key=np.asarray(keys)[j],
                )
    return array


def _mask_shape(mask: np.ndarray, leaf: np.ndarray) -> np.ndarray:
    return mask.reshape(mask.shape + (1,) * (leaf.ndim - mask.ndim))


def _put(leaf: Any, envs: np.ndarray | slice, values: Any) -> Any:
    """``leaf`` with the rows ``envs`` replaced; in place when the runner may write it.

    What ``step`` and ``reset`` returned belongs to the runner (the protocol: new
    arrays, inputs unchanged), so writing into it is safe; read-only views are copied.
    """
    if not isinstance(leaf, np.ndarray):  # a torch env's state (see TorchBoundary)
        leaf[_torch_index(envs, leaf)] = values
        return leaf
    out = leaf if leaf.flags.writeable and leaf.base is None else leaf.copy()
    out[envs] = values
    return out


def _take(leaf: Any, rows: np.ndarray | slice) -> Any:
    """``leaf[rows]``; a torch tensor is indexed with a tensor (a numpy index is slow)."""
    if isinstance(leaf, np.ndarray):
        return leaf[rows]
    return leaf[_torch_index(rows, leaf)]


def _torch_index(index: np.ndarray | slice, leaf: Any) -> Any:
    return index if isinstance(index, slice) else _torch().as_tensor(index, device=leaf.device)


def _torch() -> Any:
    import torch

    return torch


class TorchBoundary:
    """How :class:`EnvRunner` runs a torch-native env (``backend = "torch"``).

    The env's state stays torch tensors on its device (resets are written into
    it with torch indexing); actions go in as tensors; observations, rewards and
    flags come back as host numpy arrays, which the runner records as it does a
    numpy env's (``Rollout.to("torch")`` turns the columns into tensors).
    """

    backend: ClassVar[str] = "numpy"

    def __init__(self, env: Any) -> None:
        self.env = env
        self.spec: EnvSpec = env.spec
        if hasattr(env, "reset_where"):  # the runner looks for it: only where the env has it
            self.reset_where = self._reset_where

    def reset(self, keys: np.ndarray) -> tuple[Any, Any]:
        state, obs = self.env.reset(keys)
        return state, _host(obs)

    def _reset_where(self, state: Any, mask: np.ndarray, keys: np.ndarray) -> tuple[Any, Any]:
        """The env's own ``reset_where``, given host ``mask`` and ``keys`` as ``reset`` is."""
        state, obs = self.env.reset_where(state, mask, keys)
        return state, _host(obs)

    def step(self, state: Any, action: np.ndarray) -> tuple[Any, Any, Any, Any, Any]:
        out = self.env.step(state, _torch().as_tensor(action))
        return out[0], _host(out[1]), _host(out[2]), _host(out[3]), _host(out[4])


def _is_leaf(obs: Any, state: Any) -> bool:
    """Whether ``obs`` is (the same object as) a leaf of ``state``."""
    if isinstance(state, dict) and any(obs is leaf for leaf in state.values()):
        return True
    return any(obs is leaf for leaf in _leaves(state))


def _leaves(tree: Any) -> list[Any]:
    out: list[Any] = []
    tree_map(out.append, tree)
    return out


def _where(mask: np.ndarray, a: Any, b: Any) -> Any:
    def pick(x: Any, y: Any) -> Any:
        if isinstance(x, np.ndarray) or not hasattr(x, "device"):
            return np.where(_mask_shape(mask, x), x, y)
        torch = _torch()
        keep = torch.as_tensor(mask, device=x.device).reshape(mask.shape + (1,) * (x.ndim - 1))
        return torch.where(keep, x, torch.as_tensor(y, device=x.device))

    return tree_map(pick, a, b)


@attrs.frozen(kw_only=True)
class Rollout:
    """One rollout chunk: ``T`` steps of ``N`` envs.

    ``columns`` holds ``[T, N, ...]`` arrays: ``obs`` (before the action),
    ``action``, ``reward``, ``terminated``, ``truncated``, ``episode_id``,
    ``step_index`` (within the episode), ``active`` (the action was applied to
    a live episode) and, if recorded, ``final_obs`` (the terminal observation
    where an env was reset within the step; zeros elsewhere). ``last_obs``
    ``[N, ...]`` is the observation after the last step. ``episodes`` holds one
    row per episode that finished in the chunk: ``env``, ``episode_id``,
    ``return``, ``length``, ``terminated``.

    :param start: the global step of row 0 (the same for every env).
    :param first_env: the env index of column 0.
    :param final_mask: ``[T, N]`` where ``final_obs`` holds a terminal observation.
    """

    columns: dict[str, Any]
    last_obs: Any
    episodes: dict[str, np.ndarray]
    spec: EnvSpec
    start: int = 0
    first_env: int = 0
    final_mask: np.ndarray | None = None

    def __getitem__(self, key: str) -> Any:
        return self.columns[key]

    @property
    def steps(self) -> int:
        return int(np.shape(self.columns["reward"])[0])

    @property
    def num_envs(self) -> int:
        return int(np.shape(self.columns["reward"])[1])

    def as_dict(self) -> dict[str, Any]:
        """The chunk as one dict: the columns, ``last_obs`` and ``episodes``."""
        return {**self.columns, "last_obs": self.last_obs, "episodes": dict(self.episodes)}

    def summary(self) -> dict[str, float | int]:
        """Episode statistics of the chunk: count, mean return and length, completion rate."""
        count = int(self.episodes["return"].size)
        if not count:
            return {"episodes": 0, "mean_return": 0.0, "mean_length": 0.0, "completion_rate": 0.0}
        return {
            "episodes": count,
            "mean_return": float(self.episodes["return"].mean()),
            "mean_length": float(self.episodes["length"].mean()),
            "completion_rate": float(self.episodes["terminated"].mean()),
        }

    def numpy(self) -> Rollout:
        """The same chunk with every column as a host numpy array."""
        return attrs.evolve(
            self,
            columns={k: _host(v) for k, v in self.columns.items()},
            last_obs=_host(self.last_obs),
        )

    def to(self, array_backend: str) -> Rollout:
        """The columns as ``numpy``, ``torch`` or ``jax`` arrays (int64 ones stay numpy on jax)."""
        host = self.numpy()
        if array_backend == "numpy":
            return host
        if array_backend == "torch":
            import torch

            convert: Callable[[np.ndarray], Any] = torch.from_numpy
        elif array_backend == "jax":
            import jax.numpy as jnp

            convert = jnp.asarray
        else:
            raise ConfigError(f"unknown array backend {array_backend!r}", path=("array_backend",))
        columns = {
            k: v if (array_backend == "jax" and v.dtype == np.int64) else convert(v)
            for k, v in host.columns.items()
        }
        return attrs.evolve(host, columns=columns, last_obs=convert(host.last_obs))

    # -------------------------------------------------------- transitions

    def next_obs(self) -> np.ndarray:
        """``[T, N, ...]``: the observation each step led to (terminal ones included)."""
        host = self.numpy()
        obs = host.columns["obs"]
        out = np.concatenate([obs[1:], host.last_obs[None]], axis=0)
        if self.final_mask is not None and self.final_mask.any():
            if "final_obs" not in host.columns:
                raise DataError(
                    "the rollout has resets within a step but no final_obs (set final_obs=True)"
                )
            mask = _mask_shape(self.final_mask, out)
            out = np.where(mask, host.columns["final_obs"], out)
        return out

    def transitions(self) -> dict[str, np.ndarray]:
        """Flat ``[M, ...]`` arrays of the active steps: obs, action, reward, next_obs, ..."""
        host = self.numpy()
        active = np.asarray(host.columns["active"])
        next_obs = self.next_obs()
        env = np.broadcast_to(
            np.arange(self.first_env, self.first_env + self.num_envs), active.shape
        )
        t = np.broadcast_to(np.arange(self.start, self.start + self.steps)[:, None], active.shape)
        out = {
            k: np.asarray(host.columns[k])[active]
            for k in (
                "obs",
                "action",
                "reward",
                "terminated",
                "truncated",
                "episode_id",
                "step_index",
            )
        }
        out["next_obs"] = next_obs[active]
        out["env"] = env[active]
        out["step"] = t[active]
        return out

    def _tokens(self, obs_high: int | None) -> tuple[np.ndarray, int]:
        """``[T, N, L + A]`` int32 tokens per step (observation, then action) and ``L``."""
        spec = self.spec
        high = spec.obs_high if obs_high is None else obs_high
        host = self.numpy().columns
        obs = np.asarray(host["obs"])
        if high is None or obs.dtype.kind not in "iub":
            raise DataError(
                f"stream samples need integer observations with a known obs_high; this env's "
                f"are {obs.dtype} (write the rollouts to files instead)"
            )
        if not spec.discrete or spec.action_high is None:
            raise DataError("stream samples need discrete actions (with action_high)")
        size = int(np.prod(spec.action_shape, dtype=np.int64))
        action = np.asarray(host["action"]).reshape(self.steps, self.num_envs, size)
        # component k of an action is token high + (sum of the highs before k) + value
        highs = np.broadcast_to(np.asarray(spec.action_high, dtype=np.int64).ravel(), (size,))
        base = high + np.concatenate([[0], np.cumsum(highs)[:-1]])
        flat = obs.reshape(self.steps, self.num_envs, -1).astype(np.int32)
        act = (action.astype(np.int64) + base).astype(np.int32)
        return np.concatenate([flat, act], axis=2), flat.shape[2]

    def samples(
        self, kind: str = "transition", *, slice_len: int = 16, obs_high: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Stream samples (the replay buffer's input), env-major then by step.

        ``transition``: one sample per active step, ``input_ids`` = the
        observation's values then the action's tokens, ``obs_high + action``
        (components of a vector action offset by the highs before them;
        ``loss_mask`` 1 on the action only). ``trajectory``: up to
        ``slice_len`` consecutive steps of one episode per sample (never
        crossing an episode boundary), each step's observation and action
        tokens in turn; ``reward`` is their sum. A sample's ``success`` is True
        when its episode terminated on its last step, False when it was
        truncated there, None otherwise.
        """
        if kind not in ("transition", "trajectory"):
            raise ConfigError(f"must be 'transition' or 'trajectory', got {kind!r}", path=("emit",))
        tokens, width = self._tokens(obs_high)
        host = self.numpy().columns
        active = np.asarray(host["active"]).T
        reward = np.asarray(host["reward"]).T
        term = np.asarray(host["terminated"]).T
        trunc = np.asarray(host["truncated"]).T
        episode = np.asarray(host["episode_id"]).T
        step_index = np.asarray(host["step_index"]).T
        tokens = tokens.transpose(1, 0, 2)
        mask_row = np.zeros(tokens.shape[2], dtype=np.uint8)
        mask_row[width:] = 1
        span = 1 if kind == "transition" else slice_len
        for i in range(self.num_envs):
            env = self.first_env + i
            rows = np.flatnonzero(active[i])
            if not rows.size:
                continue
            # cut where the episode changes, where rows are not consecutive, every `span` steps
            new = np.ones(rows.size, dtype=bool)
            new[1:] = (episode[i, rows[1:]] != episode[i, rows[:-1]]) | (np.diff(rows) != 1)
            group = np.cumsum(new) - 1
            first = np.flatnonzero(new)
            position = np.arange(rows.size) - first[group]
            cut = new | (position % span == 0)
            bounds = np.append(np.flatnonzero(cut), rows.size).tolist()
            for a, b in itertools.pairwise(bounds):
                lo, hi = int(rows[a]), int(rows[b - 1]) + 1
                last = hi - 1
                success = True if term[i, last] else (False if trunc[i, last] else None)
                yield {
                    "input_ids": tokens[i, lo:hi].reshape(-1),
                    "loss_mask": np.tile(mask_row, hi - lo),
                    "sample_id": env * EPISODE_STRIDE + self.start + lo,
                    "episode_id": int(episode[i, lo]),
                    "step_index": int(step_index[i, lo]),
                    "reward": float(reward[i, lo:hi].sum()),
                    "success": success,
                    "source": "env_batch",
                }


def _host(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class RunnerSettings:
    """The settings :class:`EnvRunner` and the JAX runner share: checked, kept, and
    stored with a state (:meth:`_identity`), which :meth:`_check_fits` compares."""

    env: BatchedEnv
    spec: EnvSpec
    num_envs: int
    seed: int
    policy: Callable[..., Any]
    autoreset: str
    reset_pool_size: int
    final_obs: bool
    first_env: int

    def __init__(
        self,
        env: Any,
        *,
        num_envs: int,
        seed: int = 0,
        policy: str | Callable[..., Any] = "random",
        autoreset: str = "next_step",
        reset_pool_size: int = 64,
        final_obs: bool = True,
        first_env: int = 0,
    ) -> None:
        self.num_envs = n = check_num_envs(num_envs)
        if autoreset not in AUTORESETS:
            raise ConfigError(
                f"must be one of {', '.join(AUTORESETS)}, got {autoreset!r}", path=("autoreset",)
            )
        if reset_pool_size < 1:
            raise ConfigError(f"must be > 0, got {reset_pool_size}", path=("reset_pool_size",))
        if policy == "random":
            self.policy = self._random_policy()
        elif callable(policy):
            self.policy = policy
        else:
            raise ConfigError(f"must be 'random' or a callable, got {policy!r}", path=("policy",))
        self.env = env = self._wrap(env)
        self.spec, self.seed = env.spec, seed
        self.autoreset, self.reset_pool_size = autoreset, reset_pool_size
        self.final_obs, self.first_env = final_obs, first_env
        self._setup(np.arange(first_env, first_env + n))

    def _random_policy(self) -> Callable[..., Any]:
        """The policy ``"random"`` names."""
        raise NotImplementedError

    def _wrap(self, env: Any) -> BatchedEnv:
        """The env as the runner calls it."""
        return env  # type: ignore[no-any-return]

    def _setup(self, index: np.ndarray) -> None:
        """The rest of the runner, for the envs ``index`` (the settings are kept)."""
        raise NotImplementedError

    _FITS = ("seed", "num_envs", "first_env", "autoreset", "final_obs", "reset_pool_size")

    def _identity(self, kind: str) -> dict[str, Any]:
        """What a state needs to fit this runner: its settings, the env's spec and the policy."""
        from laden.digest import digest

        policy = self.policy
        return {
            "kind": kind,
            "seed": int(self.seed),
            "num_envs": self.num_envs,
            "first_env": int(self.first_env),
            "autoreset": self.autoreset,
            "final_obs": bool(self.final_obs),
            "reset_pool_size": self.reset_pool_size if self.autoreset == "pool" else None,
            "spec": digest(repr(self.spec)),
            "policy": f"{getattr(policy, '__module__', '')}:{getattr(policy, '__qualname__', '')}",
        }

    def _check_fits(self, state: Any, kind: str, *, max_t: int) -> dict[str, np.ndarray]:
        """A DataError unless ``state`` is a state of ``kind`` that fits this runner; its
        per-env counters (checked: one value per env)."""
        from laden.stateful import check_state

        expected = self._identity(kind)
        check_state(
            state,
            kind=kind,
            fits={k: v for k, v in expected.items() if k != "kind"},
            within={"t": (0, max_t)},
            holds="this runner has " + ", ".join(f"{k} {expected[k]!r}" for k in self._FITS),
        )
        counters: dict[str, np.ndarray] = {}
        for name in _COUNTERS:
            value = np.array(state[name])
            if value.shape != (self.num_envs,):
                raise DataError(
                    f"the state's {name} has shape {value.shape}, want ({self.num_envs},)"
                )
            counters[name] = value
        return counters


#: A runner state's per-env counters.
_COUNTERS = ("episode", "ep_step", "ep_return", "pending", "alive")


class EnvRunner(RunnerSettings):
    """Steps ``num_envs`` envs of a numpy batched env under a policy, in chunks.

    :param env: a :class:`~laden.stream.envs.base.BatchedEnv` with ``backend`` ``"numpy"``
        or ``"torch"`` (run through :class:`TorchBoundary`: the state stays torch,
        the columns are recorded on the host).
    :param num_envs: envs stepped together.
    :param seed: the run's seed; env ``i``'s keys derive from ``(seed, i)`` only.
    :param policy: ``"random"`` or a callable ``policy(obs, keys, spec) -> action``.
    :param autoreset: ``next_step``, ``same_step``, ``disabled`` or ``pool``.
    :param reset_pool_size: reset states precomputed for ``pool``.
    :param final_obs: record ``final_obs`` (needed for transitions with same-step resets).
    :param first_env: the index of the first env (run envs ``first_env ... + num_envs``).

    A policy with ``obs_independent = True`` (``random``) is called once per
    chunk with the keys of every step, ``[T * N]``, instead of once per step.
    """

    def _random_policy(self) -> Callable[..., Any]:
        return random_policy

    def _wrap(self, env: Any) -> BatchedEnv:
        if getattr(env, "backend", "numpy") == "torch":
            return TorchBoundary(env)
        return env  # type: ignore[no-any-return]

    def _setup(self, index: np.ndarray) -> None:
        env, seed, n = self.env, self.seed, self.num_envs
        self.reset_keys = env_keys(seed, index, RESET)
        self.policy_keys = env_keys(seed, index, POLICY)
        self._ids = index.astype(np.int64) * EPISODE_STRIDE
        self.episode = np.zeros(n, dtype=np.int64)
        self.ep_step = np.zeros(n, dtype=np.int32)
        self.ep_return = np.zeros(n, dtype=np.float64)
        self.pending = np.zeros(n, dtype=bool)  # next_step: reset at the next step
        self.alive = np.ones(n, dtype=bool)  # disabled: still running
        self.t = 0
        self.state: Any = None
        self.obs: Any = None
        self.pool: tuple[Any, Any] | None = None
        # same_step / next_step: each env's next reset state, computed for many envs in
        # one env.reset call (a cache: a pure function of the keys and episode numbers)
        self._next: tuple[Any, Any] | None = None
        self._next_episode = np.full(n, -1, dtype=np.int64)
        if self.autoreset == "pool":
            if hasattr(env, "reset_where"):
                raise ConfigError(
                    "'pool' needs a functional env (state made of arrays); this env "
                    "resets in place: use same_step",
                    path=("autoreset",),
                )
            pool_keys = env_keys(seed, np.arange(self.reset_pool_size), POOL)
            self.pool = self._call_reset(pool_keys, what="the reset pool")

    # ------------------------------------------------------------ env calls

    def _call_reset(
        self, keys: np.ndarray, *, what: str, envs: np.ndarray | None = None
    ) -> tuple[Any, Any]:
        try:
            return self.env.reset(keys)
        except EnvStepError:
            raise
        except Exception as exc:
            error = self._locate(exc, keys, lambda j: self.env.reset(keys[j : j + 1]), what)
            if envs is not None and error.env_index is not None:
                j = error.env_index - self.first_env
                error = EnvStepError(
                    error.reason, env_index=self.first_env + int(envs[j]), key=error.key
                )
            raise error from exc

    def _call_step(self, state: Any, action: np.ndarray) -> tuple[Any, Any, Any, Any, Any]:
        try:
            out = self.env.step(state, action)
        except EnvStepError:
            raise
        except Exception as exc:
            raise self._step_error(exc, state, action) from exc
        reward = out[2]
        if not np.isfinite(reward).all():
            j = int(np.flatnonzero(~np.isfinite(reward))[0])
            raise EnvStepError(
                f"the env returned reward {reward[j]} at step {self.t}",
                env_index=self.first_env + j,
                key=fold(self.reset_keys, self.episode)[j],
            )
        return out

    def _step_error(self, exc: Exception, state: Any, action: np.ndarray) -> EnvStepError:
        """The env whose step fails alone, with its key (the error path only)."""
        keys = fold(self.reset_keys, self.episode)

        def one(j: int) -> Any:
            return self.env.step(tree_take(state, slice(j, j + 1)), action[j : j + 1])

        return self._locate(exc, keys, one, f"step {self.t}")

    def _locate(
        self, exc: Exception, keys: np.ndarray, one: Callable[[int], Any], what: str
    ) -> EnvStepError:
        """Find the env that fails alone (the error path only: one call per env)."""
        if not hasattr(self.env, "reset_where"):
            for j in range(len(keys)):
                try:
                    one(j)
                except Exception as single:
                    return EnvStepError(
                        f"{what} failed: {type(single).__name__}: {single}",
                        env_index=self.first_env + j if what != "the reset pool" else j,
                        key=keys[j],
                    )
        return EnvStepError(f"{what} failed for the batch: {type(exc).__name__}: {exc}")

    def _reset_where(self, state: Any, obs: Any, mask: np.ndarray) -> tuple[Any, Any]:
        """Reset the envs in ``mask`` (to episode ``self.episode``)."""
        reset_where = getattr(self.env, "reset_where", None)
        if reset_where is not None:
            keys = fold(self.reset_keys, self.episode)
            return reset_where(state, mask, keys)  # type: ignore[no-any-return]
        return self._reset_envs(state, obs, np.flatnonzero(mask))

    def _reset_envs(self, state: Any, obs: Any, envs: np.ndarray) -> tuple[Any, Any]:
        """Reset the envs ``envs`` (ascending indices) to their episode ``self.episode``.

        The reset states are gathered from the pool (``pool``) or from the
        buffer of next resets (:meth:`_next_resets`), and written into what
        ``step`` returned.
        """
        if getattr(self.env, "reset_where", None) is not None:
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[envs] = True
            return self._reset_where(state, obs, mask)
        n = self.num_envs
        if self.pool is None and envs.size == n and (self._next_episode != self.episode).all():
            # every env resets and none has its reset computed ahead: the reset's
            # arrays are the new state (no buffer to fill, nothing to copy)
            keys = fold(self.reset_keys, self.episode)
            return self._call_reset(keys, what=f"reset at step {self.t}", envs=envs)
        if self.pool is not None:
            source_state, source_obs = self.pool
            rows: np.ndarray | slice = integers_below(
                fold(self.reset_keys[envs], self.episode[envs]), len(source_obs)
            )
        else:
            source_state, source_obs = self._next_resets(envs)
            rows = envs
        where: np.ndarray | slice = envs
        if self.pool is None and envs.size == n:  # every env: copy the buffer whole
            rows = where = slice(None)
        if type(state) is dict and all(type(v) is np.ndarray for v in state.values()):
            state = {k: _put(v, where, source_state[k][rows]) for k, v in state.items()}
        else:
            state = tree_map(
                lambda leaf, sub: _put(leaf, where, _take(sub, rows)), state, source_state
            )
        if _is_leaf(obs, state):
            return state, obs  # the observation is a state leaf: already replaced
        return state, _put(obs, where, source_obs[rows])

    def _next_resets(self, envs: np.ndarray) -> tuple[Any, Any]:
        """The buffer whose row ``j`` is env ``j``'s reset into episode ``self.episode[j]``
        for ``envs`` (and into ``self.episode[j] + 1`` for the other envs, when computed).

        A reset is a pure function of (key, episode), so the buffer is refilled only
        when an env in ``envs`` has used its row; then every used row is recomputed
        in one ``env.reset`` call, instead of one call per step that has a reset
        (when episodes end at different steps: about 2x faster rollouts of 256 grid
        envs with staggered episodes), at the cost of one extra state per env.
        """
        episode = self.episode
        if self._next is not None and (self._next_episode[envs] == episode[envs]).all():
            return self._next
        want = episode + 1
        want[envs] = episode[envs]
        stale = np.flatnonzero(self._next_episode != want)
        keys = fold(self.reset_keys[stale], want[stale])
        fresh = self._call_reset(keys, what=f"reset at step {self.t}", envs=stale)
        if self._next is None or stale.size == self.num_envs:
            self._next = fresh  # the first fill: every row is stale (_next_episode is -1)
        else:
            next_state, next_obs = self._next
            next_state = tree_map(lambda leaf, sub: _put(leaf, stale, sub), next_state, fresh[0])
            if not _is_leaf(next_obs, next_state):
                next_obs = _put(next_obs, stale, fresh[1])
            self._next = (next_state, next_obs)
        self._next_episode[stale] = want[stale]
        return self._next

    def start(self) -> None:
        """Reset every env (episode 0); called by the first :meth:`rollout`."""
        state, obs = self._call_reset(fold(self.reset_keys, self.episode), what="reset")
        if np.shape(obs)[:1] != (self.num_envs,):
            raise DataError(
                f"env.reset returned observations of shape {np.shape(obs)}; "
                f"want ({self.num_envs}, ...)"
            )
        self.state, self.obs = state, obs

    # ------------------------------------------------------------ stepping

    def rollout(self, steps: int) -> Rollout:
        """The next ``steps`` steps of every env as one :class:`Rollout`."""
        if steps < 1:
            raise ConfigError(f"must be > 0, got {steps}", path=("rollout_len",))
        if self.state is None:
            self.start()
        if self.autoreset in ("same_step", "pool"):
            return self._rollout_same_step(steps)
        n, spec = self.num_envs, self.spec
        obs0 = np.asarray(self.obs)
        obs_rec = self._obs_records(steps, obs0)
        act_rec = np.empty((steps, n, *spec.action_shape), dtype=spec.action_dtype)
        rew_rec = np.empty((steps, n), dtype=np.float32)
        term_rec = np.empty((steps, n), dtype=bool)
        trunc_rec = np.empty((steps, n), dtype=bool)
        id_rec = np.empty((steps, n), dtype=np.int64)
        step_rec = np.empty((steps, n), dtype=np.int32)
        active_rec = np.empty((steps, n), dtype=bool)
        # terminal observations, gathered per step and scattered once per chunk
        final_rows: list[np.ndarray] | None = [] if self.final_obs else None
        final_mask = np.zeros((steps, n), dtype=bool)
        ended: list[tuple[np.ndarray, ...]] = []
        mode = self.autoreset
        state, obs = self.state, self.obs
        start = self.t
        planned = self._planned_actions(steps, obs)
        for s in range(steps):
            if planned is None:
                keys = fold(self.policy_keys, self.t)
                action = check_actions(self.policy(obs, keys, spec), spec, n, keys, self.t)
            else:
                action = planned[s]
            obs_rec[s] = obs
            act_rec[s] = action
            np.add(self._ids, self.episode, out=id_rec[s])
            step_rec[s] = self.ep_step
            new_state, new_obs, reward, term, trunc = self._call_step(state, action)
            term = np.asarray(term, dtype=bool)
            trunc = np.asarray(trunc, dtype=bool)
            if mode == "next_step":
                pending = self.pending
                if pending.any():
                    live = ~pending
                    reward = np.where(live, reward, 0.0)
                    term, trunc = term & live, trunc & live
                    self.episode[pending] += 1
                    new_state, new_obs = self._reset_where(new_state, new_obs, pending)
                    self.ep_step[pending] = -1
                    self.ep_return[pending] = 0.0
                    active_rec[s] = live
                else:
                    active_rec[s] = True
                self.ep_step += 1
                self.ep_return += reward
                done = term | trunc
                if done.any():
                    ended.append(self._ended(done, term))
                self.pending = done
            elif mode == "disabled":
                alive = self.alive
                if not alive.all():
                    reward = np.where(alive, reward, 0.0)
                    term, trunc = term & alive, trunc & alive
                    new_obs = _where(alive, new_obs, obs)
                    new_state = _where(alive, new_state, state)
                    self.ep_step += alive
                else:
                    self.ep_step += 1
                active_rec[s] = alive
                self.ep_return += reward
                done = term | trunc
                if done.any():
                    ended.append(self._ended(done, term))
                    self.alive = alive = alive & ~done
                    if not alive.any():
                        if final_rows is not None:
                            final_rows.append(np.asarray(new_obs)[done])
                        final_mask[s] = done
                        self.episode += 1
                        new_state, new_obs = self._call_reset(
                            fold(self.reset_keys, self.episode), what=f"reset at step {self.t}"
                        )
                        self.alive = np.ones(n, dtype=bool)
                        self.ep_step[:] = 0
                        self.ep_return[:] = 0.0
            else:  # same_step, pool
                active_rec[s] = True
                self.ep_step += 1
                self.ep_return += reward
                done = term | trunc
                if done.any():
                    ended.append(self._ended(done, term))
                    if final_rows is not None:
                        final_rows.append(np.asarray(new_obs)[done])
                    final_mask[s] = done
                    self.episode[done] += 1
                    new_state, new_obs = self._reset_where(new_state, new_obs, done)
                    self.ep_step[done] = 0
                    self.ep_return[done] = 0.0
            rew_rec[s] = reward
            term_rec[s] = term
            trunc_rec[s] = trunc
            state, obs = new_state, new_obs
            self.t += 1
        self.state, self.obs = state, obs
        columns: dict[str, Any] = {
            "obs": obs_rec,
            "action": act_rec,
            "reward": rew_rec,
            "terminated": term_rec,
            "truncated": trunc_rec,
            "episode_id": id_rec,
            "step_index": step_rec,
            "active": active_rec,
        }
        return self._finish(columns, obs_rec, final_rows, final_mask, obs, ended, spec, start)

    def _rollout_same_step(self, steps: int) -> Rollout:
        """``same_step`` / ``pool``: the loop records what the env returns, and the episode
        numbers and start rows at the steps where an env is done (they change nowhere
        else); episode ids, step indices, returns and statistics are computed after
        it, over the whole chunk."""
        n, spec = self.num_envs, self.spec
        obs0 = np.asarray(self.obs)
        obs_rec = self._obs_records(steps, obs0)
        rew_rec = np.empty((steps, n), dtype=np.float32)
        term_rec = np.empty((steps, n), dtype=bool)
        trunc_rec = np.empty((steps, n), dtype=bool)
        planned = self._planned_actions(steps, obs0)
        act_rec = (
            planned
            if planned is not None
            else np.empty((steps, n, *spec.action_shape), dtype=spec.action_dtype)
        )
        # zeroed now and written at each done step (no rows gathered and scattered later)
        final = self._final_records(obs_rec) if self.final_obs else None
        done_t: list[int] = []
        done_envs: list[np.ndarray] = []
        # the row the current episode started at: negative for one begun before this chunk
        started = (-self.ep_step).astype(np.int32)
        step, episode = self.env.step, self.episode
        episodes, starts = [episode.copy()], [started]
        state, obs = self.state, self.obs
        t0 = self.t
        # the rewards summed per run of rows between done steps while those rows are hot
        # (None past _SLICED_SUMS runs: then _chunk_returns sums them all at once)
        sums: list[np.ndarray] | None = []
        lo = 0
        for s in range(steps):
            if planned is None:
                keys = fold(self.policy_keys, t0 + s)
                act_rec[s] = check_actions(self.policy(obs, keys, spec), spec, n, keys, t0 + s)
            obs_rec[s] = obs
            try:
                state, obs, reward, term, trunc = step(state, act_rec[s])
            except EnvStepError:
                raise
            except Exception as exc:
                self.t = t0 + s
                raise self._step_error(exc, state, act_rec[s]) from exc
            rew_rec[s] = reward
            term_rec[s] = term
            trunc_rec[s] = trunc
            if _count_nonzero(term) or _count_nonzero(trunc):
                done = term_rec[s] | trunc_rec[s]
                envs = np.flatnonzero(done)
                done_t.append(s)
                if sums is not None and len(sums) < _SLICED_SUMS:
                    sums.append(rew_rec[lo : s + 1].sum(axis=0, dtype=np.float64))
                    lo = s + 1
                else:
                    sums = None
                done_envs.append(envs)
                if final is not None:
                    if envs.size == n:
                        final[s] = obs
                    else:
                        final[s, envs] = np.asarray(obs)[envs]
                episode += done
                started = started.copy()
                started[envs] = s + 1
                episodes.append(episode.copy())
                starts.append(started)
                self.t = t0 + s
                state, obs = self._reset_envs(state, obs, envs)
        # rows [bounds[k], bounds[k + 1]) have the episode numbers and start rows episodes[k]
        bounds = [0, *(t + 1 for t in done_t), steps]
        id_rec, step_index = self._episode_columns(bounds, episodes, starts)
        self.t = t0 + steps
        # per done event (in step order): its row and env
        counts = [len(e) for e in done_envs]
        t_end = np.repeat(np.asarray(done_t, dtype=np.int64), counts)
        j_end = np.concatenate(done_envs) if done_envs else np.zeros(0, dtype=np.int64)
        group_sums = None
        if sums is not None:
            if lo < steps:
                sums.append(rew_rec[lo:].sum(axis=0, dtype=np.float64))
            group_sums = np.stack(sums)
        returns, carried = self._chunk_returns(
            rew_rec, done_t, t_end, j_end, id_rec, group_sums=group_sums
        )
        ended = [
            (
                j_end + self.first_env,
                id_rec[t_end, j_end],
                returns,
                (step_index[t_end, j_end] + 1).astype(np.int32),
                term_rec[t_end, j_end],
            )
        ]
        self.ep_step = (steps - started).astype(np.int32)
        self.ep_return = carried
        self.state, self.obs = state, obs
        columns: dict[str, Any] = {
            "obs": obs_rec,
            "action": act_rec,
            "reward": rew_rec,
            "terminated": term_rec,
            "truncated": trunc_rec,
            "episode_id": id_rec,
            "step_index": step_index,
            "active": np.ones((steps, n), dtype=bool),
        }
        final_mask = np.zeros((steps, n), dtype=bool)
        final_mask[t_end, j_end] = True
        if final is not None:
            columns["final_obs"] = final
        return self._finish(columns, obs_rec, None, final_mask, obs, ended, spec, t0)

    def _episode_columns(
        self, bounds: list[int], episodes: list[np.ndarray], starts: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``episode_id`` and ``step_index`` ``[T, N]``: rows ``bounds[k]`` to
        ``bounds[k + 1]`` have the episode numbers ``episodes[k]`` and start rows
        ``starts[k]``; each written once, group by group (a few groups) or repeated."""
        steps, n = bounds[-1], self.num_envs
        rows = np.arange(steps, dtype=np.int32)[:, None]
        if len(episodes) > _SLICED_SUMS:
            counts = np.diff(bounds)
            ids = np.repeat(np.stack(episodes) + self._ids, counts, axis=0)
            return ids, rows - np.repeat(np.stack(starts), counts, axis=0)
        ids = np.empty((steps, n), dtype=np.int64)
        step_index = np.empty((steps, n), dtype=np.int32)
        for k in range(len(episodes)):
            lo, hi = bounds[k], bounds[k + 1]
            if lo < hi:
                np.add(episodes[k], self._ids, out=ids[lo:hi])
                np.subtract(rows[lo:hi], starts[k], out=step_index[lo:hi])
        return ids, step_index

    def _chunk_returns(
        self,
        reward: np.ndarray,
        done_t: list[int],
        t_end: np.ndarray,
        j_end: np.ndarray,
        id_rec: np.ndarray,
        group_sums: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The returns of the episodes ending at ``(t_end, j_end)`` and every env's running
        return after the chunk, summed in float64: first over the rows between steps
        where some env is done (``reduceat`` down the chunk: ``[G, N]`` sums), then
        per env over its episodes' runs of those groups (``reduceat`` over the
        env-major ``[N, G]``). No running sum over the whole ``[T, N]`` chunk.

        A non-finite reward makes its group's sum non-finite: then the first one
        is reported with its step, env and key.
        """
        steps, n = reward.shape
        bounds = np.array([0, *(t + 1 for t in done_t if t + 1 < steps)], dtype=np.int64)
        groups = bounds.size
        if group_sums is not None:  # summed already (``[G, N]``, in the same order)
            pass
        elif groups <= _SLICED_SUMS:
            # a few groups: a sum per slice is ~3x faster than reduceat down axis 0 (both
            # add the rows in order, so the same float64 bytes)
            group_sums = np.empty((groups, n), dtype=np.float64)
            highs = [*bounds[1:].tolist(), steps]
            for g, (lo, hi) in enumerate(zip(bounds.tolist(), highs, strict=True)):
                np.sum(reward[lo:hi], axis=0, dtype=np.float64, out=group_sums[g])
        else:
            group_sums = np.add.reduceat(reward, bounds, axis=0, dtype=np.float64)
        if not np.isfinite(group_sums).all():
            t, j = divmod(int(np.flatnonzero(~np.isfinite(reward.ravel()))[0]), n)
            key = fold(self.reset_keys[j : j + 1], id_rec[t, j] - self._ids[j])[0]
            raise EnvStepError(
                f"the env returned reward {reward[t, j]} at step {self.t - steps + t}",
                env_index=self.first_env + j,
                key=key,
            )
        g_end = np.searchsorted(bounds, t_end, side="right") - 1  # the group ending there
        # segments of the env-major [N, G] sums: each env's group 0, and the group
        # after each of its resets
        after = t_end < steps - 1
        starts = np.concatenate(
            [np.arange(n, dtype=np.int64) * groups, j_end[after] * groups + g_end[after] + 1]
        )
        starts.sort()
        sums = np.add.reduceat(np.ascontiguousarray(group_sums.T).reshape(-1), starts)
        # the segment holding each end, and each env's last segment
        ends = np.searchsorted(starts, j_end * groups + g_end, side="right") - 1
        last = np.searchsorted(starts, np.arange(1, n + 1, dtype=np.int64) * groups) - 1
        first = starts[ends] == j_end * groups  # the episode began before this chunk
        returns = sums[ends] + np.where(first, self.ep_return[j_end], 0.0)
        carried = sums[last] + np.where(starts[last] % groups == 0, self.ep_return, 0.0)
        done_last = np.zeros(n, dtype=bool)
        done_last[j_end[t_end == steps - 1]] = True
        carried[done_last] = 0.0
        return returns, carried

    def _finish(
        self,
        columns: dict[str, Any],
        obs_rec: np.ndarray,
        final_rows: list[np.ndarray] | None,
        final_mask: np.ndarray,
        obs: Any,
        ended: Any,
        spec: Any,
        start: int,
    ) -> Rollout:
        """The rollout of recorded columns; ``final_obs`` from ``final_rows`` where
        ``final_mask`` (when recorded and not in ``columns`` already)."""
        if final_rows is not None:
            final = self._final_records(obs_rec)
            if final_rows:
                final[final_mask] = np.concatenate(final_rows)
            columns["final_obs"] = final
        return Rollout(
            columns=columns,
            last_obs=np.array(obs),
            episodes=_episodes(ended),
            spec=spec,
            start=start,
            first_env=self.first_env,
            final_mask=final_mask,
        )

    def _obs_records(self, steps: int, obs0: np.ndarray) -> np.ndarray:
        """The chunk's ``obs`` column, ``[T, N, ...]``; with ``final_obs``, the first half
        of one allocation whose second half becomes that column (:meth:`_final_records`).

        One block instead of two: freeing two large blocks per chunk pushes glibc past
        its trim threshold, so the next chunk faults its memory in again page by page
        (measured: ~1,200 page faults, a third of a 256-env grid chunk on the 2-core VM).
        """
        shape = (steps, *obs0.shape)
        if not self.final_obs:
            return np.empty(shape, dtype=obs0.dtype)
        obs_rec: np.ndarray = np.empty((2, *shape), dtype=obs0.dtype)[0]
        return obs_rec

    @staticmethod
    def _final_records(obs_rec: np.ndarray) -> np.ndarray:
        """The zeroed ``final_obs`` column beside ``obs_rec`` (see :meth:`_obs_records`)."""
        block = obs_rec.base
        if isinstance(block, np.ndarray) and block.shape == (2, *obs_rec.shape):
            final: np.ndarray = block[1]
            final.fill(0)
            return final
        return np.zeros(obs_rec.shape, dtype=obs_rec.dtype)

    def _planned_actions(self, steps: int, obs: Any) -> np.ndarray | None:
        """A whole chunk's actions at once, for a policy that ignores observations."""
        if not getattr(self.policy, "obs_independent", False):
            return None
        n, spec = self.num_envs, self.spec
        t = np.arange(self.t, self.t + steps, dtype=np.uint64)
        keys = fold(self.policy_keys[None, :], t[:, None]).reshape(-1)
        if self.policy is random_policy and spec.action_shape == () and spec.discrete:
            # random_policy's draw (integers_below of each key) in place in keys, ours
            high = spec.action_high
            if high is None:
                raise ConfigError(
                    "the env's spec has no action_high to draw from", path=("policy",)
                )
            drawn: np.ndarray = below_into(keys, high).astype(spec.action_dtype).reshape(steps, n)
            return drawn
        actions = self.policy(None, keys, spec)
        if self.policy is random_policy:  # in range and of the spec's dtype by construction
            return np.asarray(actions).reshape(steps, n, *spec.action_shape)
        try:
            flat = check_actions(actions, self.spec, steps * n, keys, self.t)
        except EnvStepError as exc:
            j = exc.env_index or 0
            raise EnvStepError(
                exc.reason.replace(f"at step {self.t}", f"at step {self.t + j // n}"),
                env_index=self.first_env + j % n,
                key=keys[j],
            ) from None
        return flat.reshape(steps, n, *self.spec.action_shape)

    def _ended(self, done: np.ndarray, term: np.ndarray) -> tuple[np.ndarray, ...]:
        j = np.flatnonzero(done)
        return (
            j + self.first_env,
            self._ids[j] + self.episode[j],
            self.ep_return[j],  # fancy indexing copies
            self.ep_step[j],
            term[j],
        )

    def __iter__(self) -> Iterator[Rollout]:  # pragma: no cover - convenience
        while True:
            yield self.rollout(64)

    def state_dict(self) -> dict[str, Any]:
        """Where the run is: the step, per-env counters, env state and observation.

        A copy: the runner writes resets into its own arrays, so the state taken
        stays as it was. ``state`` and ``obs`` are None before the first
        rollout; an observation that is a leaf of the env state (the grid env's)
        is the same array as that leaf in the copy too. The settings a state
        needs to fit (seed, envs, autoreset, the env's spec, the policy) are
        stored with it and checked by :meth:`load_state_dict`.
        """
        copies: dict[int, Any] = {}

        def copy(leaf: Any) -> Any:
            if leaf is None:
                return None
            if id(leaf) not in copies:
                copies[id(leaf)] = (
                    leaf.copy()
                    if isinstance(leaf, np.ndarray)
                    else np.array(_host(leaf), copy=True)
                )
            return copies[id(leaf)]

        return {
            **self._identity("laden.env_runner"),
            "t": int(self.t),
            "episode": self.episode.copy(),
            "ep_step": self.ep_step.copy(),
            "ep_return": self.ep_return.copy(),
            "pending": self.pending.copy(),
            "alive": self.alive.copy(),
            "state": tree_map(copy, self.state),
            "obs": copy(self.obs),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` (same env, seed, envs, autoreset and policy).

        A state of another run, or a started one of an env that keeps its state
        inside its own objects (``reset_where``: gymnasium, puzzles), is refused
        with a DataError before anything is changed.
        """
        n = self.num_envs
        found = self._check_fits(state, "laden.env_runner", max_t=1 << 62)
        dtypes = (np.int64, np.int32, np.float64, np.bool_, np.bool_)
        counters: dict[str, np.ndarray] = {
            name: found[name].astype(dtype) for name, dtype in zip(_COUNTERS, dtypes, strict=True)
        }
        started = state["state"] is not None or state["obs"] is not None
        if started and hasattr(self.env, "reset_where"):
            raise DataError(
                "this env keeps its state inside its own objects (reset_where), so a started "
                "run cannot be put back from a state; replay it from step 0 instead"
            )
        copies: dict[int, Any] = {}

        def copy(leaf: Any) -> Any:  # the caller's arrays stay the caller's
            if leaf is None:
                return None
            if id(leaf) not in copies:
                copies[id(leaf)] = np.array(_host(leaf), copy=True)
            return copies[id(leaf)]

        env_state, obs = tree_map(copy, state["state"]), copy(state["obs"])
        if started and np.shape(obs)[:1] != (n,):
            raise DataError(f"the state's obs has shape {np.shape(obs)}, want ({n}, ...)")
        self.t = int(state["t"])
        for name, value in counters.items():
            setattr(self, name, value)
        self.state, self.obs = env_state, obs


def _episodes(ended: Sequence[tuple[Any, ...]]) -> dict[str, np.ndarray]:
    names = ("env", "episode_id", "return", "length", "terminated")
    dtypes = (np.int64, np.int64, np.float64, np.int32, bool)
    if not ended:
        return {k: np.zeros(0, dtype=d) for k, d in zip(names, dtypes, strict=True)}
    if len(ended) == 1:  # one chunk's ends, already in order
        return {
            k: np.asarray(ended[0][i]).astype(d, copy=False)
            for i, (k, d) in enumerate(zip(names, dtypes, strict=True))
        }
    return {
        k: np.concatenate([e[i] for e in ended]).astype(d)
        for i, (k, d) in enumerate(zip(names, dtypes, strict=True))
    }
