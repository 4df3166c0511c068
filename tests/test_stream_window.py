"""Rolling plan windows and online loading over the mock stream."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest

from laden.collate import IGNORE_INDEX
from laden.errors import ConfigError, DataError
from laden.plugins.backends.numpy import NumpyBackend
from laden.plugins.packers.best_fit import BestFitPacker
from laden.plugins.samplers.fixed import FixedSampler
from laden.plugins.samplers.token_budget import TokenBudgetSampler
from laden.plugins.sources.mock import MockSource
from laden.stream import OnlineLoader, ReplayBuffer, RollingPlanWindow, Window

SAMPLER = TokenBudgetSampler(token_budget=4096, overflow="truncate")


def mock(n: int = 1000, **kw: Any) -> MockSource:
    return MockSource(seed=5, num_samples=n, max_length=512, **kw)


def windows(source: Any, **kw: Any) -> list[Window]:
    settings = {"window_size": 300, "overlap": 100, "sampler": SAMPLER, "seed": 1, **kw}
    with RollingPlanWindow(source, **settings) as rolling:
        out = list(rolling)
    return out


def test_windows_cover_the_stream_with_overlap_and_record_positions() -> None:
    got = windows(mock(1000))
    assert [(w.start, w.stop, w.count) for w in got] == [
        (0, 300, 300),
        (200, 500, 300),
        (400, 700, 300),
        (600, 900, 300),
        (700, 1000, 300),
    ]
    for w in got:
        assert w.table.ids.tolist() == list(range(w.start, w.stop))
        record = w.record()
        assert record["first_sample_id"] == w.start
        assert record["last_sample_id"] == w.stop - 1
        assert record["fingerprint"] == w.fingerprint
        assert record["steps"] == w.plan.total_steps
        # Every sample of the window in exactly one batch of its one epoch.
        assert sorted(w.plan.epochs[0].order.tolist()) == list(range(w.count))
    assert got[1].tokens[0].tolist() == got[0].tokens[200].tolist()  # the overlap


def test_fingerprints_are_stable_timestamp_free_and_seed_sensitive() -> None:
    a = [w.fingerprint for w in windows(mock(700))]
    time.sleep(0.01)
    b = [w.fingerprint for w in windows(mock(700))]
    assert a == b
    assert len(set(a)) == len(a)
    assert a != [w.fingerprint for w in windows(mock(700), seed=2)]
    other_data = [
        w.fingerprint for w in windows(MockSource(seed=6, num_samples=700, max_length=512))
    ]
    assert not set(a) & set(other_data)


def test_drop_last_leaves_out_the_partial_window() -> None:
    assert [w.stop for w in windows(mock(1000), drop_last=True)] == [300, 500, 700, 900]
    assert windows(mock(0)) == []


def test_resume_from_a_state_gives_the_same_windows() -> None:
    full = windows(mock(1200))
    with RollingPlanWindow(mock(1200), window_size=300, overlap=100, sampler=SAMPLER, seed=1) as rw:
        first = [rw.next_window(timeout=30) for _ in range(2)]
        state = rw.state_dict()
    assert [w.fingerprint for w in first] == [w.fingerprint for w in full[:2]]
    assert [r["index"] for r in state["log"]] == [0, 1]
    assert state["next_index"] == 2
    resumed = RollingPlanWindow(mock(1200), window_size=300, overlap=100, sampler=SAMPLER, seed=1)
    resumed.load_state_dict(state)
    with resumed:
        rest = list(resumed)
    assert [w.fingerprint for w in rest] == [w.fingerprint for w in full[2:]]
    assert [r["fingerprint"] for r in resumed.state_dict()["log"]] == [w.fingerprint for w in full]
    wrong = RollingPlanWindow(mock(1200), window_size=300, overlap=50, sampler=SAMPLER, seed=1)
    with pytest.raises(DataError, match="overlap"):
        wrong.load_state_dict(state)


def test_a_stream_that_fails_is_resumed_without_loss_or_duplicates() -> None:
    clean = windows(mock(1000))
    faulty = windows(mock(1000, fault_every=170), max_restarts=10)
    assert [w.fingerprint for w in faulty] == [w.fingerprint for w in clean]
    with RollingPlanWindow(
        mock(1000, fault_every=170),
        window_size=300,
        overlap=100,
        sampler=SAMPLER,
        seed=1,
        max_restarts=10,
    ) as rw:
        list(rw)
        assert rw.restarts == 5
        assert len(rw.errors) == 5
        assert rw.state_dict()["errors"] == 5


def test_a_failure_without_restarts_reaches_the_consumer() -> None:
    with RollingPlanWindow(mock(1000, fault_every=350), window_size=300, sampler=SAMPLER) as rw:
        assert rw.next_window(timeout=30) is not None
        with pytest.raises(ConnectionError, match="injected"):
            rw.next_window(timeout=30)


class AsyncOnly:
    """A source with only an async iterator."""

    def __init__(self, source: MockSource) -> None:
        self.source = source

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self.source.__aiter__()


def test_an_async_only_source_is_collected() -> None:
    assert [w.fingerprint for w in windows(AsyncOnly(mock(700)))] == [
        w.fingerprint for w in windows(mock(700))
    ]


def test_a_stalled_stream_times_out_and_closes_promptly() -> None:
    rw = RollingPlanWindow(
        mock(1000, stall_after=50, stall_seconds=30), window_size=100, sampler=SAMPLER
    )
    with pytest.raises(TimeoutError, match="no window within"):
        rw.next_window(timeout=0.3)
    start = time.perf_counter()
    rw.close()
    assert time.perf_counter() - start < 5


def test_windows_over_a_buffer_filled_by_collector_threads() -> None:
    buffer = ReplayBuffer(2000, flush_every=16)
    rw = RollingPlanWindow(buffer, window_size=200, overlap=0, sampler=FixedSampler(batch_size=16))

    def collect(part: int) -> None:
        for sample in MockSource(seed=part, num_samples=300, max_length=64):
            buffer.add({**sample, "sample_id": part * 1000 + sample["sample_id"]})

    threads = [threading.Thread(target=collect, args=(p,)) for p in range(2)]
    for t in threads:
        t.start()
    with rw:
        got = [rw.next_window(timeout=30) for _ in range(3)]
    for t in threads:
        t.join(timeout=30)
    assert [(w.start, w.stop, w.count) for w in got] == [
        (0, 200, 200),
        (200, 400, 200),
        (400, 600, 200),
    ]
    ids = np.concatenate([w.table.ids for w in got])
    assert sorted(ids.tolist()) == sorted([p * 1000 + i for p in range(2) for i in range(300)])


def test_bad_window_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="overlap"):
        RollingPlanWindow(mock(), window_size=10, overlap=10, sampler=SAMPLER)
    with pytest.raises(ConfigError, match="window_size"):
        RollingPlanWindow(mock(), window_size=0, sampler=SAMPLER)


# ------------------------------------------------------------------ loading


def batches(loader: OnlineLoader) -> Iterator[dict[str, Any]]:
    yield from loader


def test_online_loading_collates_every_sample_of_every_window() -> None:
    rw = RollingPlanWindow(mock(900, prompt_tokens=2), window_size=300, sampler=SAMPLER, epochs=2)
    loader = OnlineLoader(rw, NumpyBackend(), timeout=60)
    seen: dict[tuple[int, int], list[int]] = {}
    with rw:
        for batch in loader:
            assert batch["input_ids"].shape == batch["labels"].shape
            assert (batch["attention_mask"].sum(axis=1) > 0).all()
            # The 2 prompt tokens of every sample are no target (the first is the shift's).
            starts = np.flatnonzero(batch["position_ids"][batch["attention_mask"] == 1] == 0)
            labels = batch["labels"][batch["attention_mask"] == 1]
            assert (labels[starts] == IGNORE_INDEX).all()
            assert (labels[starts + 1] == IGNORE_INDEX).all()
            key = (batch["window"], batch["epoch"])
            seen.setdefault(key, []).extend(batch["sample_ids"].tolist())
    assert sorted(seen) == [(w, e) for w in range(3) for e in range(2)]
    assert all(sorted(v) == list(range(300)) for v in seen.values())


def test_online_loading_with_a_packer() -> None:
    rw = RollingPlanWindow(
        mock(600),
        window_size=300,
        sampler=TokenBudgetSampler(token_budget=2048),
        packer=BestFitPacker(max_length=512),
    )
    with rw:
        got = list(OnlineLoader(rw, NumpyBackend(), timeout=60))
    assert {b["window"] for b in got} == {0, 1}
    assert all(b["input_ids"].shape[1] <= 512 for b in got)
    per_window = [
        sorted(np.concatenate([b["sample_ids"] for b in got if b["window"] == w]).tolist())
        for w in (0, 1)
    ]
    assert per_window == [list(range(300))] * 2


def run_loader(
    state: dict[str, Any] | None = None, stop_after: int | None = None
) -> tuple[list[bytes], dict[str, Any]]:
    rw = RollingPlanWindow(
        mock(1000), window_size=300, overlap=100, sampler=SAMPLER, epochs=2, seed=3
    )
    loader = OnlineLoader(rw, NumpyBackend(), timeout=60)
    if state is not None:
        loader.load_state_dict(state)
    out: list[bytes] = []
    saved: dict[str, Any] = {}
    with rw:
        for batch in loader:
            out.append(batch["input_ids"].tobytes() + bytes([batch["window"], batch["epoch"]]))
            if stop_after is not None and len(out) == stop_after:
                saved = loader.state_dict()
                break
    return out, saved


def test_online_loading_resumes_mid_window_with_the_same_batches() -> None:
    full, _ = run_loader()
    for cut in (1, 7, len(full) // 2, len(full) - 1):
        head, state = run_loader(stop_after=cut)
        tail, _ = run_loader(state=state)
        assert head + tail == full, cut


def test_resuming_on_another_stream_is_refused() -> None:
    _, state = run_loader(stop_after=3)
    rw = RollingPlanWindow(
        MockSource(seed=9, num_samples=1000, max_length=512),
        window_size=300,
        overlap=100,
        sampler=SAMPLER,
        epochs=2,
        seed=3,
    )
    loader = OnlineLoader(rw, NumpyBackend(), timeout=60)
    loader.load_state_dict(state)
    with rw, pytest.raises(DataError, match="not the same"):
        next(iter(loader))


def test_online_loading_with_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    from laden.plugins.backends.torch import TorchBackend

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rw = RollingPlanWindow(mock(400), window_size=200, sampler=SAMPLER)
    with rw:
        got = list(OnlineLoader(rw, TorchBackend(device=device), timeout=60))
    assert got
    assert all(isinstance(b["input_ids"], torch.Tensor) for b in got)
    assert got[0]["input_ids"].device.type == device
    ids = torch.cat(
        [
            b["sample_ids"]
            if isinstance(b["sample_ids"], torch.Tensor)
            else torch.as_tensor(b["sample_ids"])
            for b in got
            if b["window"] == 0
        ]
    )
    assert sorted(ids.tolist()) == list(range(200))


def test_online_loading_with_mlx_arrays() -> None:
    mx = pytest.importorskip("mlx.core")
    from laden.plugins.backends.mlx import MlxBackend

    rw = RollingPlanWindow(mock(200), window_size=200, sampler=SAMPLER)
    with rw:
        got = list(OnlineLoader(rw, MlxBackend(), timeout=60))
    assert got
    assert isinstance(got[0]["input_ids"], mx.array)
