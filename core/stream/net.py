"""Bounded asyncio line-protocol I/O: a client a hostile peer can neither hang nor bloat.

:class:`LineClient` talks to request/reply servers that end each reply with a
prompt (``b"\\n> "``): a telnet game server, a REPL, a chat bot. It knows no
game. What it guarantees:

- **Time-outs everywhere**: connecting (``connect_timeout``), each whole reply
  (``read_timeout``) and each silence inside one (``idle_timeout``). A silent
  peer, a slow one (1 byte/s) and one that never sends the prompt all end in a
  :class:`NetTimeoutError`; a peer that closes mid-reply in a
  :class:`PeerClosedError` carrying what arrived.
- **Bounded memory**: bytes are read with ``reader.read(n)`` (never
  ``readline()``); a line longer than ``max_line_bytes`` keeps only its head,
  a reply larger than ``max_message_bytes`` only its start. Each cut is
  counted; the buffer never exceeds the limit, whatever the peer sends.
- **Telnet**: IAC negotiation (``WILL``/``DO``/``SB ... SE``, ``NOP``) is
  stripped from the input and never answered, so no stray bytes reach the
  server; an escaped ``IAC IAC`` stays a ``0xff`` data byte.
- **Prompt framing**: a reply is complete when the bytes received end with the
  prompt; there is no fixed sleep anywhere.
- **Decoding**: UTF-8 with replacement; every replaced byte run is counted.
- **Reconnects**: :func:`connect_with_retry` retries refused or failed
  connections with exponential backoff, a bounded number of times.

Every event is counted in a :class:`NetCounters`, shared by all connections of
a source so one summary covers a whole ingestion run.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import attrs

from laden.errors import LadenError
from laden.validators import at_least, optional, positive

__all__ = [
    "IAC",
    "NOP",
    "ConnectError",
    "LineClient",
    "NetCounters",
    "NetError",
    "NetLimits",
    "NetTimeoutError",
    "PeerClosedError",
    "Reply",
    "TelnetFilter",
    "backoff_delays",
    "connect",
    "connect_with_retry",
    "iterate_sync",
]

IAC = 0xFF
NOP = 0xF1
_SE, _SB = 0xF0, 0xFA
_WILL, _WONT, _DO, _DONT = 0xFB, 0xFC, 0xFD, 0xFE
_REPLACEMENT = "\ufffd"
_REPLACEMENT_UTF8 = _REPLACEMENT.encode()


# ------------------------------------------------------------------ errors


class NetError(LadenError, OSError):
    """A network exchange failed; the message names the peer and the request."""


class ConnectError(NetError):
    """No connection (refused, unreachable, or no greeting in time), retries included."""


class NetTimeoutError(NetError):
    """A reply (or a silence inside one) took longer than its time-out."""


class PeerClosedError(NetError):
    """The peer closed the connection before the reply was complete.

    ``partial`` holds what had arrived (decoded, bounded like any reply).
    """

    def __init__(self, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial


# ------------------------------------------------------------------ config


@attrs.frozen(kw_only=True)
class NetLimits:
    """Time-outs and size bounds of one line-protocol connection.

    :param connect_timeout: seconds to open the connection and read the greeting.
    :param read_timeout: seconds one whole reply may take.
    :param idle_timeout: seconds of silence allowed inside a reply (default: ``read_timeout``).
    :param max_line_bytes: bytes kept of one line; the rest of it is dropped and counted.
    :param max_message_bytes: bytes kept of one reply; the rest is dropped and counted.
    :param read_chunk: bytes asked of the socket per read.
    :param retries: further connection attempts after a failed one.
    :param backoff_initial: seconds before the first retry; doubled each time.
    :param backoff_max: the longest wait between retries.
    """

    connect_timeout: float = attrs.field(default=5.0, validator=positive)
    read_timeout: float = attrs.field(default=30.0, validator=positive)
    idle_timeout: float | None = attrs.field(default=None, validator=optional(positive))
    max_line_bytes: int = attrs.field(default=1 << 18, validator=at_least(1))
    max_message_bytes: int = attrs.field(default=1 << 20, validator=at_least(1))
    read_chunk: int = attrs.field(default=1 << 16, validator=at_least(1))
    retries: int = attrs.field(default=5, validator=at_least(0))
    backoff_initial: float = attrs.field(default=0.05, validator=at_least(0))
    backoff_max: float = attrs.field(default=2.0, validator=at_least(0))

    @classmethod
    def of(cls, config: Any) -> NetLimits:
        """The limits a source's config sets: each field it has by this name (the rest default)."""
        names = [f.name for f in attrs.fields(cls)]
        return cls(**{n: getattr(config, n) for n in names if hasattr(config, n)})


@attrs.define
class NetCounters:
    """What happened on the wire (shared by every connection of one run)."""

    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    closed_mid_reply: int = 0
    errors: int = 0
    cut_lines: int = 0
    cut_messages: int = 0
    replaced_bytes: int = 0
    telnet_commands: int = 0
    handshake_s: float = 0.0  # the last successful connect, greeting included

    def as_dict(self) -> dict[str, float]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class Reply:
    """One complete reply: decoded text (CRLF -> LF, prompt and echo removed) and its cuts."""

    text: str
    size: int  # bytes received for it, after telnet filtering, dropped bytes included
    cut_lines: int
    cut: bool  # the reply exceeded max_message_bytes
    replaced: int  # undecodable byte runs replaced by U+FFFD


# ------------------------------------------------------------------ telnet


class TelnetFilter:
    """Strips telnet commands from a byte stream, chunk by chunk (stateful).

    ``IAC IAC`` becomes one ``0xff`` data byte; ``IAC WILL/WONT/DO/DONT x``,
    ``IAC SB ... IAC SE`` and two-byte commands vanish (counted in
    ``commands``). Nothing is answered. Chunks without ``0xff`` pass unchanged.
    """

    __slots__ = ("_state", "commands")

    _DATA, _IAC, _OPTION, _SB, _SB_IAC = range(5)

    def __init__(self) -> None:
        self._state = self._DATA
        self.commands = 0

    def feed(self, data: bytes) -> bytes:
        if self._state == self._DATA and IAC not in data:
            return data
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == self._DATA:
                j = data.find(b"\xff", i)
                if j < 0:
                    out += data[i:]
                    break
                out += data[i:j]
                self._state = self._IAC
                i = j + 1
                continue
            byte = data[i]
            i += 1
            if state == self._IAC:
                if byte == IAC:
                    out.append(IAC)  # an escaped 0xff data byte
                    self._state = self._DATA
                elif byte in (_WILL, _WONT, _DO, _DONT):
                    self._state = self._OPTION
                elif byte == _SB:
                    self._state = self._SB
                else:  # NOP, GA, AYT, ...: a two-byte command
                    self.commands += 1
                    self._state = self._DATA
            elif state == self._OPTION:
                self.commands += 1
                self._state = self._DATA
            elif state == self._SB:
                # Subnegotiation payloads are skipped without being stored.
                if byte != IAC:
                    j = data.find(b"\xff", i)
                    if j < 0:
                        break
                    i = j + 1
                self._state = self._SB_IAC
            else:  # _SB_IAC
                if byte == _SE:
                    self.commands += 1
                    self._state = self._DATA
                else:
                    self._state = self._SB
        return bytes(out)


# --------------------------------------------------------------- assembling


class _Assembler:
    """Collects one reply within the line and message bounds and spots its end."""

    __slots__ = (
        "buf",
        "cut",
        "cut_lines",
        "line_cut",
        "line_len",
        "max_line",
        "max_message",
        "size",
        "tail",
        "terminator",
    )

    def __init__(self, terminator: bytes, max_line: int, max_message: int) -> None:
        self.terminator = terminator
        self.max_line = max_line
        self.max_message = max_message
        self.buf = bytearray()
        self.tail = b""  # the last len(terminator) bytes of the stream, cuts ignored
        self.line_len = 0
        self.line_cut = False
        self.cut_lines = 0
        self.cut = False
        self.size = 0

    def feed(self, data: bytes) -> None:
        n = len(data)
        self.size += n
        if self.terminator:
            keep = len(self.terminator)
            self.tail = data[-keep:] if n >= keep else (self.tail + data)[-keep:]
        if self.line_len + n <= self.max_line:  # no line here can be too long: keep it all
            nl = data.rfind(b"\n")
            self.line_len = n - nl - 1 if nl >= 0 else self.line_len + n
            self._keep(data)
            return
        start, n = 0, len(data)
        while start < n:
            nl = data.find(b"\n", start)
            end = n if nl < 0 else nl + 1
            room = self.max_line - self.line_len
            if (nl if nl >= 0 else n) - start > room:  # the line's text, without its LF
                if not self.line_cut:
                    self.line_cut = True
                    self.cut_lines += 1
                head = data[start : start + max(room, 0)]
                piece = head + b"\n" if nl >= 0 else head
            else:
                piece = data[start:end]
            if nl >= 0:
                self.line_len = 0
                self.line_cut = False
            else:
                self.line_len += end - start
            self._keep(piece)
            start = end

    def _keep(self, piece: bytes) -> None:
        room = self.max_message - len(self.buf)
        if len(piece) > room:
            self.cut = True
            piece = piece[: max(room, 0)]
        self.buf += piece

    def complete(self) -> bool:
        return bool(self.terminator) and self.tail == self.terminator

    def reply(self, echo: str | None) -> Reply:
        raw = bytes(self.buf)
        if self.terminator and raw.endswith(self.terminator):
            raw = raw[: len(raw) - len(self.terminator)]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
        text, replaced = decode(raw)
        text = text.replace("\r\n", "\n")
        if echo is not None:
            first, _, rest = text.partition("\n")
            if first.strip() == echo.strip():
                text = rest
        return Reply(
            text=text, size=self.size, cut_lines=self.cut_lines, cut=self.cut, replaced=replaced
        )


def decode(raw: bytes) -> tuple[str, int]:
    """UTF-8 with replacement: the text and how many byte runs were replaced."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, text.count(_REPLACEMENT) - raw.count(_REPLACEMENT_UTF8)


# ------------------------------------------------------------------ client

if sys.version_info >= (3, 11):

    async def _read(reader: asyncio.StreamReader, n: int, wait: float) -> bytes:
        async with asyncio.timeout(wait):
            return await reader.read(n)

else:  # pragma: no cover - Python 3.10

    async def _read(reader: asyncio.StreamReader, n: int, wait: float) -> bytes:
        return await asyncio.wait_for(reader.read(n), wait)


class LineClient:
    """One connection to a prompt-framed line server. Use :func:`connect` to make one.

    One request at a time (a second one meanwhile is a RuntimeError). After a time-out or a cut the
    connection's framing can no longer be trusted: :attr:`broken` turns true
    and the caller should reconnect.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: str,
        limits: NetLimits,
        counters: NetCounters,
        prompt: bytes,
        telnet: bool,
        strip_echo: bool,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.peer = peer
        self.limits = limits
        self.counters = counters
        self.prompt = prompt
        self.strip_echo = strip_echo
        self._telnet = TelnetFilter() if telnet else None
        self._busy = False
        self.broken = False
        self.closed = False

    # --------------------------------------------------------------- reading

    async def _pump(self, asm: _Assembler, deadline: float, idle: float | None) -> bool:
        """Feed ``asm`` until its terminator (True) or the peer's EOF (False).

        With ``idle`` each read has its own time-out (bounded by ``deadline``);
        without, the caller times the whole loop.
        """
        reader, chunk = self._reader, self.limits.read_chunk
        counters, telnet = self.counters, self._telnet
        loop = asyncio.get_running_loop()
        while True:
            if idle is None:
                data = await reader.read(chunk)
            else:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                data = await _read(reader, chunk, min(remaining, idle))
            if not data:
                return False
            counters.bytes_in += len(data)
            if telnet is not None:
                before = telnet.commands
                data = telnet.feed(data)
                counters.telnet_commands += telnet.commands - before
            asm.feed(data)
            if asm.complete():
                return True

    async def read_until(
        self, terminator: bytes, *, timeout: float | None = None, echo: str | None = None
    ) -> Reply:
        """Read until the received bytes end with ``terminator`` (bounded, timed)."""
        limits = self.limits
        total = limits.read_timeout if timeout is None else timeout
        idle = limits.idle_timeout
        asm = _Assembler(terminator, limits.max_line_bytes, limits.max_message_bytes)
        counters = self.counters
        try:
            per_read = min(idle, total) if idle is not None and idle < total else None
            if sys.version_info >= (3, 11) and per_read is None:
                async with asyncio.timeout(total):  # one timer for the whole reply
                    complete = await self._pump(asm, 0.0, None)
            else:
                deadline = asyncio.get_running_loop().time() + total
                complete = await self._pump(asm, deadline, per_read or total)
            if not complete:
                counters.closed_mid_reply += 1
                counters.errors += 1
                self.broken = True
                raise PeerClosedError(
                    f"{self.peer}: connection closed before the reply was complete "
                    f"({asm.size} bytes received)",
                    asm.reply(None).text,
                )
        except (TimeoutError, asyncio.TimeoutError):
            counters.timeouts += 1
            counters.errors += 1
            self.broken = True
            what = f"to {echo!r}" if echo is not None else "(greeting)"
            raise NetTimeoutError(
                f"{self.peer}: no complete reply {what} within {total:g} s "
                f"({asm.size} bytes received)"
            ) from None
        except (ConnectionError, OSError) as exc:
            if isinstance(exc, NetError):
                raise
            counters.closed_mid_reply += 1
            counters.errors += 1
            self.broken = True
            raise PeerClosedError(f"{self.peer}: {exc}", asm.reply(None).text) from exc
        finally:
            counters.cut_lines += asm.cut_lines
            counters.cut_messages += int(asm.cut)
        reply = asm.reply(echo if self.strip_echo else None)
        counters.replaced_bytes += reply.replaced
        if reply.cut:
            self.broken = True  # later bytes of this reply may still be on the wire
        return reply

    # --------------------------------------------------------------- writing

    async def send(self, data: bytes) -> None:
        """Write raw bytes (flow-controlled, timed by ``read_timeout``)."""
        if self.closed:
            raise PeerClosedError(f"{self.peer}: the connection is closed")
        try:
            writer = self._writer
            writer.write(data)
            if writer.transport.get_write_buffer_size():  # only a peer not reading costs a wait
                await asyncio.wait_for(writer.drain(), self.limits.read_timeout)
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            self.counters.errors += 1
            self.broken = True
            raise PeerClosedError(f"{self.peer}: cannot send: {exc or type(exc).__name__}") from exc
        self.counters.bytes_out += len(data)

    async def request(self, command: str, *, timeout: float | None = None) -> Reply:
        """Send one command line (ending in ``\\n``) and read its reply up to the prompt."""
        if "\n" in command or "\r" in command:
            raise ValueError(f"a command is one line, got {command!r}")
        if self._busy:
            raise RuntimeError(f"{self.peer}: one request at a time on a LineClient")
        self._busy = True
        try:
            self.counters.requests += 1
            await self.send(command.encode() + b"\n")
            reply = await self.read_until(self.prompt, timeout=timeout, echo=command)
            self.counters.replies += 1
            return reply
        finally:
            self._busy = False

    # --------------------------------------------------------------- closing

    async def close(self, goodbye: str | None = None) -> None:
        """Close cleanly (optionally sending ``goodbye`` first); never raises."""
        if self.closed:
            return
        self.closed = True
        writer = self._writer
        try:
            if goodbye is not None and not self.broken:
                writer.write(goodbye.encode() + b"\n")
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), self.limits.connect_timeout)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass

    async def __aenter__(self) -> LineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect(
    host: str,
    port: int,
    *,
    limits: NetLimits | None = None,
    counters: NetCounters | None = None,
    prompt: bytes = b"\n> ",
    greeting: bytes | None = None,
    telnet: bool = True,
    strip_echo: bool = True,
) -> LineClient:
    """Open one connection and read its greeting, all within ``connect_timeout``.

    With ``telnet``, a lone ``IAC NOP`` is sent first: servers that wait for the
    client's first bytes (and discard them) answer it at once. ``greeting`` is
    the byte string the server's banner ends with; None reads no banner.
    """
    limits = limits or NetLimits()
    counters = counters if counters is not None else NetCounters()
    peer = f"{host}:{port}"
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=max(limits.read_chunk, 1 << 16)),
            limits.connect_timeout,
        )
    except (OSError, asyncio.TimeoutError) as exc:
        counters.connect_failures += 1
        counters.errors += 1
        reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc)
        raise ConnectError(f"{peer}: cannot connect: {reason}") from exc
    client = LineClient(
        reader,
        writer,
        peer=peer,
        limits=limits,
        counters=counters,
        prompt=prompt,
        telnet=telnet,
        strip_echo=strip_echo,
    )
    try:
        if telnet:
            await client.send(bytes([IAC, NOP]))
        if greeting:
            remaining = limits.connect_timeout - (time.perf_counter() - started)
            await client.read_until(greeting, timeout=max(remaining, 1e-3))
    except NetError as exc:
        counters.connect_failures += 1
        await client.close()
        raise ConnectError(f"{peer}: no greeting: {exc}") from exc
    counters.connects += 1
    counters.handshake_s = time.perf_counter() - started
    return client


def backoff_delays(limits: NetLimits) -> Iterator[float]:
    """The waits before each retry: ``backoff_initial * 2**k``, capped at ``backoff_max``."""
    for attempt in range(limits.retries):
        yield min(limits.backoff_max, limits.backoff_initial * (2.0**attempt))


async def connect_with_retry(
    host: str,
    port: int,
    *,
    limits: NetLimits | None = None,
    counters: NetCounters | None = None,
    reconnect: bool = False,
    **options: Any,
) -> LineClient:
    """:func:`connect`, retried ``limits.retries`` times with exponential backoff.

    ``reconnect`` marks the connection as replacing a lost one (counted).
    Raises the last :class:`ConnectError` when every attempt failed.
    """
    limits = limits or NetLimits()
    counters = counters if counters is not None else NetCounters()
    delays = backoff_delays(limits)
    while True:
        try:
            client = await connect(host, port, limits=limits, counters=counters, **options)
        except ConnectError as exc:
            delay = next(delays, None)
            if delay is None:
                raise ConnectError(f"{exc} (after {limits.retries + 1} attempts)") from exc
            await asyncio.sleep(delay)
            continue
        if reconnect:
            counters.reconnects += 1
        return client


# ---------------------------------------------------------- sync iteration

T = TypeVar("T")


def iterate_sync(stream: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """Drive an async iterator from synchronous code on a private event loop.

    The loop lives as long as the iteration; closing the generator early (a
    ``break``) closes the async iterator (and so its connections) cleanly.
    Raises RuntimeError when called from inside a running event loop: use the
    async iterator there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("iterate with 'async for' inside a running event loop")
    loop = asyncio.new_event_loop()
    iterator = stream()
    try:
        while True:
            try:
                item = loop.run_until_complete(iterator.__anext__())
            except StopAsyncIteration:
                return
            yield item
    finally:
        try:
            # An interrupt (Ctrl-C) leaves the pending ``__anext__`` task running: cancel
            # it and let it unwind (closing its connections) before closing the iterator,
            # so nothing here replaces the KeyboardInterrupt with a RuntimeError.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(RuntimeError, StopAsyncIteration):
                    loop.run_until_complete(aclose())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
