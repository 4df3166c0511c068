"""``puzzle_arcade``: hint parsing, config checks, and ingestion from the real server.

The server tests use the ``arcade_server`` fixture (``tests/conftest.py``):
the real ``chuk-puzzles-gym`` server on a free loopback port, skipped when the
``arcade`` extra is not installed.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from laden.contrib.puzzle_arcade import (
    DIFFICULTIES,
    GAMES,
    ArcadeStats,
    PuzzleArcadeSource,
    difficulty_score,
    parse_hint,
)
from laden.errors import ConfigError
from laden.stream.net import NetCounters, NetLimits, NetTimeoutError, connect
from tests.arcade_server import SKIP_REASON, ArcadeServer, free_port

# One hint per wording the server uses (chuk-puzzles-gym 0.10.3), and the move it means.
HINTS = [
    ("sudoku", "Hint: Try placing 8 at row 9, column 2", "place 9 2 8"),
    ("kenken", "Hint: Try placing 3 at row 4, column 2", "place 4 2 3"),
    ("skyscrapers", "Hint: Try placing 4 at row 1, column 3.", "place 1 3 4"),
    ("nonogram", "Hint: Try marking row 3, column 4 as filled (■)", "place 3 4 1"),
    ("nonogram", "Hint: Try marking row 2, column 1 as empty (X)", "place 2 1 0"),
    ("logic", "Hint: Alice has the Blue color", "connect person Alice color Blue"),
    ("lights", "Hint: Try pressing the light at row 1, column 3", "press 1 3"),
    ("mastermind", "Hint: The secret code is: 2 5 1 3", "guess 2 5 1 3"),
    ("slither", "Hint: Try setting horizontal edge at (1,1) to line", "set h 1 1 1"),
    ("slither", "Hint: Try setting vertical edge at (2,5) to line", "set v 2 5 1"),
    ("bridges", "Hint: Try placing 2 bridge(s) between (4,4) and (4,6)", "bridge 4 4 4 6 2"),
    ("hitori", "Hint: Try shading cell at row 1, column 3", "shade 1 3"),
    ("shikaku", "Hint: Try rectangle from (1,1) to (2,3)", "place 1 1 2 3"),
    ("tents", "Hint: Try placing a tent at row 1, column 2", "place 1 2"),
    ("tents", "Hint: Remove the tent at row 3, column 2", "remove 3 2"),
    ("star_battle", "Hint: Try placing a star at row 1, column 2", "place 1 2"),
    ("sokoban", "Hint: Move right to get into push position", "move right"),
    ("sokoban", "Hint: Push up to move box toward goal", "move up"),
    ("sokoban", "Hint: Try pushing left", "move left"),
    ("knapsack", "Hint: Try selecting item 1 (Gold Bar)", "select 1"),
    ("knapsack", "Hint: Try deselecting item 4 (Old Map)", "deselect 4"),
    ("nurikabe", "Hint: Try marking (1,2) as white", "mark 1 2 white"),
    ("einstein", "Hint: Try assigning Blue to house 1 as its color", "assign 1 color Blue"),
    ("minesweeper", "Hint: Try revealing cell (1,1) - it's safe", "reveal 1 1"),
    ("minesweeper", "Hint: Try flagging cell (3,7) - it's a mine", "flag 3 7"),
    ("nqueens", "Hint: Try placing a queen at row 1, column 3.", "place 1 3 1"),
    ("graph_coloring", "Hint: Try coloring node 1 with Red (color 1).", "place 1 1"),
    ("cryptarithmetic", "Hint: Try assigning I = 9.", "assign I 9"),
    ("rush_hour", "Hint: Try moving vehicle X right.", "move X right"),
]


@pytest.mark.parametrize(("game", "hint", "move"), HINTS)
def test_every_hint_wording_parses_into_its_move(game: str, hint: str, move: str) -> None:
    assert parse_hint(game, hint) == move


def test_scheduler_hints_name_tasks_the_command_takes_by_number() -> None:
    display = "Tasks:\n   1 | Task A |    3hrs\n   2 | Task B |    6hrs\n  12 | Task L |    1hrs"
    hint = "Hint: Try scheduling Task L on Worker 2 at time 5"
    assert parse_hint("scheduler", hint, {"grid_display": display}) == "assign 12 2 5"
    assert parse_hint("scheduler", "Try scheduling Task C on Worker 1 at time 0") == "assign 3 1 0"


@pytest.mark.parametrize("game", sorted(GAMES))
def test_text_that_is_no_hint_does_not_parse(game: str) -> None:
    assert parse_hint(game, "Puzzle not yet complete. Keep going!") is None
    assert parse_hint(game, "") is None


@given(st.integers(1, 99), st.integers(1, 99), st.integers(0, 99))
def test_place_value_hints_keep_row_column_value_order(row: int, col: int, value: int) -> None:
    hint = f"Hint: Try placing {value} at row {row}, column {col}"
    for game in ("sudoku", "kakuro", "binary", "futoshiki", "killer", "hidato", "fillomino"):
        assert parse_hint(game, hint) == f"place {row} {col} {value}"


@given(st.sampled_from(DIFFICULTIES), st.integers(0, 10_000), st.integers(0, 10_000))
def test_difficulty_is_in_its_band_and_grows_with_size(level: str, a: int, b: int) -> None:
    low, high = sorted((a, b))
    band = DIFFICULTIES.index(level)
    score = difficulty_score(level, low)
    assert band / 3 <= score <= (band + 1) / 3
    assert score <= difficulty_score(level, high)


def test_the_game_table_covers_the_thirty_games_of_the_server() -> None:
    assert len(GAMES) == 30
    if SKIP_REASON is None:
        from chuk_puzzles_gym.games import AVAILABLE_GAMES

        assert list(GAMES) == list(AVAILABLE_GAMES)
        for game, cls in AVAILABLE_GAMES.items():
            assert GAMES[game].display == cls("easy").name  # json "game" is the display name


# ---------------------------------------------------------------- config


def test_unknown_game_is_a_config_error_listing_the_games_before_connecting() -> None:
    # Nothing listens on this port: the error must come from the config alone.
    with pytest.raises(ConfigError) as caught:
        PuzzleArcadeSource(port=free_port(), games=["sudoku", "chess"])
    message = str(caught.value)
    assert message.startswith("games[1]: unknown game 'chess'")
    assert all(game in message for game in GAMES)


def test_unknown_difficulty_is_a_config_error_listing_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        PuzzleArcadeSource(games=["sudoku"], difficulties=["easy", "very_hard"])
    assert str(caught.value) == (
        "difficulties[1]: unknown difficulty 'very_hard' for 'sudoku'; valid: easy, medium, hard"
    )


@pytest.mark.parametrize(
    ("config", "start"),
    [
        ({"games": []}, "games: needs at least one game"),
        ({"difficulties": []}, "difficulties: needs at least one"),
        ({"hints_per_episode": 100}, "hints_per_episode: must be <= 99"),
        ({"hints_per_episode": 0}, "hints_per_episode: must be >= 1"),
        ({"seeds": [1], "seed_range": [0, 5]}, "seed_range: give seeds or seed_range"),
        ({"seed_range": [5, 5]}, "seed_range: must be [start, stop)"),
        ({"seeds": [-1]}, "seeds[0]: a seed is an integer >= 0"),
        ({"connections": 0}, "connections: must be >= 1"),
        ({"prompt_format": "xml"}, "prompt_format: must be one of"),
        ({"port": 70000}, "port: must be a TCP port"),
    ],
)
def test_config_errors_name_the_key(config: dict[str, Any], start: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PuzzleArcadeSource(**config)
    assert str(caught.value).startswith(start)


def test_games_by_display_name_or_all_and_the_episode_order() -> None:
    source = PuzzleArcadeSource(
        games=["Rush Hour", "KenKen"], difficulties="medium", seed_range=[3, 5]
    )
    assert source.games == ("rush_hour", "kenken")
    assert source.episodes() == [
        ("rush_hour", "medium", 3),
        ("kenken", "medium", 3),
        ("rush_hour", "medium", 4),
        ("kenken", "medium", 4),
    ]
    assert PuzzleArcadeSource(games="all").games == tuple(GAMES)


# ------------------------------------------------------------ real server


def canonical(samples: list[dict[str, Any]]) -> bytes:
    return b"\n".join(json.dumps(s, sort_keys=True).encode() for s in samples)


def check_contract(sample: dict[str, Any]) -> None:
    assert isinstance(sample["prompt"], str)
    assert sample["prompt"]
    assert isinstance(sample["completion"], str)
    assert sample["completion"]
    assert isinstance(sample["sample_id"], int)
    assert isinstance(sample["episode_id"], int)
    assert isinstance(sample["step_index"], int)
    assert sample["step_index"] >= 0
    assert 0.0 <= sample["difficulty"] <= 1.0
    assert sample["success"] in (True, False, None)
    assert isinstance(sample["reward"], float)
    assert sample["source"] == "puzzle_arcade"
    json.dumps(sample["meta"])


def test_connect_and_handshake_under_50_ms(arcade_server: ArcadeServer) -> None:
    async def main() -> list[float]:
        times = []
        for _ in range(7):
            counters = NetCounters()
            client = await connect(
                "127.0.0.1", arcade_server.port, counters=counters, greeting=b"====\n\r\n"
            )
            reply = await client.request("help")
            assert "PUZZLE ARCADE" in reply.text
            await client.close("quit")
            times.append(counters.handshake_s)
        return times

    times = asyncio.run(asyncio.wait_for(main(), 30))
    print(f"connect + handshake: median {statistics.median(times) * 1000:.1f} ms")
    assert statistics.median(times) < 0.05


def test_a_request_the_server_never_answers_times_out_and_is_counted(
    arcade_server: ArcadeServer,
) -> None:
    async def main() -> NetCounters:
        counters = NetCounters()
        limits = NetLimits(read_timeout=0.5)
        client = await connect(
            "127.0.0.1",
            arcade_server.port,
            limits=limits,
            counters=counters,
            greeting=b"====\n\r\n",
        )
        with pytest.raises(NetTimeoutError):
            await client.request("sudoku very_hard")  # a server-side exception: no reply
        await client.close()
        return counters

    counters = asyncio.run(asyncio.wait_for(main(), 30))
    assert counters.timeouts == 1


# Seeds whose puzzles generate in 0.1-5 s on a 2-core machine: for most seeds these
# two generators take 5 s to several minutes (cryptarithmetic brute-forces digit
# permutations), blocking the whole server meanwhile.
SLOW_GAMES = {
    "rush_hour": {"easy": 3, "medium": 7, "hard": 0},
    "cryptarithmetic": {"easy": 22, "medium": 29, "hard": 0},
}


def test_every_game_at_every_difficulty_runs_an_episode_without_parse_errors(
    arcade_server: ArcadeServer,
) -> None:
    started = time.monotonic()
    stats = ArcadeStats()
    seen: dict[tuple[str, str], list[dict[str, Any]]] = {}
    fast = [g for g in GAMES if g not in SLOW_GAMES]
    configs = [dict(games=fast, difficulties=DIFFICULTIES, seeds=[3])]
    for game, seeds in SLOW_GAMES.items():
        for level, seed in seeds.items():
            configs.append(dict(games=[game], difficulties=[level], seeds=[seed]))
    for config in configs:
        source = PuzzleArcadeSource(
            port=arcade_server.port, hints_per_episode=99, connections=3, read_timeout=60, **config
        )
        for chunk in source.iter_chunks(stats):
            assert chunk, "an episode without a sample"
            meta = chunk[0]["meta"]
            seen[(meta["game"], meta["level"])] = chunk
            for sample in chunk:
                check_contract(sample)
    elapsed = time.monotonic() - started
    expected = {(g, d) for g in fast for d in DIFFICULTIES}
    expected |= {(g, d) for g, seeds in SLOW_GAMES.items() for d in seeds}
    assert set(seen) == expected
    assert len(seen) == 90  # all 30 games at easy, medium and hard
    assert stats.parse_errors == 0
    assert stats.bad_replies == 0
    assert stats.move_failures == 0
    assert stats.episodes_failed == 0
    assert stats.net.timeouts == 0
    assert stats.net.errors == 0
    unapplied = {g for g, spec in GAMES.items() if not spec.applies}
    for (game, _level), chunk in seen.items():
        if game in unapplied:
            assert [s["success"] for s in chunk] == [None]
            assert chunk[0]["meta"]["applied"] is False
        else:
            assert all(s["success"] for s in chunk), game
            assert [s["step_index"] for s in chunk] == list(range(len(chunk)))
    solved = sum(chunk[-1]["meta"]["complete"] for chunk in seen.values())
    assert solved == stats.completed
    assert solved >= 60
    print(f"{len(seen)} episodes, {stats.samples} samples, {solved} solved in {elapsed:.1f} s")
    assert elapsed < 240


def test_same_seeds_give_a_byte_identical_stream(arcade_server: ArcadeServer) -> None:
    config: dict[str, Any] = dict(
        port=arcade_server.port,
        games=["sudoku", "nonogram", "minesweeper", "sokoban", "logic"],
        difficulties=["easy", "medium"],
        seed_range=[10, 12],
        hints_per_episode=12,
    )
    one = list(PuzzleArcadeSource(connections=1, **config))
    many = list(PuzzleArcadeSource(connections=4, **config))
    assert len(one) > 100
    assert canonical(one) == canonical(many)
    assert [s["sample_id"] for s in one] == list(range(len(one)))
    other = list(PuzzleArcadeSource(connections=2, **{**config, "seed_range": [11, 13]}))
    assert canonical(other) != canonical(one)


def test_async_iteration_and_prompt_formats(arcade_server: ArcadeServer) -> None:
    config: dict[str, Any] = dict(port=arcade_server.port, games=["kenken"], hints_per_episode=3)

    async def collect(source: PuzzleArcadeSource) -> list[dict[str, Any]]:
        return [s async for s in source]

    grid = asyncio.run(asyncio.wait_for(collect(PuzzleArcadeSource(**config)), 60))
    assert canonical(grid) == canonical(list(PuzzleArcadeSource(**config)))
    assert grid[0]["prompt"].startswith("KenKen (easy)\n")
    raw = list(PuzzleArcadeSource(prompt_format="json", **config))
    observation = json.loads(raw[0]["prompt"])
    assert observation["type"] == "observation"
    assert observation["game"] == "KenKen"
    assert observation["optimal_steps"] == raw[0]["meta"]["optimal_steps_initial"]
    assert [s["completion"] for s in raw] == [s["completion"] for s in grid]


def test_server_killed_mid_run_and_restarted_resumes_without_losing_samples(
    tmp_path: Any,
) -> None:
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    config: dict[str, Any] = dict(
        games=["sudoku", "killer"],
        difficulties=["easy"],
        seed_range=[0, 4],
        hints_per_episode=40,
        connections=2,
        retries=30,
        backoff_initial=0.05,
        backoff_max=0.3,
        read_timeout=20,
    )
    with ArcadeServer(log=tmp_path / "server.log") as server:
        reference = list(PuzzleArcadeSource(port=server.port, **config))
        stats = ArcadeStats()
        got: list[dict[str, Any]] = []
        killer: threading.Thread | None = None
        for sample in PuzzleArcadeSource(port=server.port, **config).iter_samples(stats):
            got.append(sample)
            if len(got) == 1:  # the workers are mid-episode: kill and restart meanwhile
                killer = threading.Thread(target=lambda: (time.sleep(0.05), server.restart()))
                killer.start()
        assert killer is not None
        killer.join(30)
    assert canonical(got) == canonical(reference)  # nothing lost, nothing repeated
    assert stats.recoveries >= 1
    assert stats.net.reconnects >= 1
    assert stats.net.errors >= 1
    assert stats.episodes_failed == 0
