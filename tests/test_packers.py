"""Packers: the conformance checks, exactness of best-fit decreasing, overflow policies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import laden
from laden.packing import best_fit_decreasing
from laden.plugins.packers.best_fit import BestFitPacker
from laden.testing import check_packer


@pytest.mark.parametrize("overflow", ["error", "drop", "truncate", "split"])
def test_best_fit_conforms(overflow: str) -> None:
    check_packer(BestFitPacker, max_length=64, overflow=overflow)
    check_packer(
        BestFitPacker, max_length=64, overflow=overflow, shuffle=True, seed=3, max_examples=20
    )


def reference_bfd(lengths: list[int], capacity: int) -> list[int]:
    """Textbook best-fit decreasing, one item at a time: the remaining room of each bin."""
    rooms: list[int] = []
    for length in sorted(lengths, reverse=True):
        fits = [b for b, r in enumerate(rooms) if r >= length]
        if fits:
            best = min(fits, key=lambda b: rooms[b])
        else:
            rooms.append(capacity)
            best = len(rooms) - 1
        rooms[best] -= length
    return sorted(rooms)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 50).flatmap(
        lambda c: st.tuples(st.just(c), st.lists(st.integers(1, c), max_size=60))
    )
)
def test_grouped_bfd_equals_textbook_bfd(case: tuple[int, list[int]]) -> None:
    capacity, lengths = case
    bins = best_fit_decreasing(np.asarray(lengths, dtype=np.int64), capacity)
    if not lengths:
        return
    load = np.bincount(bins, weights=lengths)
    assert sorted((capacity - load).astype(int).tolist()) == reference_bfd(lengths, capacity)


def test_peer_lengths_pack_near_the_lower_bound(kernel: laden.Kernel) -> None:
    lengths = np.clip(np.random.default_rng(0).lognormal(5.5, 0.9, 100_000), 8, 4096)
    table = laden.LengthTable.from_lengths(lengths.astype(np.int64))
    plan = kernel.create("packer", {"name": "best_fit", "max_length": 4096}).pack(table)
    lower_bound = -(-table.num_tokens // 4096)
    assert len(plan) - lower_bound <= 10
    assert plan.efficiency >= 0.9998  # TRL's bfd over the whole dataset: 0.9998
    packs = plan.to_length_table()
    assert packs.num_tokens == table.num_tokens
    assert packs.length.max() <= 4096


def test_overflow_policies_are_counted(kernel: laden.Kernel) -> None:
    table = laden.LengthTable.from_lengths([5, 25, 7])
    with pytest.raises(laden.DataError, match="sample 1 with 25 tokens"):
        BestFitPacker(max_length=10).pack(table)
    dropped = BestFitPacker(max_length=10, overflow="drop").pack(table)
    assert dropped.dropped.tolist() == [1]
    assert dropped.report["dropped_tokens"] == 25
    truncated = BestFitPacker(max_length=10, overflow="truncate").pack(table)
    assert truncated.report["truncated_tokens"] == 15
    split = BestFitPacker(max_length=10, overflow="split").pack(table)
    assert split.seg_length.sum() == 37  # every token kept
    pieces = sorted(
        zip(split.order.tolist(), split.seg_start.tolist(), split.seg_length.tolist(), strict=True)
    )
    assert [p for p in pieces if p[0] == 1] == [(1, 0, 10), (1, 10, 10), (1, 20, 5)]
    assert split.report["split_samples"] == 1


def test_shuffle_changes_pack_order_only() -> None:
    table = laden.LengthTable.from_lengths(np.arange(1, 200))
    plain = BestFitPacker(max_length=256).pack(table)
    shuffled = BestFitPacker(max_length=256, shuffle=True, seed=1).pack(table)
    assert not np.array_equal(plain.order, shuffled.order)
    assert sorted(plain.pack_lengths.tolist()) == sorted(shuffled.pack_lengths.tolist())
