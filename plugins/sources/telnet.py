"""``telnet``: samples from the replies of a prompt-framed line server (telnet or raw TCP).

Generic: it sends configured request lines and turns each reply into a sample.
All network I/O goes through :mod:`laden.stream.net` (time-outs, bounded
lines and replies, IAC stripping, reconnect with backoff).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
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
from laden.validators import at_least, greater_than, one_of, optional, positive

__all__ = ["TelnetSource"]


def _lines(_instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for i, line in enumerate(value):
        if not isinstance(line, str) or "\n" in line or "\r" in line:
            raise ConfigError(f"must be one line of text, got {line!r}", path=(attribute.name, i))


def _port(_instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 < value < 65536:
        raise ConfigError(f"must be a TCP port (1-65535), got {value!r}", path=(attribute.name,))


def _nonempty(_instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ConfigError("must not be empty", path=(attribute.name,))


@attrs.frozen(kw_only=True)
class TelnetSource:
    """Each reply of a line server to ``requests`` becomes one sample.

    After each (re)connection the ``setup`` lines are sent (replies dropped),
    then ``requests`` run in order, ``repeat`` times. A sample is
    ``{"text": reply}``, or with ``pairs`` ``{"prompt": request + "\\n",
    "completion": reply}``; ``episode_id`` is the pass, ``step_index`` the
    request's place in it, ``meta`` says the request and any cuts.

    A request that times out or whose connection drops is counted; the client
    reconnects (backoff, bounded retries), replays ``setup`` and, with
    ``on_error="skip"``, moves on to the next request (``"error"`` raises).

    :param host: the server (keep it on loopback in tests).
    :param port: its TCP port.
    :param requests: the request lines, one sample each.
    :param setup: lines sent after every (re)connection; their replies are dropped.
    :param repeat: passes over ``requests``.
    :param prompt: what every reply ends with (``"\\n> "``).
    :param greeting: what the server's banner ends with; empty: read no banner.
    :param telnet: strip telnet commands and open with a lone ``IAC NOP``.
    :param strip_echo: drop the first reply line when it echoes the request.
    :param pairs: yield ``prompt``/``completion`` instead of ``text``.
    :param on_error: ``skip`` a failed request (counted) or raise on it (``error``).
    """

    name: ClassVar[str] = "telnet"

    port: int = attrs.field(validator=_port)
    host: str = attrs.field(default="127.0.0.1", validator=_nonempty)
    requests: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_lines)
    setup: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_lines)
    repeat: int = attrs.field(default=1, validator=at_least(1))
    prompt: str = attrs.field(default="\n> ", validator=_nonempty)
    greeting: str = ""
    telnet: bool = True
    strip_echo: bool = True
    pairs: bool = False
    on_error: str = attrs.field(default="skip", validator=one_of("skip", "error"))
    connect_timeout: float = attrs.field(default=5.0, validator=positive)
    read_timeout: float = attrs.field(default=30.0, validator=positive)
    idle_timeout: float | None = attrs.field(default=None, validator=optional(positive))
    max_line_bytes: int = attrs.field(default=1 << 18, validator=at_least(1))
    max_message_bytes: int = attrs.field(default=1 << 20, validator=at_least(1))
    retries: int = attrs.field(default=5, validator=at_least(0))
    backoff_initial: float = attrs.field(default=0.05, validator=at_least(0))
    backoff_max: float = attrs.field(default=2.0, validator=greater_than(0))

    @property
    def limits(self) -> NetLimits:
        return NetLimits.of(self)

    async def _open(self, counters: NetCounters, *, reconnect: bool) -> LineClient:
        client = await connect_with_retry(
            self.host,
            self.port,
            limits=self.limits,
            counters=counters,
            reconnect=reconnect,
            prompt=self.prompt.encode(),
            greeting=self.greeting.encode() or None,
            telnet=self.telnet,
            strip_echo=self.strip_echo,
        )
        try:
            for line in self.setup:
                await client.request(line)
        except NetError:
            await client.close()
            raise
        return client

    async def stream(self, counters: NetCounters | None = None) -> AsyncIterator[dict[str, Any]]:
        """The samples, asynchronously; ``counters`` (if given) collects the wire events."""
        counters = counters if counters is not None else NetCounters()
        client: LineClient | None = None
        sample_id = 0
        try:
            for episode in range(self.repeat):
                for step, request in enumerate(self.requests):
                    if client is None or client.broken:
                        if client is not None:
                            await client.close()
                        client = await self._open(counters, reconnect=client is not None)
                    try:
                        reply = await client.request(request)
                    except NetError:
                        if self.on_error == "error":
                            raise
                        continue
                    sample: dict[str, Any] = {
                        "sample_id": sample_id,
                        "episode_id": episode,
                        "step_index": step,
                        "source": self.name,
                        "meta": {
                            "request": request,
                            "cut_lines": reply.cut_lines,
                            "cut": reply.cut,
                            "replaced": reply.replaced,
                        },
                    }
                    if self.pairs:
                        sample["prompt"] = request + "\n"
                        sample["completion"] = reply.text
                    else:
                        sample["text"] = reply.text
                    sample_id += 1
                    yield sample
        finally:
            if client is not None:
                await client.close()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self.stream()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iterate_sync(self.stream)


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(TelnetSource)
