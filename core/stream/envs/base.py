"""The functional batched env protocol, its spec, per-env keys and the errors it raises.

A batched env steps ``N`` environments in lockstep over arrays whose first
axis is the env::

    state, obs = env.reset(keys)                                  # keys: one per env
    state, obs, reward, terminated, truncated = env.step(state, action)

``state`` is an array or a dict / tuple of arrays (a pytree), each with the env
axis first; ``obs`` likewise; ``reward`` ``[N]`` float32, ``terminated`` and
``truncated`` ``[N]`` bool. Neither call may change its inputs in place.

**Keys depend on (seed, env index) only**, never on ``num_envs``: on numpy
and torch, env ``i``'s key is the 64-bit state of ``SeedSequence([seed, i,
crc32(purpose)])``; episode ``k`` of env ``i`` resets from ``fold(key_i, k)``,
output ``k`` of the splitmix64 stream starting at ``key_i``, computed for all
envs at once. On JAX, env ``i``'s key is
``fold_in(fold_in(PRNGKey(seed), i), crc32(purpose))`` and episode ``k``'s
``fold_in(key_i, k)``. So env ``i``'s stream is the same whatever
``num_envs`` is, and env ``i + 1`` of seed ``s - 1`` is a different stream
from env ``i`` of seed ``s`` (gymnasium and envpool seed env ``i`` with
``seed + i``, which makes them equal).
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import attrs
import numpy as np

from laden.errors import ConfigError, LadenError

__all__ = [
    "EPISODE_STRIDE",
    "BatchedEnv",
    "EnvSpec",
    "EnvStepError",
    "Policy",
    "below_into",
    "bits",
    "env_keys",
    "fold",
    "fold_terms",
    "integers_below",
    "load_object",
    "mix64",
    "mix64_into",
    "purpose_tag",
    "tree_map",
    "tree_nbytes",
    "tree_take",
    "uniform",
]

#: ``episode_id = env_index * EPISODE_STRIDE + episode``: unique per (env, episode), any num_envs.
EPISODE_STRIDE = 1 << 32

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32, _S11 = (np.uint64(s) for s in (30, 27, 31, 32, 11))


class EnvStepError(LadenError):
    """One env of a batch failed: names the env index, its key and the step."""

    def __init__(self, reason: str, *, env_index: int | None = None, key: Any = None) -> None:
        self.reason = reason
        self.env_index = env_index
        self.key = key
        where = ""
        if env_index is not None:
            where = f"env {env_index}"
            if key is not None:
                where += f" (key {_show_key(key)})"
            where += ": "
        super().__init__(where + reason)


def _show_key(key: Any) -> str:
    array = np.asarray(key)
    if array.ndim == 0 and array.dtype.kind == "u":
        return f"{int(array):#018x}"
    return "[" + ", ".join(str(int(v)) for v in array.ravel()) + "]"


@attrs.frozen(kw_only=True)
class EnvSpec:
    """What one env takes and gives (shapes without the env axis).

    :param obs_shape: one env's observation shape.
    :param obs_dtype: the observation dtype.
    :param obs_high: integer observations are in ``[0, obs_high)`` (token ids);
        None for float observations.
    :param action_shape: one env's action shape (``()`` for one discrete action).
    :param action_dtype: the action dtype (integer: discrete, float: continuous).
    :param action_high: discrete actions are in ``[0, action_high)``; for float
        actions the upper bound (with ``action_low``).
    :param action_low: float actions' lower bound.
    :param max_episode_steps: the env truncates episodes at this length (None: never).
    """

    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype[Any] = attrs.field(converter=np.dtype)
    obs_high: int | None = None
    action_shape: tuple[int, ...] = ()
    action_dtype: np.dtype[Any] = attrs.field(default=np.dtype(np.int64), converter=np.dtype)
    action_high: Any = None
    action_low: Any = 0
    max_episode_steps: int | None = None

    @property
    def discrete(self) -> bool:
        return self.action_dtype.kind in "iu"


@runtime_checkable
class BatchedEnv(Protocol):
    """``N`` environments stepped in lockstep; see the module docstring for the contract.

    ``backend`` is ``"numpy"``, ``"torch"`` (state, actions and outputs are torch
    tensors; :class:`~laden.stream.envs.runner.EnvRunner` keeps the state in torch
    and records host copies) or ``"jax"``. An env
    whose state is not arrays (a wrapper around stateful envs) also defines
    ``reset_where(state, mask, keys) -> (state, obs)``, resetting only the
    envs where ``mask`` is True (keys for every env are passed).
    """

    spec: EnvSpec
    backend: ClassVar[str]

    def reset(self, keys: Any) -> tuple[Any, Any]: ...

    def step(self, state: Any, action: Any) -> tuple[Any, Any, Any, Any, Any]: ...


class Policy(Protocol):
    """``policy(obs, keys, spec) -> action``: ``keys`` are per-env, per-step keys."""

    def __call__(self, obs: Any, keys: Any, spec: EnvSpec) -> Any: ...


# ----------------------------------------------------------------- keys


def purpose_tag(purpose: str) -> int:
    """The 32-bit tag of a purpose (``"env.reset"``), as :func:`laden.seeding.rng_for` uses."""
    return zlib.crc32(purpose.encode())


def env_keys(seed: int, indices: Any, purpose: str) -> np.ndarray:
    """``uint64[len(indices)]``: env ``i``'s key from ``SeedSequence([seed, i, purpose])``.

    One SeedSequence per env, made once per run (not per step).
    """
    if seed < 0:
        raise ConfigError(f"must be >= 0, got {seed}", path=("seed",))
    tag = purpose_tag(purpose)
    out = np.empty(len(indices), dtype=np.uint64)
    for j, i in enumerate(np.asarray(indices).tolist()):
        state = np.random.SeedSequence([seed, int(i), tag]).generate_state(1, np.uint64)
        out[j] = state[0]
    return out


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over a uint64 array (wrapping arithmetic, vectorized)."""
    return _mix_in_place(np.array(x, dtype=np.uint64))


def _mix_in_place(z: np.ndarray) -> np.ndarray:
    shifted = np.empty_like(z)  # one scratch array for the three shifts
    z ^= np.right_shift(z, _S30, out=shifted)
    z *= _M1
    z ^= np.right_shift(z, _S27, out=shifted)
    z *= _M2
    z ^= np.right_shift(z, _S31, out=shifted)
    return z


def fold_terms(data: Any) -> np.ndarray:
    """:func:`fold`'s counter terms, ``(data + 1) * golden`` (uint64, wrapping): ``fold(keys,
    data)`` is ``mix64_into(keys + fold_terms(data))``, for data fixed ahead of time."""
    d = np.asarray(data, dtype=np.uint64)
    if d.ndim == 0:
        d = d.reshape(1)  # arrays wrap silently; numpy scalars would warn on overflow
    out: np.ndarray = (d + np.uint64(1)) * _GOLDEN
    return out


def mix64_into(z: np.ndarray) -> np.ndarray:
    """:func:`mix64` in place: ``z`` (uint64, the caller's to overwrite) is returned mixed."""
    return _mix_in_place(z)


def below_into(raw: np.ndarray, high: Any) -> np.ndarray:
    """:func:`integers_below` in place: ``raw`` (uint64, the caller's to overwrite) becomes
    the integers (the same values), returned as ``int64`` (a view of ``raw``)."""
    raw >>= _S32
    raw *= np.asarray(high, dtype=np.uint64)
    raw >>= _S32
    out: np.ndarray = raw.view(np.int64)
    return out


def fold(keys: np.ndarray, data: Any) -> np.ndarray:
    """A new key per env from ``keys`` and ``data`` (an int, or an array broadcasting with keys).

    ``mix64(key + (data + 1) * golden)``: output ``data`` of the splitmix64
    stream that starts at ``key`` (one mix per key, vectorized).
    """
    return _mix_in_place(np.add(keys, fold_terms(data), dtype=np.uint64))


def bits(keys: np.ndarray, count: int) -> np.ndarray:
    """``uint64[N, count]``: ``count`` random words per key (one: the key itself, already mixed)."""
    if count == 1:
        return keys[:, None]  # a key is already a splitmix64 output: its own bits
    counter = (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)[None, :]
    return _mix_in_place(keys[:, None] + counter)


def integers_below(raw: np.ndarray, high: Any) -> np.ndarray:
    """Integers in ``[0, high)`` from raw uint64 bits (multiply-shift; exact, no floats)."""
    top = np.right_shift(np.asarray(raw, dtype=np.uint64), _S32)
    bound = np.asarray(high, dtype=np.uint64)
    if isinstance(top, np.ndarray) and np.broadcast_shapes(top.shape, bound.shape) == top.shape:
        top *= bound  # in place: no temporaries on the hot path
        top >>= _S32
    else:
        top = (top * bound) >> _S32
    out: np.ndarray = np.asarray(top).view(np.int64)  # below 2**32: the same bits
    return out


def uniform(raw: np.ndarray) -> np.ndarray:
    """Floats in ``[0, 1)`` from raw uint64 bits (53 bits each)."""
    out: np.ndarray = (raw >> _S11).astype(np.float64) * (1.0 / (1 << 53))
    return out


# ----------------------------------------------------------------- pytrees


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """``fn`` over the leaves of a dict / tuple / list / NamedTuple of arrays."""
    if isinstance(tree, Mapping):
        return {k: tree_map(fn, v, *(r[k] for r in rest)) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(tree_map(fn, *parts) for parts in zip(tree, *rest, strict=True)))
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, *parts) for parts in zip(tree, *rest, strict=True))
    return fn(tree, *rest)


def tree_take(tree: Any, index: Any) -> Any:
    """The envs ``index`` of every leaf (a slice keeps the env axis)."""
    return tree_map(lambda leaf: leaf[index], tree)


def tree_nbytes(tree: Any) -> int:
    """Bytes held by the leaves of a pytree."""
    total = 0

    def add(leaf: Any) -> None:
        nonlocal total
        total += int(getattr(leaf, "nbytes", 0))

    tree_map(add, tree)
    return total


def load_object(spec: str, *, setting: str) -> Any:
    """``pkg.mod:attr`` -> the object; a ConfigError names ``setting`` otherwise."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"must be 'pkg.module:name', got {spec!r}", path=(setting,))
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module!r} ({exc})", path=(setting,)) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{module!r} has no {attr!r}", path=(setting,)) from None
    return obj
