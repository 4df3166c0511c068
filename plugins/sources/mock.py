"""``mock``: a deterministic synthetic stream for tests, demos and benchmarks.

Samples are generated in blocks of whole episodes, each block from its own
generator derived from ``(seed, block)``, so the same seed gives a
byte-identical stream, and the stream can start at any position (``start``)
without generating what comes before it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.errors import ConfigError, DataError
from laden.hookspecs import hookimpl
from laden.registry import Registry
from laden.seeding import rng_for
from laden.validators import at_least, one_of, optional, positive

__all__ = ["MockConnectionError", "MockDataError", "MockFault", "MockSource", "MockTimeoutError"]


class MockFault(Exception):
    """Marks an injected fault (the raised error is also a ConnectionError,
    TimeoutError or DataError, per ``fault``)."""


class MockConnectionError(ConnectionError, MockFault):
    """An injected ``connection`` fault."""


class MockTimeoutError(TimeoutError, MockFault):
    """An injected ``timeout`` fault."""


class MockDataError(DataError, MockFault):
    """An injected ``data`` fault."""


_FAULTS: dict[str, type[Exception]] = {
    "connection": MockConnectionError,
    "timeout": MockTimeoutError,
    "data": MockDataError,
}


def _fraction(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"must be in 0..1, got {value}", path=(attribute.name,))


@attrs.frozen(kw_only=True)
class MockSource:
    """Synthetic samples: lognormal lengths, episodes, difficulties, outcomes, rewards.

    Every sample carries ``input_ids`` (int32, uniform below ``vocab_size``),
    ``sample_id`` (its position in the stream), ``episode_id`` and
    ``step_index`` (episodes of ``episode_length`` steps), ``difficulty``
    (per episode, Beta(``difficulty_a``, ``difficulty_b``)), ``success``
    (known on an episode's last step: True with probability
    ``success_rate * (1 - difficulty / 2)``, else None), ``reward`` (1.0 on a
    success, else 0.0, plus ``reward_noise`` Gaussian noise), ``source``
    (``"mock"``) and ``meta`` (``{}``). With ``prompt_tokens``, the first
    that many tokens of each sample are a prompt: ``loss_mask`` is 0 there.

    :param seed: the stream's seed.
    :param num_samples: samples in the stream (None: endless).
    :param start: the position to start at (resuming a stream).
    :param rate: at most this many samples per second (sleeps, never spins).
    :param fault_every: raise an error after every this many samples an
        iteration yields (the iterator is then finished; resume with ``start``).
    :param fault: the error raised: ``connection`` (ConnectionError),
        ``timeout`` (TimeoutError) or ``data`` (DataError).
    :param stall_after: after this many samples an iteration stalls for
        ``stall_seconds`` (a silent peer), then goes on.
    """

    name: ClassVar[str] = "mock"

    seed: int = attrs.field(default=0, validator=at_least(0))
    num_samples: int | None = attrs.field(default=1000, validator=optional(at_least(0)))
    start: int = attrs.field(default=0, validator=at_least(0))
    vocab_size: int = attrs.field(default=32000, validator=positive)
    length_mean_log: float = 5.5
    length_sigma: float = attrs.field(default=0.9, validator=at_least(0))
    min_length: int = attrs.field(default=8, validator=positive)
    max_length: int = attrs.field(default=4096, validator=positive)
    episode_length: int = attrs.field(default=8, validator=positive)
    difficulty_a: float = attrs.field(default=2.0, validator=positive)
    difficulty_b: float = attrs.field(default=2.0, validator=positive)
    success_rate: float = attrs.field(default=0.5, validator=_fraction)
    reward_noise: float = attrs.field(default=0.0, validator=at_least(0))
    prompt_tokens: int | None = attrs.field(default=None, validator=optional(at_least(0)))
    rate: float | None = attrs.field(default=None, validator=optional(positive))
    fault_every: int | None = attrs.field(default=None, validator=optional(positive))
    fault: str = attrs.field(default="connection", validator=one_of(*_FAULTS))
    stall_after: int | None = attrs.field(default=None, validator=optional(at_least(0)))
    stall_seconds: float = attrs.field(default=3600.0, validator=at_least(0))
    block_size: int = attrs.field(default=1024, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.min_length > self.max_length:
            raise ConfigError(
                f"must be <= max_length ({self.max_length}), got {self.min_length}",
                path=("min_length",),
            )

    # ------------------------------------------------------------ generation

    @property
    def _block(self) -> int:
        """Samples per generated block: whole episodes."""
        e = self.episode_length
        return max(-(-self.block_size // e), 1) * e

    def block(self, b: int) -> dict[str, np.ndarray]:
        """Block ``b``'s columns (samples ``b * size ...``), from ``(seed, b)`` alone."""
        size = self._block
        rng = rng_for(self.seed, b, "mock.block")
        lengths = np.clip(
            rng.lognormal(self.length_mean_log, self.length_sigma, size),
            self.min_length,
            self.max_length,
        ).astype(np.int64)
        episodes = size // self.episode_length
        difficulty = rng.beta(self.difficulty_a, self.difficulty_b, episodes).astype(np.float32)
        won = rng.random(episodes) < self.success_rate * (1.0 - difficulty / 2.0)
        noise = rng.normal(0.0, self.reward_noise, size) if self.reward_noise else np.zeros(size)
        tokens = rng.integers(0, self.vocab_size, int(lengths.sum()), dtype=np.int32)
        step = np.tile(np.arange(self.episode_length, dtype=np.int64), episodes)
        last = step == self.episode_length - 1
        episode_won = np.repeat(won, self.episode_length)
        return {
            "lengths": lengths,
            "tokens": tokens,
            "difficulty": np.repeat(difficulty, self.episode_length),
            "step": step,
            "success": np.where(last, episode_won.astype(np.int8), -1).astype(np.int8),
            "reward": (np.where(last & episode_won, 1.0, 0.0) + noise).astype(np.float32),
        }

    def _end(self) -> float:
        return float("inf") if self.num_samples is None else float(self.num_samples)

    def _samples(self, start: int) -> Iterator[dict[str, Any]]:
        """Samples from position ``start`` (no pacing, no faults)."""
        size = self._block
        position = start
        end = self._end()
        while position < end:
            b = position // size
            cols = self.block(b)
            offsets = np.zeros(size + 1, dtype=np.int64)
            np.cumsum(cols["lengths"], out=offsets[1:])
            tokens = cols["tokens"]
            difficulty = cols["difficulty"].tolist()
            step = cols["step"].tolist()
            success = cols["success"].tolist()
            reward = cols["reward"].tolist()
            starts = offsets.tolist()
            prompt = self.prompt_tokens
            for i in range(position - b * size, size):
                if position >= end:
                    return
                ids = tokens[starts[i] : starts[i + 1]]
                sample: dict[str, Any] = {
                    "input_ids": ids,
                    "sample_id": position,
                    "episode_id": position // self.episode_length,
                    "step_index": step[i],
                    "difficulty": difficulty[i],
                    "success": None if success[i] < 0 else bool(success[i]),
                    "reward": reward[i],
                    "source": self.name,
                    "meta": {},
                }
                if prompt is not None:
                    mask = np.ones(ids.size, dtype=np.uint8)
                    mask[:prompt] = 0
                    sample["loss_mask"] = mask
                yield sample
                position += 1

    def _fault(self, count: int) -> Exception:
        return _FAULTS[self.fault](f"mock: injected {self.fault} fault after {count} samples")

    # ------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The samples, paced to ``rate`` and with the configured faults."""
        return self.iter_from(self.start)

    def iter_from(self, position: int) -> Iterator[dict[str, Any]]:
        """The stream from ``position`` (what a collector resumes with)."""
        interval = 1.0 / self.rate if self.rate else 0.0
        due = time.monotonic()
        for count, sample in enumerate(self._samples(position)):
            if count and self.fault_every and count % self.fault_every == 0:
                raise self._fault(count)
            if self.stall_after is not None and count == self.stall_after:
                time.sleep(self.stall_seconds)
            if interval:
                due += interval
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            yield sample

    def iter_chunks(self, chunk_size: int = 256) -> Iterator[list[dict[str, Any]]]:
        """The same samples as lists of up to ``chunk_size``."""
        chunk: list[dict[str, Any]] = []
        for sample in self:
            chunk.append(sample)
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._aiter(self.start)

    async def _aiter(self, position: int) -> AsyncIterator[dict[str, Any]]:
        interval = 1.0 / self.rate if self.rate else 0.0
        loop = asyncio.get_running_loop()
        due = loop.time()
        for count, sample in enumerate(self._samples(position)):
            if count and self.fault_every and count % self.fault_every == 0:
                raise self._fault(count)
            if self.stall_after is not None and count == self.stall_after:
                await asyncio.sleep(self.stall_seconds)
            if interval:
                due += interval
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            elif count % 256 == 255:
                await asyncio.sleep(0)  # let other tasks run
            yield sample


@hookimpl
def laden_register_sources(registry: Registry) -> None:
    registry.add(MockSource)
