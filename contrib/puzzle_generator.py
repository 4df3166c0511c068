"""``puzzle``: puzzle episodes from ``chuk-puzzles-gym``, offline, as a sweep generator.

One point is one puzzle: ``game`` x ``difficulty`` x seed -> the prompt, the
step-by-step solution and the number of optimal steps, generated in process
by the package's own games and ``TraceGenerator`` (what ``chuk-puzzles-export``
writes, without a server or a JSONL file), so a ``laden sweep`` over games,
difficulties and repetitions makes LLM training data. Needs the ``arcade``
extra.

Arrays of a point (the same keys for every game; text is UTF-8 bytes,
:func:`laden.sweep.fields.read_text` turns it back into ``str``):

- ``prompt`` ``uint8 [bytes]``: ``"<Name>: <description>"``, the rules
  (``rules``), the move commands (``commands``) and the rendered puzzle;
  with ``rules: true, commands: false`` exactly the prompt of
  ``chuk-puzzles-export``;
- ``solution`` ``uint8 [bytes]``: the solution trace in words, one
  ``Step i: ...`` line per step;
- ``trace`` ``uint8 [bytes]``: the same steps as a JSON list of
  ``{index, operation, position, before, after, value, rule, explanation}``;
- ``optimal_steps`` ``int64 []``: the game's minimum number of moves (-1 if
  the game does not say); ``num_steps`` ``int64 []``: steps in the trace
  (most games: equal; see the docs for the exceptions);
- ``game_seed`` ``int64 []``: the game's own seed: ``<game> <difficulty>
  <game_seed>`` on the arcade server plays the same puzzle;
- ``difficulty_profile`` ``float64 [4]``: logic depth, branching factor,
  state observability, constraint density.

The game's seed is drawn from the point's seed (``rng_for(seed, 0,
"puzzle.game_seed")``, below 2**31) unless ``game_seed`` sets it.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Coroutine, Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.errors import ConfigError
from laden.hookspecs import hookimpl
from laden.registry import Registry
from laden.seeding import rng_for
from laden.sweep.fields import text_field

__all__ = ["PuzzleGenerator", "episode"]

DIFFICULTIES = ("easy", "medium", "hard")
#: Game seeds stay below 2**31: short to type on the server, an int everywhere.
SEED_LIMIT = 2**31


def _games() -> dict[str, Any]:
    try:
        from chuk_puzzles_gym.games import AVAILABLE_GAMES
    except ImportError:
        raise ConfigError(
            "the puzzle generator needs chuk-puzzles-gym, which is not installed; run: "
            'pip install "laden[arcade]"'
        ) from None
    return dict(AVAILABLE_GAMES)


def _finish(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that awaits nothing outside itself, without an event loop.

    The games' ``generate_puzzle`` is ``async`` but pure computation; driving
    it here (not ``asyncio.run``) also works where a loop is already running
    (a notebook, an async caller) and costs no loop per point.
    """
    try:
        while True:
            if coroutine.send(None) is not None:
                break  # it awaits a real future: needs a loop after all
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise RuntimeError("generate_puzzle() awaited an outside event; it cannot run offline")


def _check(p: Mapping[str, Any], games: Mapping[str, Any]) -> tuple[str, str, int | None]:
    game = p["game"]
    if not isinstance(game, str) or game not in games:
        close = difflib.get_close_matches(str(game), list(games), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown game {game!r}{hint}; games: {', '.join(games)}", path=("parameters", "game")
        )
    difficulty = p["difficulty"]
    if difficulty not in DIFFICULTIES:
        raise ConfigError(
            f"expected one of {', '.join(DIFFICULTIES)}, got {difficulty!r}",
            path=("parameters", "difficulty"),
        )
    game_seed = p["game_seed"]
    if game_seed is not None and (
        isinstance(game_seed, bool)
        or not isinstance(game_seed, int)
        or not 0 <= game_seed < SEED_LIMIT
    ):
        raise ConfigError(
            f"expected an integer in [0, 2**31), got {game_seed!r}",
            path=("parameters", "game_seed"),
        )
    for key in ("rules", "commands"):
        if not isinstance(p[key], bool):
            raise ConfigError(f"expected true or false, got {p[key]!r}", path=("parameters", key))
    return game, difficulty, game_seed


def episode(
    game: str, difficulty: str, game_seed: int, *, rules: bool = True, commands: bool = False
) -> dict[str, np.ndarray]:
    """One puzzle's arrays (see the module) for ``game`` at ``difficulty`` with ``game_seed``."""
    from chuk_puzzles_gym.trace import TraceGenerator

    puzzle = _games()[game](difficulty=difficulty, seed=game_seed)
    _finish(puzzle.generate_puzzle())
    trace = TraceGenerator().generate(puzzle)
    parts = [f"{puzzle.name}: {puzzle.description}"]
    if rules:
        parts.append(puzzle.get_rules())
    if commands:
        parts.append(puzzle.get_commands())
    parts.append(puzzle.render_grid())
    steps = trace.to_jsonl_steps()
    for step, raw in zip(steps, trace.steps, strict=True):
        step["position"] = raw.position
    optimal = puzzle.optimal_steps
    profile = puzzle.difficulty_profile
    return {
        "prompt": text_field("\n\n".join(parts)),
        "solution": text_field(trace.to_natural_language()),
        "trace": text_field(
            json.dumps(steps, ensure_ascii=False, separators=(",", ":"), default=str)
        ),
        "optimal_steps": np.array(-1 if optimal is None else int(optimal), dtype=np.int64),
        "num_steps": np.array(len(steps), dtype=np.int64),
        "game_seed": np.array(game_seed, dtype=np.int64),
        "difficulty_profile": np.array(
            [
                profile.logic_depth,
                profile.branching_factor,
                profile.state_observability,
                profile.constraint_density,
            ],
            dtype=np.float64,
        ),
    }


@attrs.frozen(kw_only=True)
class PuzzleGenerator:
    """A ``chuk-puzzles-gym`` puzzle with its solution trace per point (see the module).

    Parameters: ``game`` (a command id: ``sudoku``, ``kenken``, ``bridges``,
    ...), ``difficulty`` (``easy``, ``medium``, ``hard``), ``game_seed``
    (default: drawn from the point's seed), ``rules`` and ``commands`` (what
    the prompt holds besides the puzzle).
    """

    name: ClassVar[str] = "puzzle"
    requires: ClassVar[tuple[str, ...]] = ("chuk_puzzles_gym",)
    extra: ClassVar[str] = "arcade"
    #: The parameters a point may set, with their defaults.
    parameters: ClassVar[Mapping[str, Any]] = {
        "game": "sudoku",
        "difficulty": "easy",
        "game_seed": None,
        "rules": True,
        "commands": False,
    }

    def generate(self, params: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
        p = {**self.parameters, **params}
        game, difficulty, game_seed = _check(p, _games())
        if game_seed is None:
            game_seed = int(rng_for(seed, 0, "puzzle.game_seed").integers(SEED_LIMIT))
        return episode(game, difficulty, game_seed, rules=p["rules"], commands=p["commands"])


@hookimpl
def laden_register_generators(registry: Registry) -> None:
    registry.add(PuzzleGenerator)
