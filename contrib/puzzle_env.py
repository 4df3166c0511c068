"""``puzzle_env``: ``chuk-puzzles-gym`` in-process games (``PuzzleEnv``) as one batched env.

For the grid games whose moves are ``place ROW COL VALUE`` (sudoku, binary,
futoshiki, kenken, killer, skyscrapers, ...). The observation is the grid
``+ 1`` (so an empty ``-1`` or ``0`` cell is a token id >= 0), int16
``[size, size]``; an action is ``(row, col, value)`` (1-based, as the game
takes them), and ``(0, 0, 0)`` plays the move the game's own hint proposes
(:func:`hint_policy` always does), so a batch of games can be played and
turned into training samples. Rewards are ``PuzzleEnv``'s (1 for a correct
placement, -0.5 for an invalid one, a completion bonus). Each game's seed
comes from laden's per-env key. Needs the ``arcade`` extra.

Registers the ``puzzle_batch`` source (``env_batch`` over these games).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.errors import ConfigError
from laden.hookspecs import hookimpl
from laden.plugins.sources.env_batch import EnvBatchSource
from laden.registry import Registry
from laden.stream.envs.base import EnvSpec, EnvStepError
from laden.validators import one_of

__all__ = ["PuzzleBatchEnv", "PuzzleBatchSource", "hint_policy", "make"]


def hint_policy(obs: Any, keys: Any, spec: EnvSpec) -> np.ndarray:
    """Always ``(0, 0, 0)``: play the game's hinted move."""
    return np.zeros((len(obs), 3), dtype=np.int64)


class PuzzleBatchEnv:
    """``num_envs`` ``PuzzleEnv`` games of one kind, stepped on one private event loop."""

    backend: ClassVar[str] = "numpy"

    def __init__(
        self, *, num_envs: int, game: str = "sudoku", difficulty: str = "easy", max_steps: int = 200
    ) -> None:
        try:
            from chuk_puzzles_gym.gym_env import PuzzleEnv
        except ImportError:
            raise ConfigError(
                "puzzle games need chuk-puzzles-gym, which is not installed; run: "
                'pip install "laden[arcade]"',
                path=("env",),
            ) from None
        if num_envs < 1:
            raise ConfigError(f"must be > 0, got {num_envs}", path=("num_envs",))
        try:
            self.envs = [
                PuzzleEnv(game, difficulty=difficulty, max_steps=max_steps) for _ in range(num_envs)
            ]
        except ValueError as exc:
            raise ConfigError(str(exc), path=("env_options", "game")) from exc
        self.game = game
        self._loop = asyncio.new_event_loop()
        first = self._run(self.envs[0].reset(seed=0))[0]
        size = len(first["grid"])
        if not size or not isinstance(first["grid"][0], list):
            raise ConfigError(
                f"{game!r} has no square grid to observe", path=("env_options", "game")
            )
        self.size = size
        self.spec = EnvSpec(
            obs_shape=(size, size),
            obs_dtype=np.int16,
            obs_high=size + 2,
            action_shape=(3,),
            action_dtype=np.int64,
            action_high=np.array([size + 1, size + 1, size + 1]),
            max_episode_steps=max_steps,
        )
        self._obs = np.zeros((num_envs, size, size), dtype=np.int16)
        self._done = np.zeros(num_envs, dtype=bool)

    def _run(self, coroutine: Any) -> Any:
        return self._loop.run_until_complete(coroutine)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.close()

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            loop.close()

    def _grid(self, obs: dict[str, Any]) -> np.ndarray:
        return np.asarray(obs["grid"], dtype=np.int16) + 1

    def _reset(self, indices: list[int], keys: Any) -> None:
        async def all_of() -> Any:
            return await asyncio.gather(
                *(self.envs[j].reset(seed=int(keys[j]) >> 33) for j in indices)
            )

        for j, (obs, _) in zip(indices, self._run(all_of()), strict=True):
            self._obs[j] = self._grid(obs)
            self._done[j] = False

    def reset(self, keys: Any) -> tuple[Any, Any]:
        keys = np.asarray(keys)
        if len(keys) != len(self.envs):
            raise EnvStepError(f"reset got {len(keys)} keys for {len(self.envs)} games")
        self._reset(list(range(len(self.envs))), keys)
        return None, self._obs.copy()

    def reset_where(self, state: Any, mask: Any, keys: Any) -> tuple[Any, Any]:
        self._reset(np.flatnonzero(mask).tolist(), keys)
        return state, self._obs.copy()

    async def _step_one(self, j: int, action: np.ndarray) -> Any:
        env = self.envs[j]
        if not action.any():
            _, _, _, _, info = await env.step("hint")
            move = info.get("hint_data")
            if not (isinstance(move, tuple) and len(move) == 3):
                return await env.step("hint")  # no usable hint: a wasted (penalised) step
            return await env.step(("place", *move))
        return await env.step(("place", *(int(v) for v in action)))

    def step(self, state: Any, action: Any) -> tuple[Any, Any, Any, Any, Any]:
        action = np.asarray(action)
        n = len(self.envs)
        if action.shape != (n, 3):
            raise EnvStepError(f"actions must have shape ({n}, 3), got {action.shape}")
        live = np.flatnonzero(~self._done).tolist()

        async def all_of() -> Any:
            return await asyncio.gather(
                *(self._step_one(j, action[j]) for j in live), return_exceptions=True
            )

        reward = np.zeros(n, dtype=np.float32)
        term = np.zeros(n, dtype=bool)
        trunc = np.zeros(n, dtype=bool)
        for j, out in zip(live, self._run(all_of()), strict=True):
            if isinstance(out, BaseException):
                raise EnvStepError(f"{self.game}: {type(out).__name__}: {out}", env_index=j)
            obs, r, te, tr, _ = out
            self._obs[j] = self._grid(obs)
            reward[j], term[j], trunc[j] = float(r), bool(te), bool(tr)
        self._done |= term | trunc
        return state, self._obs.copy(), reward, term, trunc


def make(*, num_envs: int, backend: str = "numpy", **settings: Any) -> PuzzleBatchEnv:
    """The env factory (``laden.contrib.puzzle_env:make``): game, difficulty, max_steps."""
    if backend != "numpy":
        raise ConfigError("puzzle games run on numpy (or torch) only", path=("array_backend",))
    return PuzzleBatchEnv(num_envs=num_envs, **settings)


@attrs.frozen(kw_only=True)
class PuzzleBatchSource(EnvBatchSource):
    """``env_batch`` over in-process puzzle games, playing the hinted moves by default."""

    name: ClassVar[str] = "puzzle_batch"
    requires: ClassVar[tuple[str, ...]] = ("chuk_puzzles_gym",)
    extra: ClassVar[str] = "arcade"

    env: str = "laden.contrib.puzzle_env:make"
    env_options: dict[str, Any] = attrs.field(factory=lambda: {"game": "sudoku"})
    policy: str = "laden.contrib.puzzle_env:hint_policy"
    autoreset: str = attrs.field(
        default="same_step", validator=one_of("next_step", "same_step", "disabled")
    )


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(PuzzleBatchSource)
