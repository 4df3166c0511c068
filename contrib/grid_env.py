"""``grid``: a small ARC-like grid environment, in numpy and in JAX, with the same rules.

Each env holds a *working* grid and a *target* grid (``height x width`` cells,
``colors`` colors). At reset the target is random and the working grid equals
it except for up to ``noise`` cells, each recoloured. An action is one point
action, ``(row * width + col) * colors + color``: paint that cell. The reward
is the change in similarity (matching cells / cells), so a correct paint earns
``+1 / cells`` and breaking a cell ``-1 / cells``; an episode terminates when
the grids match and is truncated after ``max_episode_steps`` steps. The
observation is ``[2, height, width]`` int8: the working grid, then the target.

:class:`GridEnv` (numpy) and :class:`GridEnvJax` (JAX, one env written plainly,
batched with ``vmap`` and compiled with ``jit``) give identical steps from the
same state; their resets draw from different generators (numpy keys vs JAX
keys), so tests compare them from the same initial grids (:meth:`GridEnv.initial_state`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import numpy as np

from laden.errors import ConfigError
from laden.hookspecs import hookimpl
from laden.plugins.sources.env_batch import EnvBatchSource
from laden.registry import Registry
from laden.stream.envs.base import EnvSpec, EnvStepError, bits, integers_below

__all__ = ["GridConfig", "GridEnv", "GridEnvJax", "GridSource", "make", "oracle_policy"]


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
        self._highs = np.concatenate(
            [np.full(c.cells, c.colors), np.full(c.cells, c.colors - 1), np.full(c.noise, c.cells)]
        )

    # ------------------------------------------------------------ reset

    def initial_grids(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(target, working)`` ``[N, H, W]`` int8 from ``uint64[N]`` keys."""
        c = self.config
        keys = np.asarray(keys, dtype=np.uint64)
        if keys.ndim != 1:
            raise EnvStepError(f"reset takes one uint64 key per env, got shape {keys.shape}")
        n, cells = keys.shape[0], c.cells
        raw = integers_below(bits(keys, 2 * cells + c.noise), self._highs)
        target = raw[:, :cells].astype(np.int8)
        shift = raw[:, cells : 2 * cells].astype(np.int8)
        shift += 1
        wrong = np.zeros((n, cells), dtype=bool)
        wrong[np.arange(n)[:, None], raw[:, 2 * cells :]] = True
        working = np.where(wrong, (target + shift) % c.colors, target).astype(np.int8)
        shape = (n, c.height, c.width)
        return target.reshape(shape), working.reshape(shape)

    def initial_state(self, target: np.ndarray, working: np.ndarray) -> tuple[dict[str, Any], Any]:
        """The state (and observation) of envs starting from these grids."""
        grid = np.stack([working, target], axis=1).astype(np.int8)
        matches = (grid[:, 0] == grid[:, 1]).reshape(len(grid), -1).sum(1, dtype=np.int32)
        state = {"grid": grid, "matches": matches, "steps": np.zeros(len(grid), dtype=np.int32)}
        return state, grid

    def reset(self, keys: np.ndarray) -> tuple[dict[str, Any], Any]:
        return self.initial_state(*self.initial_grids(keys))

    # ------------------------------------------------------------ step

    def check_action(self, action: Any, n: int) -> np.ndarray:
        array = np.asarray(action)
        if array.shape != (n,):
            raise EnvStepError(f"grid: actions must have shape ({n},), got {array.shape}")
        if array.dtype.kind not in "iu":
            raise EnvStepError(f"grid: actions must be integers, got {array.dtype}")
        return array

    def step(self, state: dict[str, Any], action: Any) -> tuple[dict[str, Any], Any, Any, Any, Any]:
        c, cells = self.config, self._cells
        grid = state["grid"]
        n = grid.shape[0]
        a = self.check_action(action, n)
        if n and (a.min() < 0 or a.max() >= self._actions):
            j = int(np.flatnonzero((a < 0) | (a >= self._actions))[0])
            raise EnvStepError(
                f"grid: action {int(a[j])} is outside [0, {self._actions})", env_index=j
            )
        cell, color = np.divmod(a, c.colors)
        color = color.astype(np.int8)
        new_grid = grid.copy()  # owns its memory: the runner may write resets into it
        flat = new_grid.reshape(n, 2 * cells)
        rows = np.arange(n)
        old = flat[rows, cell]
        want = flat[rows, cells + cell]
        flat[rows, cell] = color
        delta = (color == want).view(np.int8) - (old == want).view(np.int8)
        matches = state["matches"] + delta
        steps = state["steps"] + 1
        reward = delta.astype(np.float32) / self._scale
        terminated = matches == cells
        truncated = (steps >= c.max_episode_steps) & ~terminated
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


def make(
    *, backend: str = "numpy", num_envs: int | None = None, **settings: Any
) -> GridEnv | GridEnvJax:
    """The env factory (``laden.contrib.grid_env:make``): numpy (also for torch runs) or JAX.

    ``num_envs`` is not needed (the keys passed to ``reset`` set it); ``settings``
    are :class:`GridConfig`'s.
    """
    if backend == "jax":
        return GridEnvJax(**settings)
    return GridEnv(**settings)


@attrs.frozen(kw_only=True)
class GridSource(EnvBatchSource):
    """``env_batch`` over the bundled grid env (``env_options`` are :class:`GridConfig`'s)."""

    name: ClassVar[str] = "grid_env"

    env: str = "grid"


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(GridSource)
