"""The bounded line client and the ``telnet`` source against hostile loopback peers.

Every peer here is a small asyncio server on 127.0.0.1; every test is bounded
by the client's own time-outs (asserted) and by ``asyncio.wait_for`` guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from laden.errors import ConfigError
from laden.plugins.sources.telnet import TelnetSource
from laden.stream.net import (
    ConnectError,
    NetCounters,
    NetLimits,
    NetTimeoutError,
    PeerClosedError,
    TelnetFilter,
    _Assembler,
    connect,
    connect_with_retry,
    iterate_sync,
)
from tests.arcade_server import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
GUARD = 10.0  # no test may take longer than this, whatever the client does


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[int]:
    """Run ``handler`` for each connection on a loopback port; yield the port."""
    tasks: set[asyncio.Task[None]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, GUARD))  # type: ignore[arg-type]


async def read_line(reader: asyncio.StreamReader) -> bytes:
    return (await reader.readline()).rstrip(b"\r\n")


def echo_server(reply: Callable[[bytes], bytes], greeting: bytes = b"") -> Handler:
    """A well-behaved prompt server: echo the command, then ``reply(command)`` and the prompt."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        while True:
            line = await read_line(reader)
            if not line and reader.at_eof():
                return
            line = line.replace(b"\xff\xf1", b"")
            if not line:
                continue
            writer.write(line + b"\r\n" + reply(line) + b"\r\n> ")
            await writer.drain()

    return handler


FAST = NetLimits(connect_timeout=1.0, read_timeout=1.0, retries=0)


# ----------------------------------------------------------------- framing


def test_prompt_framing_strips_echo_crlf_and_prompt_without_fixed_sleeps() -> None:
    async def main() -> tuple[list[str], float]:
        async with serve(echo_server(lambda c: b"one\r\ntwo\nthree")) as port:
            client = await connect("127.0.0.1", port, limits=FAST)
            started = time.perf_counter()
            texts = [(await client.request(f"cmd {i}")).text for i in range(50)]
            elapsed = time.perf_counter() - started
            await client.close()
            return texts, elapsed

    texts, elapsed = run(main())
    assert texts == ["one\ntwo\nthree"] * 50
    assert elapsed < 1.0, f"50 loopback requests took {elapsed:.3f} s: a fixed sleep somewhere?"


def test_prompt_split_across_writes_still_frames_one_reply() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_line(reader)
        for piece in (b"ping\r\nhal", b"f a line\r", b"\n", b">", b" "):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        await asyncio.sleep(5)

    async def main() -> str:
        async with serve(handler) as port:
            client = await connect("127.0.0.1", port, limits=FAST, telnet=False)
            reply = await client.request("ping")
            await client.close()
            return reply.text

    assert run(main()) == "half a line"


def test_greeting_is_read_and_the_client_opens_with_a_lone_iac_nop() -> None:
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # WILL ECHO, WILL SGA, DO SGA, DO TTYPE, DO NAWS, WONT LINEMODE, like the arcade.
        writer.write(bytes.fromhex("fffb01fffb03fffd03fffd18fffd1ffffc22"))
        first = await asyncio.wait_for(reader.read(100), 2)
        received.append(first)
        writer.write(b"WELCOME\r\n====\n\r\n")
        line = await read_line(reader)
        received.append(line)
        writer.write(line + b"\r\nok\r\n> ")
        await writer.drain()
        await asyncio.sleep(5)

    async def main() -> tuple[str, NetCounters]:
        counters = NetCounters()
        async with serve(handler) as port:
            client = await connect(
                "127.0.0.1", port, limits=FAST, counters=counters, greeting=b"====\n\r\n"
            )
            reply = await client.request("hello")
            await client.close()
            return reply.text, counters

    text, counters = run(main())
    assert received == [b"\xff\xf1", b"hello"]  # NOP alone; negotiation never answered
    assert text == "ok"
    assert counters.telnet_commands == 6
    assert 0 < counters.handshake_s < 1.0


# ----------------------------------------------------------- hostile peers


def test_silent_peer_times_out_within_the_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def main() -> tuple[float, NetCounters, bool]:
        counters = NetCounters()
        async with serve(handler) as port:
            client = await connect(
                "127.0.0.1", port, limits=NetLimits(read_timeout=0.3), counters=counters
            )
            started = time.perf_counter()
            with pytest.raises(NetTimeoutError, match=r"within 0\.3 s"):
                await client.request("anyone?")
            elapsed = time.perf_counter() - started
            await client.close()
            return elapsed, counters, client.broken

    elapsed, counters, broken = run(main())
    assert 0.25 < elapsed < 1.5
    assert counters.timeouts == 1
    assert counters.errors == 1
    assert broken


def test_slow_peer_one_byte_per_second_is_cut_by_the_reply_deadline() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_line(reader)
        for byte in b"a slow reply that would take a minute\r\n> ":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1.0)

    async def main(limits: NetLimits) -> tuple[float, NetCounters]:
        counters = NetCounters()
        async with serve(handler) as port:
            client = await connect("127.0.0.1", port, limits=limits, counters=counters)
            started = time.perf_counter()
            with pytest.raises(NetTimeoutError):
                await client.request("go")
            elapsed = time.perf_counter() - started
            await client.close()
            return elapsed, counters

    # The whole reply may take 2.5 s: bytes keep coming, the deadline still holds.
    elapsed, counters = run(main(NetLimits(read_timeout=2.5)))
    assert 2.4 < elapsed < 3.5
    assert counters.timeouts == 1
    assert counters.bytes_in >= 2
    # An idle time-out shorter than the gap between bytes cuts it sooner.
    elapsed, counters = run(main(NetLimits(read_timeout=20, idle_timeout=0.4)))
    assert elapsed < 1.9
    assert counters.timeouts == 1


def test_peer_closing_mid_reply_raises_with_the_partial_text() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_line(reader)
        writer.write(b"partial repl")
        await writer.drain()
        writer.close()

    async def main() -> tuple[str, NetCounters]:
        counters = NetCounters()
        async with serve(handler) as port:
            client = await connect("127.0.0.1", port, limits=FAST, counters=counters)
            with pytest.raises(PeerClosedError) as caught:
                await client.request("x")
            await client.close()
            return caught.value.partial, counters

    partial, counters = run(main())
    assert partial == "partial repl"
    assert counters.closed_mid_reply == 1
    assert counters.errors == 1


def test_refused_connection_retries_with_backoff_then_fails() -> None:
    port = free_port()  # nothing listens there
    counters = NetCounters()
    limits = NetLimits(connect_timeout=0.5, retries=3, backoff_initial=0.05, backoff_max=0.1)
    started = time.perf_counter()
    with pytest.raises(ConnectError, match=r"cannot connect.*after 4 attempts"):
        run(connect_with_retry("127.0.0.1", port, limits=limits, counters=counters))
    elapsed = time.perf_counter() - started
    assert counters.connect_failures == 4
    assert counters.connects == 0
    assert 0.05 + 0.1 + 0.1 <= elapsed < 3.0  # waited 0.05, 0.1, 0.1 (capped): no spinning


def test_a_one_mib_line_is_cut_and_counted_and_memory_stays_bounded() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await read_line(reader)
            if reader.at_eof():
                return
            writer.write(line + b"\r\n")
            piece = b"x" * (1 << 14)
            for _ in range(64):  # 1 MiB in pieces, so the peer itself holds little
                writer.write(piece)
                await writer.drain()
            writer.write(b"\r\nafter\r\n> ")
            await writer.drain()

    async def main() -> tuple[list[Any], NetCounters, int]:
        counters = NetCounters()
        limits = NetLimits(read_timeout=5, max_line_bytes=4096, max_message_bytes=1 << 16)
        async with serve(handler) as port:
            client = await connect("127.0.0.1", port, limits=limits, counters=counters)
            tracemalloc.start()
            first = await client.request("big")
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            await client.close()
            return [first], counters, peak

    (reply,), counters, peak = run(main())
    lines = reply.text.split("\n")
    assert lines == ["x" * 4096, "after"]
    assert reply.cut_lines == 1
    assert not reply.cut
    assert reply.size > 1 << 20
    assert counters.cut_lines == 1
    assert counters.bytes_in > 1 << 20
    # Client and peer together never held the line: far less than its 1 MiB.
    assert peak < 1 << 20, f"peak {peak} bytes while reading a 1 MiB line"


def test_a_flood_is_cut_at_the_message_bound() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_line(reader)
        for _ in range(256):
            writer.write(b"flood line\r\n" * 1000)
            await writer.drain()
        writer.write(b"> ")
        await writer.drain()
        await asyncio.sleep(5)

    async def main() -> tuple[Any, NetCounters, bool]:
        counters = NetCounters()
        limits = NetLimits(read_timeout=8, max_message_bytes=1 << 16)
        async with serve(handler) as port:
            client = await connect(
                "127.0.0.1", port, limits=limits, counters=counters, telnet=False
            )
            reply = await client.request("flood")
            await client.close()
            return reply, counters, client.broken

    reply, counters, broken = run(main())
    assert reply.cut
    assert len(reply.text.encode()) <= 1 << 16
    assert reply.size == 256 * 12_000 + 2
    assert counters.cut_messages == 1
    assert broken  # framing is no longer trusted after a cut reply


def test_non_utf8_and_garbage_bytes_are_replaced_and_counted() -> None:
    garbage = bytes(range(0x80, 0xFF)) + b"\x00\x01 ok"

    async def main() -> tuple[Any, NetCounters]:
        counters = NetCounters()
        handler = echo_server(lambda c: b"caf\xe9 and \xc3\x28 then " + garbage)
        async with serve(handler) as port:
            client = await connect("127.0.0.1", port, limits=FAST, counters=counters, telnet=False)
            reply = await client.request("x")
            await client.close()
            return reply, counters

    reply, counters = run(main())
    assert reply.text.startswith("caf\ufffd and \ufffd( then ")
    assert reply.text.endswith("\x00\x01 ok")
    assert reply.replaced >= 3
    assert counters.replaced_bytes == reply.replaced


def test_iac_floods_are_stripped_and_an_endless_subnegotiation_times_out() -> None:
    async def nop_flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_line(reader)
        writer.write(b"\xff\xf1" * 100_000 + b"he\xff\xfb\x01llo\xff\xff\r\n> ")
        await writer.drain()
        await asyncio.sleep(5)

    async def endless_sb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_line(reader)
        writer.write(b"\xff\xfa\x18" + b"\x00" * (1 << 20) + b"\r\n> ")
        await writer.drain()
        await asyncio.sleep(5)

    async def main(handler: Handler) -> tuple[Any, NetCounters]:
        counters = NetCounters()
        async with serve(handler) as port:
            client = await connect(
                "127.0.0.1", port, limits=NetLimits(read_timeout=1.0), counters=counters
            )
            try:
                reply: Any = await client.request("x")
            except NetTimeoutError as exc:
                reply = exc
            await client.close()
            return reply, counters

    reply, counters = run(main(nop_flood))
    assert reply.text == "hello\ufffd"  # IAC IAC is a data byte: 0xff, undecodable alone
    assert reply.replaced == 1
    assert counters.telnet_commands == 100_001
    reply, counters = run(main(endless_sb))
    assert isinstance(reply, NetTimeoutError)  # the prompt was inside the subnegotiation
    assert counters.timeouts == 1


# ---------------------------------------------------------- the pieces alone


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=400).map(lambda b: b.replace(b"\xff\xfa", b"\xff\xf1")),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_telnet_filter_is_independent_of_chunking(data: bytes, cuts: list[int]) -> None:
    whole = TelnetFilter().feed(data)
    pieces = TelnetFilter()
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    chunked = b"".join(pieces.feed(data[a:b]) for a, b in itertools.pairwise(bounds))
    assert chunked == whole
    assert b"\xff" not in whole.replace(b"\xff", b"", whole.count(b"\xff"))


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\n")), max_size=20),
    max_line=st.integers(1, 64),
    max_message=st.integers(1, 512),
)
def test_assembler_never_exceeds_its_bounds(
    chunks: list[bytes], max_line: int, max_message: int
) -> None:
    asm = _Assembler(b"\n> ", max_line, max_message)
    for chunk in chunks:
        asm.feed(chunk)
        assert len(asm.buf) <= max_message
    for line in bytes(asm.buf).split(b"\n"):
        assert len(line) <= max_line
    stream = b"".join(chunks)
    assert asm.size == len(stream)
    assert asm.cut_lines == sum(len(line) > max_line for line in stream.split(b"\n"))
    if len(stream) <= max_message and all(len(x) < max_line for x in stream.split(b"\n")):
        assert bytes(asm.buf) == stream
        assert asm.cut_lines == 0
        assert not asm.cut


def test_iterate_sync_closes_the_async_iterator_when_the_loop_breaks() -> None:
    closed: list[bool] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            for i in range(100):
                await asyncio.sleep(0)
                yield i
        finally:
            closed.append(True)

    for i in iterate_sync(numbers):
        if i == 3:
            break
    assert closed == [True]

    async def inside() -> None:
        with pytest.raises(RuntimeError, match="async for"):
            next(iterate_sync(numbers))

    asyncio.run(inside())


# ------------------------------------------------------------ telnet source


def test_telnet_source_yields_one_sample_per_reply_sync_and_async() -> None:
    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        handler = echo_server(lambda c: b"re: " + c, greeting=b"hi\r\n====\n\r\n")
        async with serve(handler) as port:
            source = TelnetSource(port=port, requests=("a", "b"), repeat=2, greeting="====\n\r\n")
            got = [s async for s in source]
            paired = TelnetSource(port=port, requests=["q"], pairs=True, greeting="====\n\r\n")
            pairs = [s async for s in paired]
            return got, pairs

    got, pairs = run(main())
    assert [s["text"] for s in got] == ["re: a", "re: b", "re: a", "re: b"]
    assert [s["sample_id"] for s in got] == [0, 1, 2, 3]
    assert [(s["episode_id"], s["step_index"]) for s in got] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(s["source"] == "telnet" and s["meta"]["cut_lines"] == 0 for s in got)
    assert pairs[0]["prompt"] == "q\n"
    assert pairs[0]["completion"] == "re: q"
    assert "text" not in pairs[0]


def test_telnet_source_sync_iteration_matches_async() -> None:
    import threading

    ready = threading.Event()
    stop = threading.Event()
    port_box: list[int] = []

    def server_thread() -> None:
        async def main() -> None:
            async with serve(echo_server(lambda c: c.upper())) as port:
                port_box.append(port)
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.02)

        asyncio.run(main())

    thread = threading.Thread(target=server_thread, daemon=True)
    thread.start()
    try:
        assert ready.wait(5)
        source = TelnetSource(port=port_box[0], requests=("abc", "def"))
        assert [s["text"] for s in source] == ["ABC", "DEF"]
    finally:
        stop.set()
        thread.join(5)


def test_telnet_source_reconnects_and_skips_a_failed_request() -> None:
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            line = (await read_line(reader)).replace(b"\xff\xf1", b"")
            if reader.at_eof():
                return
            if not line:
                continue
            if line == b"setup":
                writer.write(b"setup\r\nready\r\n> ")
            elif line == b"die" and len(connections) == 1:
                writer.write(b"die\r\nhalf")
                await writer.drain()
                writer.close()
                return
            else:
                writer.write(line + b"\r\nok " + line + b"\r\n> ")
            await writer.drain()

    async def main() -> tuple[list[dict[str, Any]], NetCounters]:
        counters = NetCounters()
        async with serve(handler) as port:
            source = TelnetSource(
                port=port, requests=("a", "die", "b"), setup=("setup",), backoff_initial=0.01
            )
            got = [s async for s in source.stream(counters)]
            return got, counters

    got, counters = run(main())
    assert [s["text"] for s in got] == ["ok a", "ok b"]
    assert [s["step_index"] for s in got] == [0, 2]
    assert counters.reconnects == 1
    assert counters.closed_mid_reply == 1
    assert len(connections) == 2


def test_telnet_source_on_error_raises_when_asked() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        async with serve(handler) as port:
            source = TelnetSource(port=port, requests=("a",), read_timeout=0.2, on_error="error")
            with pytest.raises(NetTimeoutError):
                [s async for s in source]

    run(main())


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": 1, "requests": ["two\nlines"]}, "requests[0]"),
        ({"port": 1, "read_timeout": 0}, "read_timeout"),
        ({"port": 1, "on_error": "ignore"}, "on_error"),
        ({"port": 1, "max_line_bytes": 0}, "max_line_bytes"),
    ],
)
def test_telnet_source_config_errors_name_the_key(config: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TelnetSource(**config)
    assert str(caught.value).startswith(path + ":")
