"""Stateful, check_state, check_stateful, and the one ordered prefetch loop."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import laden
from laden.files.write import write_batches
from laden.lengths import build_lengths
from laden.plan import BatchPlan
from laden.prefetch import ordered_prefetch
from laden.stateful import Stateful
from laden.testing import check_stateful

# ------------------------------------------------------------- prefetch loop


def test_prefetch_keeps_input_order_whatever_finishes_first() -> None:
    rng = np.random.default_rng(0)
    delays = rng.uniform(0, 0.004, 60)

    def work(i: int) -> int:
        time.sleep(delays[i])
        return i * i

    with ThreadPoolExecutor(8) as pool:
        out = list(ordered_prefetch(lambda i: pool.submit(work, i), range(60), ahead=8))
    assert out == [(i, i * i) for i in range(60)]


def test_prefetch_is_bounded_and_lazy() -> None:
    pulled, in_flight, most = [], 0, 0
    lock = threading.Lock()

    def items() -> Iterator[int]:
        for i in range(10_000):
            pulled.append(i)
            yield i

    def submit(i: int) -> Future[int]:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        future: Future[int] = Future()
        future.set_result(i)
        return future

    results = ordered_prefetch(submit, items(), ahead=3)
    for consumed, (item, _) in enumerate(results, 1):
        with lock:
            in_flight -= 1
        assert item == consumed - 1
        assert len(pulled) <= consumed + 3  # never far ahead of the consumer
        if consumed == 20:
            break
    results.close()
    assert most <= 3
    assert len(pulled) <= 23


def test_prefetch_budget_bounds_the_weight_in_flight_but_one_always_fits() -> None:
    weights = [5, 5, 5, 50, 5, 5]
    seen: list[int] = []

    def submit(i: int) -> Future[int]:
        seen.append(i)
        future: Future[int] = Future()
        future.set_result(i)
        return future

    results = ordered_prefetch(submit, range(6), ahead=10, weigh=lambda i: weights[i], budget=12)
    got = []
    for item, _ in results:
        # Submitted but not yet consumed: within the budget, or a single (heavy) item.
        ahead = [i for i in seen if i > item]
        assert sum(weights[i] for i in ahead) <= 12 or len(ahead) <= 1
        got.append(item)
    assert got == list(range(6))  # the heavy item went through alone


def slow(i: int) -> int:
    if i == 2:
        raise RuntimeError("task 2 failed")
    time.sleep(0.05 if i > 2 else 0)
    return i


def test_prefetch_raises_a_failure_in_turn_and_cancels_the_rest() -> None:
    with ThreadPoolExecutor(1) as pool:
        futures: list[Future[int]] = []

        def submit(i: int) -> Future[int]:
            futures.append(pool.submit(slow, i))
            return futures[-1]

        results = ordered_prefetch(submit, range(10), ahead=5)
        assert next(results) == (0, 0)
        assert next(results) == (1, 1)
        with pytest.raises(RuntimeError, match="task 2 failed"):
            next(results)
    # What had not started when the failure surfaced was cancelled, not run.
    assert len(futures) == 7
    assert all(f.cancelled() for f in futures[4:])


def test_prefetch_closed_early_cancels_what_has_not_started() -> None:
    with ThreadPoolExecutor(1) as pool:
        futures: list[Future[int]] = []

        def submit(i: int) -> Future[int]:
            futures.append(pool.submit(slow, i + 3))
            return futures[-1]

        results = ordered_prefetch(submit, range(100), ahead=4)
        next(results)
        results.close()
    assert len(futures) == 4  # refilled only when the consumer comes back
    assert sum(f.cancelled() for f in futures) >= 2
    with pytest.raises(ValueError, match="ahead"):
        next(ordered_prefetch(lambda i: Future(), [1], ahead=0))


# ---------------------------------------------------------- check_stateful


class Counter:
    """A resumable count to 10, with a fault to switch on."""

    def __init__(self, fault: str = "") -> None:
        self.at, self.fault = 0, fault

    def __iter__(self) -> Iterator[int]:
        while self.at < 10:
            self.at += 1
            yield self.at - 1

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "test.counter", "fingerprint": "f" * 32, "at": self.at}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        state = laden.stateful.check_state(
            state,
            kind="test.counter",
            fingerprint=None if self.fault == "foreign" else "f" * 32,
            within={"at": (0, 10)},
        )
        self.at = int(state["at"]) + (1 if self.fault == "skip" else 0)


def test_check_stateful_passes_a_resumable_object_and_fails_broken_ones() -> None:
    assert isinstance(Counter(), Stateful)
    assert not isinstance(object(), Stateful)
    check_stateful(Counter, cuts=(0, 4, 10))
    with pytest.raises(AssertionError, match="after 0 items"):
        check_stateful(lambda: Counter("skip"))
    with pytest.raises(AssertionError, match="loaded another plan's state"):
        check_stateful(lambda: Counter("foreign"))
    with pytest.raises(AssertionError, match="cannot stop after 11"):
        check_stateful(Counter, cuts=(11,))


# ------------------------------------------------------------------ reader


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-epoch plan of 300 texts written as npz batch files."""
    root = tmp_path_factory.mktemp("written")
    rng = np.random.default_rng(3)
    data = root / "data.jsonl"
    with data.open("w") as f:
        for i, n in enumerate(rng.integers(1, 200, 300)):
            f.write(json.dumps({"id": i, "text": "y" * int(n)}) + "\n")
    kernel = laden.Kernel(autoload=False)
    source = kernel.create("source", {"name": "jsonl", "path": str(data)})
    tokenizer = kernel.create("tokenizer", "bytes")
    table = build_lengths(
        source,
        tokenizer,
        output=root / "lengths",
        executor=kernel.create("executor", {"name": "local", "workers": 0}),
    )
    sampler = kernel.create("sampler", {"name": "token_budget", "token_budget": 1024})
    plan = BatchPlan.build(table, sampler, epochs=2, seed=1)
    out = root / "out"
    write_batches(plan, table, source, tokenizer, kernel.create("writer", "npz"), out)
    return {"out": out, "plan": plan, "kernel": kernel}


def reader_key(batch: Mapping[str, Any]) -> tuple[int, int, list[int]]:
    return batch["epoch"], batch["step"], batch["sample_ids"].tolist()


@pytest.mark.parametrize("prefetch", [0, 3])
def test_the_batch_reader_is_stateful(written: dict[str, Any], prefetch: int) -> None:
    out, kernel = written["out"], written["kernel"]
    first_epoch = len(written["plan"].epochs[0])
    check_stateful(
        lambda: laden.BatchReader(out, prefetch=prefetch, kernel=kernel),
        cuts=(0, 2, first_epoch, first_epoch + 1),
        key=reader_key,
    )
    check_stateful(
        lambda: laden.BatchReader(out, epoch=1, prefetch=prefetch, kernel=kernel),
        cuts=(0, 3),
        key=reader_key,
        foreign=lambda state: {**state, "epoch": 0},
    )


def test_a_reader_state_is_checked_by_the_one_check(written: dict[str, Any]) -> None:
    out, kernel = written["out"], written["kernel"]
    reader = laden.BatchReader(out, kernel=kernel)
    state = reader.state_dict()
    cursor_state = written["plan"].cursor().state_dict()
    with pytest.raises(laden.DataError, match=r"not a laden\.batch_reader state"):
        reader.load_state_dict(cursor_state)
    with pytest.raises(laden.DataError, match=r"\(position -1\) does not fit: this reader holds"):
        reader.load_state_dict({**state, "position": -1})
    with pytest.raises(laden.DataError, match=rf"{Path(out).name}: .*must be a mapping"):
        reader.load_state_dict(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- streams


class Online:
    """An OnlineLoader whose pass runs its rolling windows (started and closed with it)."""

    def __init__(self) -> None:
        from laden.plugins.backends.numpy import NumpyBackend
        from laden.plugins.samplers.token_budget import TokenBudgetSampler
        from laden.plugins.sources.mock import MockSource
        from laden.stream import OnlineLoader, RollingPlanWindow

        self.windows = RollingPlanWindow(
            MockSource(seed=5, num_samples=500, max_length=256),
            window_size=200,
            overlap=50,
            sampler=TokenBudgetSampler(token_budget=2048, overflow="truncate"),
            epochs=2,
            seed=3,
        )
        self.loader = OnlineLoader(self.windows, NumpyBackend(), timeout=60)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self.windows:
            yield from self.loader

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loader.load_state_dict(state)


def test_the_online_loader_is_stateful() -> None:
    def key(batch: Mapping[str, Any]) -> tuple[int, int, int, list[int]]:
        return batch["window"], batch["epoch"], batch["step"], batch["sample_ids"].tolist()

    check_stateful(Online, cuts=(0, 5), key=key)


class Draws:
    """A replay buffer seen as its endless draws (prioritized, and passes without replacement)."""

    def __init__(self) -> None:
        from tests.test_stream_buffer import filled

        self.buffer = filled()

    def __iter__(self) -> Iterator[tuple[list[int], list[int]]]:
        while True:
            prioritized = self.buffer.sample(4, prioritized=True).sample_id.tolist()
            yield prioritized, self.buffer.sample(3, replace=False).sample_id.tolist()

    def state_dict(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffer.load_state_dict(state)


def test_the_replay_buffer_is_stateful() -> None:
    check_stateful(Draws, cuts=(0, 3), tail=8, json_state=False)
