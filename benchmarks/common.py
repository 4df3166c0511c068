"""Shared pieces of the benchmarks: the peers' length recipe, timing, tables."""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def peer_lengths(n: int, *, seed: int = 0, low: int = 8, high: int = 4096) -> np.ndarray:
    """The lengths every peer figure in PEERS.md was measured on."""
    return np.clip(np.random.default_rng(seed).lognormal(5.5, 0.9, n), low, high).astype(np.int64)


def write_prose_corpus(path: Path, n: int, *, seed: int = 0) -> None:
    """``n`` JSONL documents of :func:`peer_lengths` words, Zipf-distributed over 20,000
    made-up words, so the texts tokenize like prose (about one BPE token per word)."""
    rng = np.random.default_rng(seed)
    vocabulary = np.array(
        ["".join(rng.choice(list("etaoinshrdlucmfw"), k)) for k in rng.integers(2, 9, 20_000)]
    )
    with path.open("w") as f:
        for i, size in enumerate(peer_lengths(n)):
            picks = np.minimum(rng.zipf(1.2, size), vocabulary.size) - 1
            f.write(json.dumps({"id": i, "text": " ".join(vocabulary[picks])}) + "\n")


def median_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """The median wall time of ``repeats`` calls and the last call's result."""
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, row in enumerate(cells):
        line = "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        print(line)
        if k == 0:
            print("  ".join("-" * w for w in widths))
