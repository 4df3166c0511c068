"""ReplayBuffer with 1M items beside TorchRL: adds, draws, a pass, memory; a rolling window.

    python benchmarks/bench_replay.py [--n 1000000] [--window 100000] [--no-torchrl]

Items are token sequences with the peers' length recipe (lognormal(5.5, 0.9)
clipped to 8..4096, ~367 tokens on average). Targets (issue 12): at least
100k adds/s one at a time and 2M items/s in bulk; 10k uniform and 2k
prioritized ``sample(256)`` calls/s; 800 prioritized sample + priority update
calls/s; a without-replacement pass over 1M in 0.3 s; memory within 10% of
the raw token bytes; a rolling window of 100,000 samples becomes a packed
token-budget plan in under 0.5 s.

TorchRL (when installed) runs the same operations on 1M items in a
``LazyTensorStorage``; its storage needs fixed-shape items, so each TorchRL
item is the sample's scalar columns (id, length, difficulty), not its tokens.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_mb, peer_lengths, print_table

from laden.plugins.packers.best_fit import BestFitPacker
from laden.plugins.samplers.token_budget import TokenBudgetSampler
from laden.records import offsets_from_sizes
from laden.stream import ReplayBuffer, RollingPlanWindow, SampleChunk


def rate(fn: Callable[[], Any], *, seconds: float = 1.0, min_calls: int = 20) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    fn()  # warm up
    calls = 0
    start = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= min_calls:
            return calls / elapsed


def make_data(n: int) -> dict[str, np.ndarray]:
    lengths = peer_lengths(n)
    rng = np.random.default_rng(1)
    return {
        "lengths": lengths,
        "offsets": offsets_from_sizes(lengths),
        "tokens": rng.integers(0, 32000, int(lengths.sum()), dtype=np.int32),
        "difficulty": rng.random(n).astype(np.float32),
    }


def chunk_of(data: dict[str, np.ndarray], lo: int, hi: int) -> SampleChunk:
    offsets = data["offsets"]
    n = hi - lo
    return SampleChunk(
        tokens=data["tokens"][offsets[lo] : offsets[hi]],
        offsets=offsets[lo : hi + 1] - offsets[lo],
        sample_id=np.arange(lo, hi, dtype=np.int64),
        episode_id=np.full(n, -1, dtype=np.int64),
        step_index=np.zeros(n, dtype=np.int32),
        difficulty=data["difficulty"][lo:hi],
        success=np.full(n, -1, dtype=np.int8),
        reward=np.zeros(n, dtype=np.float32),
        source=np.zeros(n, dtype=np.int16),
        source_names=("bench",),
        meta_values=np.zeros(0, dtype=np.uint8),
        meta_offsets=np.zeros(n + 1, dtype=np.int64),
    )


def laden_rows(
    data: dict[str, np.ndarray], n: int, window: int
) -> tuple[list[list[Any]], dict[str, Any]]:
    rows: list[list[Any]] = []
    info: dict[str, Any] = {}
    offsets, tokens = data["offsets"].tolist(), data["tokens"]
    difficulty = data["difficulty"].tolist()
    samples = [
        {
            "input_ids": tokens[offsets[i] : offsets[i + 1]],
            "sample_id": i,
            "difficulty": difficulty[i],
        }
        for i in range(n)
    ]
    buffer = ReplayBuffer(n)
    start = time.perf_counter()
    add = buffer.add
    for sample in samples:
        add(sample)
    buffer.flush()
    one = n / (time.perf_counter() - start)
    del samples, buffer
    gc.collect()
    rows.append(["add one at a time (items/s)", f"{one:,.0f}", ">= 100,000"])

    chunks = [chunk_of(data, lo, min(lo + 100_000, n)) for lo in range(0, n, 100_000)]
    buffer = ReplayBuffer(n)
    start = time.perf_counter()
    for chunk in chunks:
        buffer.add_chunk(chunk)
    bulk = n / (time.perf_counter() - start)
    rows.append(["bulk add, chunks of 100k, first fill (items/s)", f"{bulk:,.0f}", ">= 2,000,000"])
    # Full and evicting (FIFO): pages freed by evictions are reused, as in a long run.
    steady = ReplayBuffer(n // 2)
    for chunk in chunks[: len(chunks) // 2]:
        steady.add_chunk(chunk)
    start = time.perf_counter()
    for chunk in chunks:
        steady.add_chunk(chunk)
    bulk = n / (time.perf_counter() - start)
    del chunks, steady
    gc.collect()
    rows.append(["bulk add, full buffer evicting (items/s)", f"{bulk:,.0f}", ">= 2,000,000"])

    rows.append(
        [
            "uniform sample(256) (calls/s)",
            f"{rate(lambda: buffer.sample(256)):,.0f}",
            ">= 10,000",
        ]
    )
    rows.append(
        [
            "prioritized sample(256) (calls/s)",
            f"{rate(lambda: buffer.sample(256, prioritized=True)):,.0f}",
            ">= 2,000",
        ]
    )
    rng = np.random.default_rng(2)

    def sample_update() -> None:
        draw = buffer.sample(256, prioritized=True)
        buffer.update_priorities(draw, rng.random(256))

    rows.append(["prioritized sample + update (calls/s)", f"{rate(sample_update):,.0f}", ">= 800"])
    rows.append(
        [
            "uniform sample(256) + tokens (calls/s)",
            f"{rate(lambda: buffer.get(buffer.sample(256))):,.0f}",
            "",
        ]
    )

    def full_pass() -> int:
        seen = 0
        while True:
            draw = buffer.sample(256, replace=False)
            seen += len(draw)
            if draw.end_of_pass:
                return seen

    start = time.perf_counter()
    seen = full_pass()
    rows.append(
        [
            f"without-replacement pass over {seen:,} (s)",
            f"{time.perf_counter() - start:.3f}",
            "<= 0.3",
        ]
    )
    raw = int(data["lengths"].sum()) * 4
    rows.append(
        [
            "memory / raw token bytes",
            f"{buffer.nbytes / raw:.3f} ({buffer.nbytes / 2**20:,.0f} / {raw / 2**20:,.0f} MiB)",
            "<= 1.10",
        ]
    )
    info["buffer"] = buffer

    # A rolling window: the last `window` samples become a packed token-budget plan.
    windows = RollingPlanWindow(
        buffer,
        window_size=window,
        sampler=TokenBudgetSampler(token_budget=16384, overflow="truncate"),
        packer=BestFitPacker(max_length=4096, overflow="split"),
        seed=0,
    )
    took = []
    stride = max(window // 10, 1)
    for k in range(4):  # consecutive windows, as a run cuts them
        stop = n - (3 - k) * stride
        start = time.perf_counter()
        built = windows.build(k, stop - window, stop)
        took.append(time.perf_counter() - start)
        del built
    label = f"rolling window of {window:,} -> packed token-budget plan"
    rows.append([f"{label}, first (s)", f"{took[0]:.3f}", "< 0.5"])
    rows.append([f"{label}, next 3 (s, median)", f"{sorted(took[1:])[1]:.3f}", "< 0.5"])
    return rows, info


def torchrl_rows(data: dict[str, np.ndarray], n: int) -> list[list[Any]]:
    try:
        import torch
        import torchrl
        from tensordict import TensorDict
        from torchrl.data import LazyTensorStorage, SamplerWithoutReplacement
        from torchrl.data import ReplayBuffer as TRB
    except Exception as exc:  # not installed, or does not import with this torch
        return [["TorchRL", f"not available: {type(exc).__name__}: {exc}"[:90], ""]]
    version = torchrl.__version__
    item = TensorDict(
        {
            "sample_id": torch.zeros((), dtype=torch.int64),
            "length": torch.zeros((), dtype=torch.int64),
            "difficulty": torch.zeros(()),
        },
        batch_size=[],
    )
    rows: list[list[Any]] = []
    count = min(n, 50_000)  # one-at-a-time adds are slow: time a prefix
    rb = TRB(storage=LazyTensorStorage(n), batch_size=256)
    start = time.perf_counter()
    for _ in range(count):
        rb.add(item)
    rows.append(
        [
            f"TorchRL {version} add one (items/s, {count:,} items)",
            f"{count / (time.perf_counter() - start):,.0f}",
            "",
        ]
    )
    rb = TRB(storage=LazyTensorStorage(n), batch_size=256)
    batch = TensorDict(
        {
            "sample_id": torch.arange(n),
            "length": torch.from_numpy(data["lengths"]),
            "difficulty": torch.from_numpy(data["difficulty"]),
        },
        batch_size=[n],
    )
    start = time.perf_counter()
    rb.extend(batch)
    rows.append(
        [
            f"TorchRL {version} bulk extend (items/s)",
            f"{n / (time.perf_counter() - start):,.0f}",
            "",
        ]
    )
    rows.append([f"TorchRL {version} uniform sample(256) (calls/s)", f"{rate(rb.sample):,.0f}", ""])
    try:
        from torchrl.data import PrioritizedSampler

        prb = TRB(
            storage=LazyTensorStorage(n),
            sampler=PrioritizedSampler(max_capacity=n, alpha=1.0, beta=1.0),
            batch_size=256,
        )
        prb.extend(batch)
        rows.append(
            [f"TorchRL {version} prioritized sample(256) (calls/s)", f"{rate(prb.sample):,.0f}", ""]
        )

        def update() -> None:
            _sample, info = prb.sample(return_info=True)
            prb.update_priority(info["index"], torch.rand(256))

        rows.append(
            [f"TorchRL {version} prioritized sample + update (calls/s)", f"{rate(update):,.0f}", ""]
        )
    except Exception as exc:
        rows.append(
            [
                f"TorchRL {version} prioritized sampler",
                f"does not load: {type(exc).__name__}: {exc}"[:90],
                "",
            ]
        )
    wrb = TRB(storage=LazyTensorStorage(n), sampler=SamplerWithoutReplacement(), batch_size=256)
    wrb.extend(batch)
    start = time.perf_counter()
    for _ in range(-(-n // 256)):
        wrb.sample()
    rows.append(
        [
            f"TorchRL {version} without-replacement pass (s)",
            f"{time.perf_counter() - start:.3f}",
            "",
        ]
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=100_000)
    parser.add_argument("--no-torchrl", action="store_true")
    args = parser.parse_args()
    data = make_data(args.n)
    rows, _ = laden_rows(data, args.n, min(args.window, args.n))
    if not args.no_torchrl:
        rows += torchrl_rows(data, args.n)
    print(f"ReplayBuffer, {args.n:,} items, {int(data['lengths'].sum()):,} tokens")
    print_table(["measure", "result", "target"], rows)
    print(f"peak RSS {peak_rss_mb():,.0f} MiB")


if __name__ == "__main__":
    main()
