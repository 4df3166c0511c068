"""``puzzle_arcade``: training samples from the puzzle arcade server (``chuk-puzzles-gym``).

Each sample pairs a puzzle state, as the server shows it, with a correct next
move: ``prompt`` is the observation (``show`` in json mode), ``completion``
the move command parsed from the server's ``hint``. The move is then applied
on the server, so the next sample sees the next state. Start the server on
loopback only::

    server-launcher chuk_puzzles_gym.server:ArcadeHandler \\
        --host 127.0.0.1 --port 8023 --transport telnet

Facts this module relies on (chuk-puzzles-gym 0.10.3, see ``ARCADE.md``):
the same ``<game> <difficulty> <seed>`` gives the same puzzle and the same
hint sequence; a hint is plain text even in json mode and its wording differs
per game (:data:`GAMES` holds one parser per game); 99 hints are usable per
game; a server-side exception produces no reply at all (so every request has
a time-out); connections are cut after 300 s.

**Moves the server cannot apply.** For five games the server rejects every
form of the documented move (0.10.3 defects): ``logic`` (it lowercases input
but compares names case-sensitively), ``einstein`` (its ``assign`` parses
integers only), ``shikaku`` (``place`` takes 3 arguments, not 4), ``tents``
and ``star_battle`` (``place R C`` is refused, ``place R C 1`` crashes the
session's handler). Their samples carry the documented move as
``completion``, ``success=None`` and ``meta.applied=False``, and their
episodes stop after one sample (the state cannot advance). For ``bridges``,
``hitori`` and ``sokoban`` the completion is the form the server accepts
(``bridge ...``, ``shade R C``, ``move DIR``), not the one their help text shows.

**Recovery.** A lost connection or a request that times out (a server-side
exception, the 300 s cut, a restarted server) reconnects with backoff and
resumes the episode by *replaying* it: the game is restarted with the same
seed and the hints and moves already taken are repeated (without new samples),
which puts the server's hint generator exactly where it was, so the stream is
the same as without the failure. Samples already made are never dropped; an
episode that fails ``episode_attempts`` times in a row is abandoned (counted)
after yielding what it had.

**Difficulty** (0..1) of every sample of an episode: ``(level + size) / 3``
with ``level`` 0, 1, 2 for easy, medium, hard and ``size =
min(1, log1p(optimal_steps) / log1p(100))`` from the ``optimal_steps`` the
server reports when the game starts: easy puzzles fall in [0, 1/3], medium in
[1/3, 2/3], hard in [2/3, 1], bigger puzzles higher within their band.
**Reward**: 1.0 for a move the server accepted, 0.0 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar

import attrs

from laden.errors import ConfigError
from laden.hookspecs import hookimpl
from laden.registry import Registry
from laden.stream.net import (
    LineClient,
    NetCounters,
    NetError,
    NetLimits,
    connect_with_retry,
    iterate_sync,
)
from laden.validators import at_least, greater_than, one_of, positive

__all__ = [
    "DIFFICULTIES",
    "GAMES",
    "ArcadeStats",
    "GameSpec",
    "PuzzleArcadeSource",
    "difficulty_score",
    "parse_hint",
]

#: The banner of the arcade ends with these bytes (no prompt follows it).
GREETING = b"====\n\r\n"
PROMPT = b"\n> "
DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")
_LEVEL = {d: i for i, d in enumerate(DIFFICULTIES)}
MAX_HINTS = 99  # the 100th hint of a game falsely answers "Puzzle is complete!"

_N = r"(-?\d+)"
_RC = rf"row {_N}, column {_N}"
_PAIR = rf"\({_N},\s*{_N}\)"
_PLACE_VALUE = ((rf"placing {_N} at {_RC}", "place {1} {2} {0}"),)


@attrs.frozen
class GameSpec:
    """One game of the arcade: its display name, hint patterns and move templates.

    Each rule is ``(regex, template)``: the first regex that matches the hint
    text fills the template with its groups (``str.format``) to give the move.
    ``applies`` is False where the server cannot apply any form of the move.
    """

    display: str
    rules: tuple[tuple[str, str], ...]
    applies: bool = True
    difficulties: tuple[str, ...] = DIFFICULTIES


#: The 30 games by command id (what the menu takes), in the server's menu order.
GAMES: Mapping[str, GameSpec] = {
    "sudoku": GameSpec("Sudoku", _PLACE_VALUE),
    "kenken": GameSpec("KenKen", _PLACE_VALUE),
    "kakuro": GameSpec("Kakuro", _PLACE_VALUE),
    "binary": GameSpec("Binary Puzzle", _PLACE_VALUE),
    "futoshiki": GameSpec("Futoshiki", _PLACE_VALUE),
    "nonogram": GameSpec(
        "Nonogram",
        (
            (rf"marking {_RC} as filled", "place {0} {1} 1"),
            (rf"marking {_RC} as empty", "place {0} {1} 0"),
        ),
    ),
    "logic": GameSpec(
        "Logic Grid", ((r"^(\w+) has the (\w+) (\w+)$", "connect person {0} {2} {1}"),), False
    ),
    "killer": GameSpec("Killer Sudoku", _PLACE_VALUE),
    "lights": GameSpec("Lights Out", ((rf"pressing the light at {_RC}", "press {0} {1}"),)),
    "mastermind": GameSpec(
        "Mastermind", ((r"secret code is:\s*(\d+(?:\s+\d+)*)\s*$", "guess {0}"),)
    ),
    "slither": GameSpec(
        "Slitherlink",
        (
            (rf"horizontal edge at {_PAIR} to line", "set h {0} {1} 1"),
            (rf"vertical edge at {_PAIR} to line", "set v {0} {1} 1"),
        ),
    ),
    "bridges": GameSpec(
        "Bridges",
        ((rf"placing {_N} bridge\(s\) between {_PAIR} and {_PAIR}", "bridge {1} {2} {3} {4} {0}"),),
    ),
    "hitori": GameSpec(
        "Hitori",
        (
            (rf"Try shading cell at {_RC}", "shade {0} {1}"),
            # No server command undoes a shade; only a wrongly shaded cell gets this hint.
            (rf"Try unshading cell at {_RC}", "place {0} {1} unshade"),
        ),
    ),
    "shikaku": GameSpec(
        "Shikaku", ((rf"rectangle from {_PAIR} to {_PAIR}", "place {0} {1} {2} {3}"),), False
    ),
    "hidato": GameSpec("Hidato", _PLACE_VALUE),
    "tents": GameSpec(
        "Tents and Trees",
        (
            (rf"placing a tent at {_RC}", "place {0} {1}"),
            (rf"Remove the tent at {_RC}", "remove {0} {1}"),
        ),
        False,
    ),
    "fillomino": GameSpec("Fillomino", _PLACE_VALUE),
    "star_battle": GameSpec(
        "Star Battle",
        (
            (rf"placing a star at {_RC}", "place {0} {1}"),
            (rf"Remove the star at {_RC}", "remove {0} {1}"),
        ),
        False,
    ),
    "sokoban": GameSpec(
        "Sokoban", ((r"^(?:Try )?(?:Push|Move|moving|pushing) (up|down|left|right)\b", "move {0}"),)
    ),
    "knapsack": GameSpec(
        "Knapsack",
        (
            (r"Try selecting item (\d+)", "select {0}"),
            (r"Try deselecting item (\d+)", "deselect {0}"),
        ),
    ),
    "scheduler": GameSpec(
        "Task Scheduler",
        ((r"Try scheduling (Task \w+) on Worker (\d+) at time (\d+)", "assign {0} {1} {2}"),),
    ),
    "nurikabe": GameSpec("Nurikabe", ((rf"marking {_PAIR} as (white|black)", "mark {0} {1} {2}"),)),
    "einstein": GameSpec(
        "Einstein's Puzzle",
        ((r"Try assigning (\S+) to house (\d+) as its (\w+)", "assign {1} {2} {0}"),),
        False,
    ),
    "minesweeper": GameSpec(
        "Minesweeper",
        (
            (rf"revealing cell {_PAIR}", "reveal {0} {1}"),
            (rf"flagging cell {_PAIR}", "flag {0} {1}"),
        ),
    ),
    "skyscrapers": GameSpec("Skyscrapers", _PLACE_VALUE),
    "nqueens": GameSpec("N-Queens", ((rf"placing a queen at {_RC}", "place {0} {1} 1"),)),
    "numberlink": GameSpec("Numberlink", _PLACE_VALUE),
    "graph_coloring": GameSpec(
        "Graph Coloring", ((r"coloring node (\d+) with \S+ \(color (\d+)\)", "place {0} {1}"),)
    ),
    "cryptarithmetic": GameSpec(
        "Cryptarithmetic", ((r"assigning ([A-Za-z]) = (\d)", "assign {0} {1}"),)
    ),
    "rush_hour": GameSpec(
        "Rush Hour", ((r"moving vehicle (\w+) (up|down|left|right)", "move {0} {1}"),)
    ),
}
# The server writes its result line with json.dumps(type, success, code, ...) in this order.
_RESULT = re.compile(r'\{"type":"result","success":(true|false),"code":"(\w*)"')
_BY_DISPLAY = {spec.display.lower(): game for game, spec in GAMES.items()}
_COMPILED = {
    game: tuple((re.compile(pattern), template) for pattern, template in spec.rules)
    for game, spec in GAMES.items()
}


def parse_hint(game: str, hint: str, observation: Mapping[str, Any] | None = None) -> str | None:
    """The move command a hint suggests, or None when its text does not parse.

    ``observation`` (the json-mode state) resolves names the command needs as
    numbers (the scheduler's task numbers).
    """
    text = re.sub(r"^(?:Hint|HINT):\s*", "", hint.strip())
    for pattern, template in _COMPILED[game]:
        found = pattern.search(text)
        if found is None:
            continue
        groups = [" ".join(g.split()) for g in found.groups()]
        if game == "scheduler":
            number = _task_number(groups[0], observation)
            if number is None:
                return None
            groups[0] = str(number)
        return template.format(*groups)
    return None


def _task_number(name: str, observation: Mapping[str, Any] | None) -> int | None:
    display = str((observation or {}).get("grid_display") or "")
    found = re.search(rf"^\s*(\d+)\s*\|\s*{re.escape(name)}\s*\|", display, re.M)
    if found:
        return int(found.group(1))
    letter = name.rsplit(" ", 1)[-1]
    if len(letter) == 1 and letter.isalpha():  # "Task C" is task 3 (the server's naming)
        return ord(letter.upper()) - ord("A") + 1
    return None


def difficulty_score(difficulty: str, optimal_steps: int) -> float:
    """``(level + min(1, log1p(optimal_steps) / log1p(100))) / 3``, in 0..1."""
    size = min(1.0, math.log1p(max(optimal_steps, 0)) / math.log1p(100))
    return (_LEVEL[difficulty] + size) / 3.0


# ------------------------------------------------------------------ config


def _to_game_ids(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    out: list[Any] = []
    for game in value:
        key = str(game).strip().lower() if isinstance(game, str) else game
        if key == "all":
            out.extend(GAMES)
            continue
        out.append(_BY_DISPLAY.get(key, key) if isinstance(key, str) else key)
    return tuple(out)


def _strings(value: Any) -> tuple[Any, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _check_games(instance: Any, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    if not value:
        raise ConfigError("needs at least one game", path=(attribute.name,))
    for i, game in enumerate(value):
        if game not in GAMES:
            raise ConfigError(
                f"unknown game {game!r}; the arcade's games are: {', '.join(GAMES)}",
                path=(attribute.name, i),
            )


def _check_difficulties(
    instance: Any, attribute: attrs.Attribute[Any], value: tuple[Any, ...]
) -> None:
    if not value:
        raise ConfigError("needs at least one difficulty", path=(attribute.name,))
    for i, level in enumerate(value):
        for game in instance.games:
            valid = GAMES[game].difficulties
            if level not in valid:
                raise ConfigError(
                    f"unknown difficulty {level!r} for {game!r}; valid: {', '.join(valid)}",
                    path=(attribute.name, i),
                )


def _check_seeds(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    for i, seed in enumerate(value):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"a seed is an integer >= 0, got {seed!r}", path=(attribute.name, i))


def _check_seed_range(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if (
        len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not 0 <= value[0] < value[1]
    ):
        raise ConfigError(
            f"must be [start, stop) with 0 <= start < stop, got {list(value)!r}",
            path=(attribute.name,),
        )


def _optional_tuple(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


@attrs.define
class ArcadeStats:
    """Counters of one ingestion run (its wire events in ``net``)."""

    net: NetCounters = attrs.field(factory=NetCounters)
    samples: int = 0
    episodes: int = 0
    episodes_failed: int = 0
    completed: int = 0  # puzzles solved by the hinted moves
    parse_errors: int = 0  # hint texts no rule of the game matched
    bad_replies: int = 0  # replies that were not the JSON expected
    move_failures: int = 0  # hinted moves the server refused
    moves_unapplied: int = 0  # moves of games whose moves the server cannot apply
    recoveries: int = 0  # episodes resumed after a lost connection or time-out
    replay_mismatches: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in attrs.asdict(self).items() if k != "net"}
        out.update({f"net_{k}": v for k, v in self.net.as_dict().items()})
        return out


@attrs.frozen(kw_only=True)
class PuzzleArcadeSource:
    """Samples (observation -> hinted move) from a puzzle arcade server over telnet.

    Episodes are every ``(seed, game, difficulty)`` in that nesting order
    (seeds from ``seeds`` or ``seed_range``); each takes up to
    ``hints_per_episode`` steps of ``show`` + ``hint`` + move. ``connections``
    episodes run at once on their own connections, but samples come out in
    episode order with ``sample_id`` counting from 0, so the same config gives
    the same stream whatever the timing.

    :param host: the arcade server (loopback).
    :param port: its telnet port.
    :param games: command ids (``sudoku``, ``rush_hour``; display names are
        accepted too; ``all`` means all 30).
    :param difficulties: any of ``easy``, ``medium``, ``hard``.
    :param seeds: explicit puzzle seeds.
    :param seed_range: ``[start, stop)`` instead of ``seeds``.
    :param hints_per_episode: steps per episode at most (the server allows 99 hints a game).
    :param connections: concurrent connections (K).
    :param prompt_format: ``grid`` (a title line and the ``grid_display``) or
        ``json`` (the observation line exactly as the server sent it).
    :param read_timeout: seconds one reply may take; generating some puzzles
        (cryptarithmetic, rush_hour at medium/hard) takes seconds to minutes and
        blocks the whole server, so keep it generous.
    :param episode_attempts: tries of one episode (replays included) before it is abandoned.
    """

    name: ClassVar[str] = "puzzle_arcade"
    requires: ClassVar[tuple[str, ...]] = ("chuk_puzzles_gym",)
    extra: ClassVar[str] = "arcade"

    port: int = attrs.field(default=8023, validator=at_least(1))
    host: str = "127.0.0.1"
    games: tuple[str, ...] = attrs.field(
        default=("sudoku",), converter=_to_game_ids, validator=_check_games
    )
    difficulties: tuple[str, ...] = attrs.field(
        default=("easy",), converter=_strings, validator=_check_difficulties
    )
    seeds: tuple[int, ...] | None = attrs.field(
        default=None, converter=_optional_tuple, validator=_check_seeds
    )
    seed_range: tuple[int, int] | None = attrs.field(
        default=None, converter=_optional_tuple, validator=_check_seed_range
    )
    hints_per_episode: int = attrs.field(default=10, validator=at_least(1))
    connections: int = attrs.field(default=1, validator=at_least(1))
    prompt_format: str = attrs.field(default="grid", validator=one_of("grid", "json"))
    connect_timeout: float = attrs.field(default=5.0, validator=positive)
    read_timeout: float = attrs.field(default=120.0, validator=positive)
    max_line_bytes: int = attrs.field(default=1 << 20, validator=at_least(1024))
    max_message_bytes: int = attrs.field(default=4 << 20, validator=at_least(1024))
    retries: int = attrs.field(default=8, validator=at_least(0))
    backoff_initial: float = attrs.field(default=0.05, validator=at_least(0))
    backoff_max: float = attrs.field(default=2.0, validator=greater_than(0))
    episode_attempts: int = attrs.field(default=3, validator=at_least(1))

    def __attrs_post_init__(self) -> None:
        if self.hints_per_episode > MAX_HINTS:
            raise ConfigError(
                f"must be <= {MAX_HINTS} (the server's hint budget per game), "
                f"got {self.hints_per_episode}",
                path=("hints_per_episode",),
            )
        if self.seeds is not None and self.seed_range is not None:
            raise ConfigError("give seeds or seed_range, not both", path=("seed_range",))
        if not 0 < self.port < 65536:
            raise ConfigError(f"must be a TCP port (1-65535), got {self.port}", path=("port",))

    # ---------------------------------------------------------------- plan

    @property
    def seed_list(self) -> tuple[int, ...]:
        if self.seed_range is not None:
            return tuple(range(*self.seed_range))
        return self.seeds if self.seeds is not None else (0,)

    def episodes(self) -> list[tuple[str, str, int]]:
        """``(game, difficulty, seed)`` of every episode, in stream order."""
        return [
            (game, level, seed)
            for seed in self.seed_list
            for game in self.games
            for level in self.difficulties
        ]

    @property
    def limits(self) -> NetLimits:
        return NetLimits.of(self)

    # ------------------------------------------------------------- streams

    async def stream_chunks(
        self, stats: ArcadeStats | None = None
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The samples of each episode as one list, in episode order."""
        stats = stats if stats is not None else ArcadeStats()
        episodes = self.episodes()
        results: dict[int, list[dict[str, Any]]] = {}
        failures: list[BaseException] = []
        progress = asyncio.Event()
        cursor = {"take": 0, "emit": 0}
        ahead = 2 * self.connections
        window = _Pulse()

        async def worker() -> None:
            player = _Player(self, stats)
            try:
                while True:
                    while cursor["take"] < len(episodes) and (
                        cursor["take"] >= cursor["emit"] + ahead
                    ):
                        await window.wait()
                    if cursor["take"] >= len(episodes):
                        return
                    index = cursor["take"]
                    cursor["take"] += 1
                    results[index] = await player.episode(index, *episodes[index])
                    progress.set()
            except BaseException as exc:
                failures.append(exc)
                progress.set()
                raise
            finally:
                await player.close()

        tasks = [
            asyncio.ensure_future(worker()) for _ in range(min(self.connections, len(episodes)))
        ]
        sample_id = 0
        try:
            while cursor["emit"] < len(episodes):
                while cursor["emit"] not in results:
                    if failures:
                        raise failures[0]
                    progress.clear()
                    await progress.wait()
                chunk = results.pop(cursor["emit"])
                cursor["emit"] += 1
                window.pulse()
                for sample in chunk:
                    sample["sample_id"] = sample_id
                    sample_id += 1
                stats.samples += len(chunk)
                yield chunk
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stream(self, stats: ArcadeStats | None = None) -> AsyncIterator[dict[str, Any]]:
        """The samples one at a time (see :meth:`stream_chunks`)."""
        # aclosing: a consumer that stops early closes the episode workers now, not at
        # loop shutdown (where their tasks would be destroyed while pending).
        async with contextlib.aclosing(self.stream_chunks(stats)) as chunks:
            async for chunk in chunks:
                for sample in chunk:
                    yield sample

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self.stream()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iterate_sync(self.stream)

    def iter_samples(self, stats: ArcadeStats | None = None) -> Iterator[dict[str, Any]]:
        """The samples, synchronously; ``stats`` (if given) collects the counters."""
        return iterate_sync(lambda: self.stream(stats))

    def iter_chunks(self, stats: ArcadeStats | None = None) -> Iterator[list[dict[str, Any]]]:
        """The samples of each episode as one list, synchronously."""
        return iterate_sync(lambda: self.stream_chunks(stats))


class _Pulse:
    """Wakes every waiter each time :meth:`pulse` is called."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def pulse(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class _Replay(Exception):
    """The episode must be resumed on a new connection."""


class _Player:
    """One connection playing episodes one after the other."""

    def __init__(self, source: PuzzleArcadeSource, stats: ArcadeStats) -> None:
        self.source = source
        self.stats = stats
        self.client: LineClient | None = None
        self.in_game = False
        self.json_mode = False
        self.had_connection = False

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close("quit")
            self.client = None

    async def _connect(self) -> LineClient:
        if self.client is not None and not self.client.broken:
            return self.client
        if self.client is not None:
            await self.client.close()
        self.client = None
        src = self.source
        self.client = await connect_with_retry(
            src.host,
            src.port,
            limits=src.limits,
            counters=self.stats.net,
            reconnect=self.had_connection,
            prompt=PROMPT,
            greeting=GREETING,
            telnet=True,
        )
        self.had_connection = True
        self.in_game = False
        self.json_mode = False  # the output mode belongs to the session
        return self.client

    async def _request(self, command: str) -> str:
        client = await self._connect()
        try:
            return (await client.request(command)).text
        except NetError as exc:
            raise _Replay(str(exc)) from exc

    async def _start(self, game: str, difficulty: str, seed: int) -> None:
        if self.in_game:
            await self._request("menu")
            self.in_game = False
        await self._request(f"{game} {difficulty} {seed}")
        self.in_game = True
        if not self.json_mode:
            reply = await self._request("mode json")
            if '"mode":"json"' not in reply.replace(" ", ""):
                raise _Replay(f"'mode json' answered {reply[:200]!r}")
            self.json_mode = True

    def _json(self, text: str, what: str) -> dict[str, Any]:
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    break
                if isinstance(value, dict):
                    return value
        self.stats.bad_replies += 1
        raise _Replay(f"{what}: expected a JSON line, got {text[:200]!r}")

    def _result(self, reply: str, move: str) -> tuple[bool, Any]:
        """``(success, code)`` of a move's result line (its JSON prefix read directly)."""
        found = _RESULT.match(reply)
        if found is not None:
            return found.group(1) == "true", found.group(2)
        result = self._json(reply, f"move {move!r}")
        return bool(result.get("success")), result.get("code")

    async def episode(
        self, index: int, game: str, difficulty: str, seed: int
    ) -> list[dict[str, Any]]:
        """Play one episode; recover from lost connections by replaying it."""
        samples: list[dict[str, Any]] = []
        moves: list[str] = []  # the moves applied so far (replayed on recovery)
        state: dict[str, Any] = {"optimal_steps": None, "done": False}
        failures = 0
        while True:
            try:
                await self._play(index, game, difficulty, seed, samples, moves, state)
                self.stats.episodes += 1
                return samples
            except _Replay:
                failures += 1
                if self.client is not None:
                    self.client.broken = True
                if failures >= self.source.episode_attempts:
                    self.stats.episodes_failed += 1
                    return samples  # what was collected is kept
                self.stats.recoveries += 1

    async def _play(
        self,
        index: int,
        game: str,
        difficulty: str,
        seed: int,
        samples: list[dict[str, Any]],
        moves: list[str],
        state: dict[str, Any],
    ) -> None:
        spec = GAMES[game]
        await self._start(game, difficulty, seed)
        for taken in moves:  # resume: repeat hints and moves to restore the hint generator
            hint = await self._request("hint")
            if parse_hint(game, hint) != taken and game != "scheduler":
                self.stats.replay_mismatches += 1
            result = self._json(await self._request(taken), f"replaying {taken!r}")
            if not result.get("success"):
                self.stats.replay_mismatches += 1
                raise _Replay(f"replaying {taken!r} failed")
        while not state["done"] and len(samples) < self.source.hints_per_episode:
            raw = await self._request("show")
            observation = self._json(raw, "show")
            if state["optimal_steps"] is None:
                state["optimal_steps"] = int(observation.get("optimal_steps") or 0)
            if observation.get("is_complete"):
                state["done"] = True
                break
            hint = await self._request("hint")
            if hint.lstrip().startswith("{"):  # HINT_NONE / HINT_DENIED: nothing more to learn
                state["done"] = True
                break
            move = parse_hint(game, hint, observation)
            if move is None:
                self.stats.parse_errors += 1
                state["done"] = True
                break
            success: bool | None = None
            code = None
            complete = False
            if spec.applies:
                reply = await self._request(move)
                success, code = self._result(reply, move)
                complete = '"type":"complete"' in reply
            else:
                self.stats.moves_unapplied += 1
            samples.append(
                self._sample(
                    index,
                    game,
                    difficulty,
                    seed,
                    len(samples),
                    raw,
                    observation,
                    hint,
                    move,
                    success,
                    code,
                    complete,
                    state["optimal_steps"],
                )
            )
            if success:
                moves.append(move)
            else:
                if success is False:
                    self.stats.move_failures += 1
                state["done"] = True
            if complete:
                self.stats.completed += 1
                state["done"] = True

    def _sample(
        self,
        index: int,
        game: str,
        difficulty: str,
        seed: int,
        step: int,
        raw: str,
        observation: Mapping[str, Any],
        hint: str,
        move: str,
        success: bool | None,
        code: Any,
        complete: bool,
        optimal_initial: int,
    ) -> dict[str, Any]:
        spec = GAMES[game]
        if self.source.prompt_format == "json":
            prompt = raw.strip() + "\n"
        else:
            grid = str(observation.get("grid_display") or "").rstrip("\n")
            prompt = f"{spec.display} ({difficulty})\n{grid}\n"
        return {
            "prompt": prompt,
            "completion": move,
            "episode_id": index,
            "step_index": step,
            "difficulty": difficulty_score(difficulty, optimal_initial),
            "success": success,
            "reward": 1.0 if success else 0.0,
            "source": PuzzleArcadeSource.name,
            "meta": {
                "game": game,
                "display_name": spec.display,
                "level": difficulty,
                "seed": seed,
                "hint": re.sub(r"^(?:Hint|HINT):\s*", "", hint.strip()),
                "applied": success is not None,
                "code": code,
                "complete": complete,
                "optimal_steps": observation.get("optimal_steps"),
                "optimal_steps_initial": optimal_initial,
            },
        }


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(PuzzleArcadeSource)
