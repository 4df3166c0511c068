"""``grid``: a small ARC-like grid environment, in numpy, torch and JAX, with the same rules.

Each env holds a *working* grid and a *target* grid (``height x width`` cells,
``colors`` colors). At reset the target is random and the working grid equals
it except for up to ``noise`` cells, each recoloured. An action is one point
action, ``(row * width + col) * colors + color``: paint that cell. The reward
is the change in similarity (matching cells / cells), so a correct paint earns
``+1 / cells`` and breaking a cell ``-1 / cells``; an episode terminates when
the grids match and is truncated after ``max_episode_steps`` steps. The
observation is ``[2, height, width]`` int8: the working grid, then the target.

:class:`GridEnv` (numpy), :class:`GridEnvTorch` (torch tensors on any device)
and :class:`GridEnvJax` (JAX, one env written plainly, batched with ``vmap``
and compiled with ``jit``) give identical steps from the same state. The torch
env draws its resets from the same ``uint64`` keys as the numpy one (so whole
rollouts match); the JAX env from JAX keys, so tests compare it from the same
initial grids (:meth:`GridEnv.initial_state`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import numpy as np

from laden.errors import ConfigError
from laden.hookspecs import hookimpl
from laden.plugins.sources.env_batch import EnvBatchSource
from laden.registry import Registry
from laden.stream.envs.base import (
    EnvSpec,
    EnvStepError,
    below_into,
    fold_terms,
    mix64_into,
)

__all__ = [
    "GridConfig",
    "GridEnv",
    "GridEnvJax",
    "GridEnvTorch",
    "GridSource",
    "make",
    "make_torch",
    "oracle_policy",
]


_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _at_least(low: int) -> Any:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"must be an integer >= {low}, got {value!r}", path=(attribute.name,))

    return check


@attrs.frozen(kw_only=True)
class GridConfig:
    """The rules' sizes.

    :param height: rows per grid.
    :param width: columns per grid.
    :param colors: colors per cell (ARC has 10); at most 127.
    :param noise: cells of the working grid recoloured at reset (at least one differs).
    :param max_episode_steps: the episode is truncated after this many steps.
    """

    height: int = attrs.field(default=6, validator=_at_least(1))
    width: int = attrs.field(default=6, validator=_at_least(1))
    colors: int = attrs.field(default=4, validator=_at_least(2))
    noise: int = attrs.field(default=3, validator=_at_least(1))
    max_episode_steps: int = attrs.field(default=48, validator=_at_least(1))

    def __attrs_post_init__(self) -> None:
        if self.colors > 127:
            raise ConfigError(f"must be <= 127, got {self.colors}", path=("colors",))

    @property
    def cells(self) -> int:
        return self.height * self.width

    def spec(self) -> EnvSpec:
        return EnvSpec(
            obs_shape=(2, self.height, self.width),
            obs_dtype=np.int8,
            obs_high=self.colors,
            action_shape=(),
            action_dtype=np.int32,
            action_high=self.cells * self.colors,
            max_episode_steps=self.max_episode_steps,
        )


class GridEnv:
    """The numpy implementation: whole-batch array operations, no loop over envs.

    ``state`` is a dict: ``grid`` ``[N, 2, H, W]`` int8 (working, target),
    ``matches`` ``[N]`` int32 (cells equal to the target), ``steps`` ``[N]`` int32.
    The observation is ``grid`` itself (read-only: do not write into it).
    """

    backend: ClassVar[str] = "numpy"

    def __init__(self, config: GridConfig | None = None, **settings: Any) -> None:
        self.config = c = config if config is not None else GridConfig(**settings)
        self.spec = c.spec()
        self._cells, self._actions = c.cells, c.cells * c.colors
        self._scale = np.float32(c.cells)
        # per action: the cell it paints and the color (lookups instead of divmod per step)
        actions = np.arange(self._actions)
        self._cell_of = (actions // c.colors).astype(np.intp)
        self._color_of = (actions % c.colors).astype(np.int8)
        self._offsets = np.zeros(0, dtype=np.intp)  # env j's first cell in the flat grid
        self._words = np.concatenate([np.arange(c.cells), 2 * c.cells + np.arange(c.noise)])
        self._highs = np.concatenate(
            [np.full(c.cells, c.colors), np.full(c.noise, c.cells)]
        ).astype(np.uint64)
        self._word_steps = fold_terms(self._words)  # fold(key, word) = mix(key + term)
        self._shift_steps = fold_terms(np.arange(c.cells, 2 * c.cells))
        self._shift_high = np.uint64(c.colors - 1)
        # actions of up to this many bytes are checked by the table lookup (see _table_index)
        self._views: dict[np.dtype[Any], np.dtype[Any] | None] = {}
        for k in (1, 2, 4):
            self._views[np.dtype(f"u{k}")] = None  # indexes as it is
            if 1 << (8 * k - 1) >= self._actions:
                self._views[np.dtype(f"i{k}")] = np.dtype(f"u{k}")
        self._limit = c.max_episode_steps

    # ------------------------------------------------------------ reset

    def _fresh(self, keys: Any) -> tuple[np.ndarray, np.ndarray]:
        """New envs from ``uint64[N]`` keys: ``grid`` ``[N, 2, cells]`` int8 (working,
        target) and ``matches`` ``[N]`` int32, built in place (one array, no stacking)."""
        c = self.config
        keys = np.asarray(keys, dtype=np.uint64)
        if keys.ndim != 1:
            raise EnvStepError(f"reset takes one uint64 key per env, got shape {keys.shape}")
        n, cells = keys.shape[0], c.cells
        # word k of env i's stream is fold(key_i, k): words 0..cells-1 are the target's
        # colors, words 2 * cells + m pick the noisy cells, and word cells + c is the
        # shift of cell c, drawn only for the noisy cells (so a cell picked twice gets
        # the same color both times)
        raw = below_into(mix64_into(keys[:, None] + self._word_steps), self._highs)
        noisy = raw[:, cells:]
        # fold(key, cells + cell) with its counter term looked up per cell
        shift = below_into(mix64_into(keys[:, None] + self._shift_steps[noisy]), self._shift_high)
        grid = np.empty((n, 2, cells), dtype=np.int8)
        grid[:, 1] = raw[:, :cells]
        grid[:, 0] = grid[:, 1]
        flat = grid.reshape(-1)
        where = (np.arange(n, dtype=np.intp) * (2 * cells))[:, None] + noisy
        # computed in int64: int8 would wrap for colors > 64
        flat[where] = (flat[where + cells] + shift + 1) % c.colors
        matches = (grid[:, 0] == grid[:, 1]).sum(1, dtype=np.int32)
        return grid, matches

    def initial_grids(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(target, working)`` ``[N, H, W]`` int8 from ``uint64[N]`` keys."""
        grid, _ = self._fresh(keys)
        shape = (grid.shape[0], self.config.height, self.config.width)
        return grid[:, 1].reshape(shape), grid[:, 0].reshape(shape)

    def initial_state(self, target: np.ndarray, working: np.ndarray) -> tuple[dict[str, Any], Any]:
        """The state (and observation) of envs starting from these grids."""
        grid = np.stack([working, target], axis=1).astype(np.int8, copy=False)
        matches = (grid[:, 0] == grid[:, 1]).reshape(len(grid), -1).sum(1, dtype=np.int32)
        state = {"grid": grid, "matches": matches, "steps": np.zeros(len(grid), dtype=np.int32)}
        return state, grid

    def reset(self, keys: np.ndarray) -> tuple[dict[str, Any], Any]:
        flat, matches = self._fresh(keys)
        n = flat.shape[0]
        grid = flat.reshape(n, 2, self.config.height, self.config.width)
        return {"grid": grid, "matches": matches, "steps": np.zeros(n, dtype=np.int32)}, grid

    # ------------------------------------------------------------ step

    def check_action(self, action: Any, n: int) -> np.ndarray:
        array = np.asarray(action)
        if array.shape != (n,):
            raise EnvStepError(f"grid: actions must have shape ({n},), got {array.shape}")
        kind = array.dtype.kind
        if kind not in "iu":
            raise EnvStepError(f"grid: actions must be integers, got {array.dtype}")
        if n:
            # one reduction checks both ends: a negative action is huge as unsigned
            unsigned = array if kind == "u" else array.view(_UNSIGNED[array.dtype.itemsize])
            if np.maximum.reduce(unsigned) >= self._actions:
                j = int(np.flatnonzero((array < 0) | (array >= self._actions))[0])
                raise EnvStepError(
                    f"grid: action {int(array[j])} is outside [0, {self._actions})", env_index=j
                )
        return array

    def _table_index(self, action: Any, n: int) -> np.ndarray:
        """The actions as an index into the per-action tables, checked.

        Integers of up to 4 bytes are viewed as unsigned (a negative one is then
        at least ``2**(bits - 1)``, past the tables' end): the table lookup itself
        raises IndexError for any action out of range, so no separate pass checks
        them. Others (8 bytes, where ``intp`` would wrap them back) are checked first.
        """
        a = action if type(action) is np.ndarray else np.asarray(action)
        if a.shape != (n,) or a.dtype not in self._views:
            return self.check_action(a, n)
        view = self._views[a.dtype]
        return a if view is None else a.view(view)

    def step(self, state: dict[str, Any], action: Any) -> tuple[dict[str, Any], Any, Any, Any, Any]:
        grid = state["grid"]
        n = grid.shape[0]
        a = action
        if type(a) is np.ndarray and a.shape == (n,) and a.dtype in self._views:
            view = self._views[a.dtype]  # _table_index, inline (it runs every step)
            if view is not None:
                a = a.view(view)
        else:
            a = self._table_index(action, n)
        if self._offsets.shape[0] != n:
            self._offsets = np.arange(n, dtype=np.intp) * (2 * self._cells)
        try:
            color = self._color_of[a]
        except IndexError:
            self.check_action(action, n)  # names the env
            raise
        where = self._offsets + self._cell_of[a]  # the painted cell in the flat [N * 2 * cells]
        new_grid = grid.copy()  # owns its memory: the runner may write resets into it
        flat = new_grid.reshape(-1)
        old = flat[where]
        want = flat[where + self._cells]
        flat[where] = color
        delta = np.subtract(color == want, old == want, dtype=np.int8)
        matches = state["matches"] + delta
        steps = state["steps"] + 1
        reward = delta.astype(np.float32) / self._scale
        terminated = matches == self._cells
        # bools: a > b is a & ~b
        truncated = (steps >= self._limit) > terminated
        return (
            {"grid": new_grid, "matches": matches, "steps": steps},
            new_grid,
            reward,
            terminated,
            truncated,
        )


def oracle_policy(obs: Any, keys: Any, spec: EnvSpec) -> np.ndarray:
    """Paints the first wrong cell its target color (an episode ends in ``noise`` steps at most)."""
    grid = np.asarray(obs)
    n = grid.shape[0]
    working = grid[:, 0].reshape(n, -1)
    target = grid[:, 1].reshape(n, -1)
    wrong = working != target
    cell = np.argmax(wrong, axis=1)
    colors = int(spec.obs_high or 1)
    actions: np.ndarray = (cell * colors + target[np.arange(n), cell]).astype(np.int32)
    return actions


class GridEnvJax:
    """The JAX implementation: the same rules for one env, ``vmap``-ed and ``jit``-ed.

    Keys are JAX PRNG keys, ``[N, 2]`` uint32 (``jax.random.PRNGKey`` layout).
    :meth:`from_numpy_state` turns a :class:`GridEnv` state into this env's, so
    both can be stepped from the same grids.
    """

    backend: ClassVar[str] = "jax"

    def __init__(self, config: GridConfig | None = None, **settings: Any) -> None:
        import jax

        self.config = c = config if config is not None else GridConfig(**settings)
        self.spec = c.spec()
        self.reset_one = self._reset_one
        self.step_one = self._step_one
        self.reset = jax.jit(jax.vmap(self._reset_one))
        self._step = jax.jit(jax.vmap(self._step_one))

    def _initial_one(self, target: Any, working: Any) -> tuple[dict[str, Any], Any]:
        import jax.numpy as jnp

        grid = jnp.stack([working, target]).astype(jnp.int8)
        matches = jnp.sum(grid[0] == grid[1], dtype=jnp.int32)
        return {"grid": grid, "matches": matches, "steps": jnp.int32(0)}, grid

    def _reset_one(self, key: Any) -> tuple[dict[str, Any], Any]:
        import jax.numpy as jnp

        from laden.stream.envs.jaxrun import jax_below

        c = self.config
        cells = c.cells
        # one random.bits call for everything (one threefry: fast to compile and run)
        high = np.concatenate(
            [np.full(cells, c.colors), np.full(cells, c.colors - 1), np.full(c.noise, cells)]
        )
        raw = jax_below(key, (2 * cells + c.noise,), high)
        target, shift = raw[:cells], 1 + raw[cells : 2 * cells]
        wrong = jnp.zeros(cells, dtype=bool).at[raw[2 * cells :]].set(True)
        working = jnp.where(wrong, (target + shift) % c.colors, target)
        shape = (c.height, c.width)
        return self._initial_one(target.reshape(shape), working.reshape(shape))

    def _step_one(self, state: dict[str, Any], action: Any) -> tuple[Any, Any, Any, Any, Any]:
        import jax.numpy as jnp

        c = self.config
        a = action.astype(jnp.int32)
        color = (a % c.colors).astype(jnp.int8)
        cell = a // c.colors
        flat = state["grid"].reshape(2 * c.cells)
        old, want = flat[cell], flat[c.cells + cell]
        flat = flat.at[cell].set(color)
        delta = (color == want).astype(jnp.int32) - (old == want).astype(jnp.int32)
        matches = state["matches"] + delta
        steps = state["steps"] + 1
        reward = delta.astype(jnp.float32) / jnp.float32(c.cells)
        terminated = matches == c.cells
        truncated = (steps >= c.max_episode_steps) & ~terminated
        grid = flat.reshape(2, c.height, c.width)
        return (
            {"grid": grid, "matches": matches, "steps": steps},
            grid,
            reward,
            terminated,
            truncated,
        )

    def step(self, state: dict[str, Any], action: Any) -> tuple[Any, Any, Any, Any, Any]:
        n = state["grid"].shape[0]
        shape = getattr(action, "shape", None)
        if shape != (n,):
            raise EnvStepError(f"grid: actions must have shape ({n},), got {shape}")
        if np.dtype(action.dtype).kind not in "iu":
            raise EnvStepError(f"grid: actions must be integers, got {action.dtype}")
        return self._step(state, action)  # type: ignore[no-any-return]

    def from_numpy_state(self, state: dict[str, Any]) -> dict[str, Any]:
        import jax.numpy as jnp

        return {k: jnp.asarray(v) for k, v in state.items()}


class GridEnvTorch:
    """The torch implementation: the same rules over torch tensors on ``device``.

    ``state`` is :class:`GridEnv`'s dict, as tensors; ``step`` takes and gives
    tensors (actions may also be numpy arrays) and runs in torch only. ``reset``
    takes the same ``uint64`` keys as :class:`GridEnv` (laden's numpy/torch keys;
    torch has no 64-bit unsigned shifts) and draws the grids from them with
    :meth:`GridEnv.initial_grids`, so both envs give the same bytes from the same
    keys: a whole rollout, resets included, matches the numpy env's.

    :param device: where the state lives (``cpu``, ``cuda``, ...).
    """

    backend: ClassVar[str] = "torch"

    def __init__(self, config: GridConfig | None = None, *, device: Any = "cpu", **settings: Any):
        import torch

        self.config = c = config if config is not None else GridConfig(**settings)
        self.spec = c.spec()
        self.device = torch.device(device)
        self._draw = GridEnv(c)
        self._cells, self._actions = c.cells, c.cells * c.colors
        actions = np.arange(self._actions)
        self._cell_of = torch.as_tensor(actions // c.colors, device=self.device)
        self._color_of = torch.as_tensor((actions % c.colors).astype(np.int8), device=self.device)
        # delta -1, 0, +1 -> reward, divided by numpy as GridEnv does (the same float32 bytes)
        rewards = np.array([-1, 0, 1], dtype=np.float32) / np.float32(c.cells)
        self._reward_of = torch.as_tensor(rewards, device=self.device)
        self._offsets = torch.zeros(0, dtype=torch.int64, device=self.device)

    def initial_state(self, target: Any, working: Any) -> tuple[dict[str, Any], Any]:
        """The state (and observation) of envs starting from these grids (numpy or torch)."""
        import torch

        target = torch.as_tensor(target, device=self.device)
        working = torch.as_tensor(working, device=self.device)
        grid = torch.stack([working, target], dim=1).to(torch.int8)
        n = grid.shape[0]
        matches = (grid[:, 0] == grid[:, 1]).reshape(n, -1).sum(1, dtype=torch.int32)
        steps = torch.zeros(n, dtype=torch.int32, device=self.device)
        return {"grid": grid, "matches": matches, "steps": steps}, grid

    def reset(self, keys: Any) -> tuple[dict[str, Any], Any]:
        host = keys.cpu().numpy() if hasattr(keys, "cpu") else keys
        return self.initial_state(*self._draw.initial_grids(np.asarray(host, dtype=np.uint64)))

    def from_numpy_state(self, state: dict[str, Any]) -> dict[str, Any]:
        import torch

        return {k: torch.as_tensor(v, device=self.device) for k, v in state.items()}

    def step(self, state: dict[str, Any], action: Any) -> tuple[dict[str, Any], Any, Any, Any, Any]:
        import torch

        grid = torch.as_tensor(state["grid"], device=self.device)
        n = grid.shape[0]
        a = torch.as_tensor(action, device=self.device)
        if tuple(a.shape) != (n,):
            raise EnvStepError(f"grid: actions must have shape ({n},), got {tuple(a.shape)}")
        if a.dtype.is_floating_point or a.dtype.is_complex or a.dtype == torch.bool:
            raise EnvStepError(f"grid: actions must be integers, got {a.dtype}")
        a = a.long()
        if n and bool(((a < 0) | (a >= self._actions)).any()):
            j = int(torch.nonzero((a < 0) | (a >= self._actions))[0, 0])
            raise EnvStepError(
                f"grid: action {int(a[j])} is outside [0, {self._actions})", env_index=j
            )
        if self._offsets.shape[0] != n:
            self._offsets = torch.arange(n, device=self.device) * (2 * self._cells)
        color = self._color_of[a]
        where = self._offsets + self._cell_of[a]
        new_grid = grid.clone()  # owns its memory: the runner may write resets into it
        flat = new_grid.view(-1)
        old = flat[where]
        want = flat[where + self._cells]
        flat[where] = color
        delta = (color == want).to(torch.int8) - (old == want).to(torch.int8)
        matches = torch.as_tensor(state["matches"], device=self.device) + delta
        steps = torch.as_tensor(state["steps"], device=self.device) + 1
        reward = self._reward_of[delta.long() + 1]
        terminated = matches == self._cells
        truncated = (steps >= self.config.max_episode_steps) & ~terminated
        return (
            {"grid": new_grid, "matches": matches, "steps": steps},
            new_grid,
            reward,
            terminated,
            truncated,
        )


def make(
    *, backend: str = "numpy", num_envs: int | None = None, **settings: Any
) -> GridEnv | GridEnvJax | GridEnvTorch:
    """The env factory (``laden.contrib.grid_env:make``): ``numpy`` (also what torch runs
    use unless they ask for ``grid_torch``), ``jax`` or ``torch`` (``device`` in settings).

    ``num_envs`` is not needed (the keys passed to ``reset`` set it); ``settings``
    are :class:`GridConfig`'s.
    """
    if backend == "jax":
        return GridEnvJax(**settings)
    if backend == "torch":
        return GridEnvTorch(**settings)
    return GridEnv(**settings)


def make_torch(
    *, backend: str = "numpy", num_envs: int | None = None, device: Any = "cpu", **settings: Any
) -> GridEnvTorch:
    """The ``grid_torch`` factory: :class:`GridEnvTorch` on ``device`` (``env_options``)."""
    if backend == "jax":
        raise ConfigError("grid_torch runs on torch; use env 'grid' with JAX", path=("env",))
    return GridEnvTorch(device=device, **settings)


@attrs.frozen(kw_only=True)
class GridSource(EnvBatchSource):
    """``env_batch`` over the bundled grid env (``env_options`` are :class:`GridConfig`'s)."""

    name: ClassVar[str] = "grid_env"

    env: str = "grid"


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(GridSource)
