"""Puzzle arcade ingestion: laden's ``puzzle_arcade`` beside a bare asyncio socket pool.

    python benchmarks/bench_arcade.py [--episodes 32] [--hints 30] [--repeats 3]

Starts the real server (``chuk-puzzles-gym``, extra ``arcade``) on a free
loopback port, then, side by side against that one server, alternating runs:

- a bare asyncio client pool (``open_connection``, ``read(n)`` until the
  prompt, no time-outs, no bounds, no recovery) doing per sample exactly what
  laden does: ``show`` + ``hint`` + the hinted move (sudoku, ``place r c v``),
  and per episode ``menu`` + ``sudoku easy SEED`` (+ ``mode json`` once);
- laden's ``puzzle_arcade`` source with the same episodes and K connections.

Targets (issue 12): laden reaches at least 0.9x the bare pool's samples/s at
K = 1 and K = 8; connect + handshake (banner read) under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import print_table

from laden.contrib.puzzle_arcade import PuzzleArcadeSource
from laden.stream.net import NetCounters, connect
from tests.arcade_server import SKIP_REASON, ArcadeServer

GREETING = b"====\n\r\n"
PROMPT = b"\n> "
HINT = re.compile(rb"placing (\d+) at row (\d+), column (\d+)")


# ------------------------------------------------------------- bare pool


async def bare_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\xff\xf1")
    buf = b""
    while not buf.endswith(GREETING):
        buf += await reader.read(65536)
    return reader, writer


async def bare_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: bytes
) -> bytes:
    writer.write(command + b"\n")
    buf = b""
    while not buf.endswith(PROMPT):
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


async def bare_pool(port: int, episodes: list[int], hints: int, k: int) -> int:
    queue = list(reversed(episodes))
    samples = 0

    async def worker() -> None:
        nonlocal samples
        reader, writer = await bare_open(port)
        in_game = json_mode = False
        while queue:
            seed = queue.pop()
            if in_game:
                await bare_request(reader, writer, b"menu")
            await bare_request(reader, writer, b"sudoku easy %d" % seed)
            in_game = True
            if not json_mode:
                await bare_request(reader, writer, b"mode json")
                json_mode = True
            for _ in range(hints):
                show = await bare_request(reader, writer, b"show")
                observation = json.loads(show.split(b"\r\n")[1])
                if observation["is_complete"]:
                    break
                hint = HINT.search(await bare_request(reader, writer, b"hint"))
                if hint is None:
                    break
                value, row, col = hint.groups()
                await bare_request(reader, writer, b"place %s %s %s" % (row, col, value))
                samples += 1
        writer.write(b"quit\n")
        writer.close()

    await asyncio.gather(*(worker() for _ in range(k)))
    return samples


async def laden_pool(port: int, episodes: list[int], hints: int, k: int) -> int:
    source = PuzzleArcadeSource(
        port=port, games=["sudoku"], seeds=episodes, hints_per_episode=hints, connections=k
    )
    samples = 0
    async for _ in source:
        samples += 1
    return samples


def rate(fn, *args) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    n = asyncio.run(fn(*args))
    return n / (time.perf_counter() - started), n


# ------------------------------------------------------------ handshakes


async def handshakes(port: int, n: int) -> tuple[list[float], list[float]]:
    ours, bare = [], []
    for _ in range(n):
        counters = NetCounters()
        client = await connect("127.0.0.1", port, counters=counters, greeting=GREETING)
        ours.append(counters.handshake_s)
        await client.close("quit")
        started = time.perf_counter()
        _, writer = await bare_open(port)
        bare.append(time.perf_counter() - started)
        writer.write(b"quit\n")
        writer.close()
    return ours, bare


async def bare_hints(port: int, n: int) -> float:
    reader, writer = await bare_open(port)
    await bare_request(reader, writer, b"sudoku easy 1")
    started = time.perf_counter()
    for i in range(n):
        if i % 90 == 89:  # stay within the 99-hint budget
            await bare_request(reader, writer, b"menu")
            await bare_request(reader, writer, b"sudoku easy 1")
        await bare_request(reader, writer, b"hint")
    elapsed = time.perf_counter() - started
    writer.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--hints", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    if SKIP_REASON is not None:
        sys.exit(SKIP_REASON)
    episodes = list(range(1000, 1000 + args.episodes))
    with ArcadeServer() as server:
        port = server.port
        ours, bare = asyncio.run(handshakes(port, 20))
        hints_per_s = asyncio.run(bare_hints(port, 900))
        rows = []
        for k in (1, 8):
            bare_rates: list[float] = []
            laden_rates: list[float] = []
            counts: dict[str, int] = {}
            for i in range(args.repeats):  # alternate (ABBA), so drift hits both alike
                order = [(bare_pool, bare_rates), (laden_pool, laden_rates)]
                for fn, rates in order if i % 2 == 0 else order[::-1]:
                    r, n = rate(fn, port, episodes, args.hints, k)
                    rates.append(r)
                    counts[fn.__name__] = n
            n_bare, n_laden = counts["bare_pool"], counts["laden_pool"]
            assert n_bare == n_laden, (n_bare, n_laden)
            b, l_ = statistics.median(bare_rates), statistics.median(laden_rates)
            rows.append(
                [f"show+hint+move, K={k}", n_laden, f"{b:,.0f}", f"{l_:,.0f}", f"{l_ / b:.2f}"]
            )
    print(f"chuk-puzzles-gym server on 127.0.0.1:{port}; medians of {args.repeats} runs\n")
    print_table(["samples/s", "samples", "bare asyncio", "laden", "ratio"], rows)
    print()
    print_table(
        ["connect + handshake", "median ms", "max ms"],
        [
            ["laden connect()", f"{statistics.median(ours) * 1e3:.1f}", f"{max(ours) * 1e3:.1f}"],
            ["bare asyncio", f"{statistics.median(bare) * 1e3:.1f}", f"{max(bare) * 1e3:.1f}"],
        ],
    )
    print(f"\nbare hints/s, 1 connection: {hints_per_s:,.0f}")


if __name__ == "__main__":
    main()
