"""The ``mock`` stream source: deterministic, resumable, paced, faulty on request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import laden
from laden.errors import ConfigError, DataError
from laden.plugins.sources.mock import MockFault, MockSource
from laden.stream import SampleChunk


def as_bytes(samples: list[dict[str, Any]]) -> bytes:
    return SampleChunk.from_samples(samples).digest().encode()


def test_same_seed_gives_a_byte_identical_stream() -> None:
    a = list(MockSource(seed=7, num_samples=600))
    b = list(MockSource(seed=7, num_samples=600))
    c = list(MockSource(seed=8, num_samples=600))
    assert as_bytes(a) == as_bytes(b)
    assert as_bytes(a) != as_bytes(c)
    assert all(x["input_ids"].dtype == np.int32 for x in a)


@settings(max_examples=20, deadline=None)
@given(start=st.integers(0, 3000), seed=st.integers(0, 3))
def test_starting_anywhere_equals_the_tail_of_the_full_stream(start: int, seed: int) -> None:
    full = list(MockSource(seed=seed, num_samples=3100, block_size=256))
    tail = list(MockSource(seed=seed, num_samples=3100, start=start, block_size=256))
    assert as_bytes(tail) == as_bytes(full[start:])
    again = list(MockSource(seed=seed, num_samples=3100, block_size=256).iter_from(start))
    assert as_bytes(again) == as_bytes(tail)


def test_samples_follow_the_stream_contract_and_the_config() -> None:
    source = MockSource(
        seed=1,
        num_samples=400,
        min_length=10,
        max_length=50,
        vocab_size=99,
        episode_length=5,
        prompt_tokens=3,
    )
    samples = list(source)
    assert [s["sample_id"] for s in samples] == list(range(400))
    lengths = np.array([s["input_ids"].size for s in samples])
    assert lengths.min() >= 10
    assert lengths.max() <= 50
    assert max(int(s["input_ids"].max()) for s in samples) < 99
    for s in samples:
        assert s["episode_id"] == s["sample_id"] // 5
        assert s["step_index"] == s["sample_id"] % 5
        assert 0.0 <= s["difficulty"] <= 1.0
        assert s["source"] == "mock"
        assert s["meta"] == {}
        last = s["step_index"] == 4
        assert (s["success"] is None) != last
        assert s["reward"] == (1.0 if s["success"] else 0.0)
        assert s["loss_mask"][:3].tolist() == [0, 0, 0]
        assert s["loss_mask"][3:].all()
    episodes = {}
    for s in samples:  # one difficulty per episode
        episodes.setdefault(s["episode_id"], set()).add(s["difficulty"])
    assert all(len(v) == 1 for v in episodes.values())
    wins = [s["success"] for s in samples if s["success"] is not None]
    assert 0 < sum(wins) < len(wins)


def test_chunks_and_async_iteration_give_the_same_samples() -> None:
    source = MockSource(seed=2, num_samples=700)
    chunks = list(source.iter_chunks(128))
    assert [len(c) for c in chunks] == [128] * 5 + [60]
    flat = [s for c in chunks for s in c]

    async def collect() -> list[dict[str, Any]]:
        return [s async for s in source]

    assert as_bytes(asyncio.run(collect())) == as_bytes(flat) == as_bytes(list(source))


def test_an_endless_stream_keeps_going() -> None:
    it = iter(MockSource(seed=0, num_samples=None))
    ids = [next(it)["sample_id"] for _ in range(3000)]
    assert ids == list(range(3000))


@pytest.mark.parametrize(
    ("fault", "error"),
    [("connection", ConnectionError), ("timeout", TimeoutError), ("data", DataError)],
)
def test_faults_are_injected_every_n_samples(fault: str, error: type[Exception]) -> None:
    source = MockSource(seed=0, num_samples=100, fault_every=30, fault=fault)
    got: list[int] = []

    def drain(it: Iterator[dict[str, Any]], into: list[int]) -> None:
        for sample in it:
            into.append(sample["sample_id"])

    with pytest.raises(error, match="injected") as info:
        drain(iter(source), got)
    assert isinstance(info.value, MockFault)
    assert got == list(range(30))
    # Resuming where it stopped yields the next 30, then faults again.
    resumed: list[int] = []
    with pytest.raises(error):
        drain(source.iter_from(30), resumed)
    assert resumed == list(range(30, 60))


def test_rate_is_kept_without_spinning() -> None:
    source = MockSource(seed=0, num_samples=21, rate=200.0)
    wall, cpu = time.perf_counter(), time.process_time()
    assert len(list(source)) == 21
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall >= 0.095  # 20 intervals of 5 ms
    assert cpu < wall  # it slept, it did not busy-wait

    async def paced() -> float:
        start = time.perf_counter()
        assert len([s async for s in source]) == 21
        return time.perf_counter() - start

    assert asyncio.run(paced()) >= 0.095


def test_a_stall_is_silent_and_cancellable() -> None:
    source = MockSource(seed=0, num_samples=10, stall_after=3, stall_seconds=60.0)

    async def first_five() -> list[int]:
        return [s["sample_id"] async for s in source]

    start = time.perf_counter()
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(asyncio.wait_for(first_five(), timeout=0.2))
    assert time.perf_counter() - start < 5
    short = MockSource(seed=0, num_samples=5, stall_after=2, stall_seconds=0.05)
    assert [s["sample_id"] for s in short] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"success_rate": 1.5}, "success_rate"),
        ({"rate": 0}, "rate"),
        ({"min_length": 10, "max_length": 5}, "min_length"),
        ({"fault": "explode"}, "fault"),
        ({"episode_length": 0}, "episode_length"),
    ],
)
def test_bad_settings_are_config_errors(settings: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match=path):
        MockSource(**settings)


def test_mock_is_a_registered_source_plugin(kernel: laden.Kernel) -> None:
    source = kernel.create("source", {"name": "mock", "seed": 3, "num_samples": 5})
    assert isinstance(source, MockSource)
    assert [s["sample_id"] for s in source] == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="success_rate"):
        kernel.create("source", {"name": "mock", "success_rate": 2.0})
