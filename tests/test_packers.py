"""Packers: the conformance checks, exactness of best-fit decreasing, overflow policies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import laden
from laden.plugins.packers.best_fit import BestFitPacker, best_fit_decreasing
from laden.plugins.packers.first_fit import FirstFitPacker, first_fit_decreasing
from laden.plugins.packers.sequential import SequentialPacker
from laden.testing import check_packer


@pytest.mark.parametrize("cls", [BestFitPacker, FirstFitPacker, SequentialPacker])
@pytest.mark.parametrize("overflow", ["error", "drop", "truncate", "split"])
def test_packers_conform(cls: type, overflow: str) -> None:
    check_packer(cls, max_length=64, overflow=overflow)
    check_packer(cls, max_length=64, overflow=overflow, shuffle=True, seed=3, max_examples=20)
    check_packer(cls, max_length=64, overflow=overflow, max_segments_per_pack=3, max_examples=30)


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


def reference_ffd(lengths: list[int], capacity: int, cap: int | None) -> list[tuple[int, int]]:
    """Textbook first-fit decreasing, one item at a time: (room, items) of each bin, in order."""
    bins: list[list[int]] = []  # [room, items]
    for length in sorted(lengths, reverse=True):
        for b in bins:
            if b[0] >= length and (cap is None or b[1] < cap):
                b[0] -= length
                b[1] += 1
                break
        else:
            bins.append([capacity - length, 1])
    return [(room, items) for room, items in bins]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 50).flatmap(
        lambda c: st.tuples(st.just(c), st.lists(st.integers(1, c), max_size=60))
    ),
    st.one_of(st.none(), st.integers(1, 5)),
)
def test_grouped_ffd_equals_textbook_ffd(case: tuple[int, list[int]], cap: int | None) -> None:
    capacity, lengths = case
    bins = first_fit_decreasing(np.asarray(lengths, dtype=np.int64), capacity, cap)
    if not lengths:
        return
    load = np.bincount(bins, weights=lengths).astype(int)
    items = np.bincount(bins)
    got = [(capacity - int(w), int(k)) for w, k in zip(load, items, strict=True)]
    assert got == reference_ffd(lengths, capacity, cap)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 50).flatmap(
        lambda c: st.tuples(st.just(c), st.lists(st.integers(1, c), max_size=60))
    ),
    st.integers(1, 5),
)
def test_capped_bfd_keeps_the_cap(case: tuple[int, list[int]], cap: int) -> None:
    capacity, lengths = case
    bins = best_fit_decreasing(np.asarray(lengths, dtype=np.int64), capacity, cap)
    if not lengths:
        return
    assert np.bincount(bins).max() <= cap
    assert np.bincount(bins, weights=lengths).max() <= capacity
    # A cap that never binds takes the capped code path to the uncapped result.
    loose = best_fit_decreasing(np.asarray(lengths, dtype=np.int64), capacity, len(lengths))
    plain = best_fit_decreasing(np.asarray(lengths, dtype=np.int64), capacity)
    rooms = sorted((capacity - np.bincount(loose, weights=lengths)).tolist())
    assert rooms == sorted((capacity - np.bincount(plain, weights=lengths)).tolist())


def test_sequential_is_a_cut_token_stream() -> None:
    table = laden.LengthTable.from_lengths([5, 9, 2, 7])
    plan = SequentialPacker(max_length=8).pack(table)
    assert plan.pack_lengths.tolist() == [8, 8, 7]  # every row full but the last
    columns = (plan.order, plan.seg_start, plan.seg_length)
    rows = [
        list(zip(*(x[a:b].tolist() for x in columns), strict=True))
        for a, b in zip(plan.offsets[:-1], plan.offsets[1:], strict=True)
    ]
    assert rows == [
        [(0, 0, 5), (1, 0, 3)],
        [(1, 3, 6), (2, 0, 2)],
        [(3, 0, 7)],
    ]
    capped = SequentialPacker(max_length=8, max_segments_per_pack=1).pack(table)
    assert np.diff(capped.offsets).max() == 1
    assert capped.pack_lengths.tolist() == [5, 8, 1, 2, 7]


def test_first_fit_fills_earlier_rows_first() -> None:
    table = laden.LengthTable.from_lengths([6, 5, 4, 3, 2])
    plan = FirstFitPacker(max_length=10).pack(table)
    assert plan.pack_lengths.tolist() == [10, 10]
    assert plan.order.tolist() == [0, 2, 1, 3, 4]


@pytest.mark.parametrize("name", ["first_fit", "best_fit", "sequential"])
def test_segment_cap_through_the_kernel(kernel: laden.Kernel, name: str) -> None:
    lengths = np.random.default_rng(2).integers(1, 50, 5_000)
    table = laden.LengthTable.from_lengths(lengths)
    packer = kernel.create("packer", {"name": name, "max_length": 512, "max_segments_per_pack": 4})
    plan = packer.pack(table)
    assert np.diff(plan.offsets).max() <= 4
    assert int(plan.seg_length.sum()) == int(lengths.sum())
    with pytest.raises(laden.ConfigError, match="max_segments_per_pack"):
        kernel.create("packer", {"name": name, "max_length": 512, "max_segments_per_pack": 0})


def test_capped_bfd_regression_takes_the_bins_it_removes() -> None:
    # Found by hypothesis: a partially used room class removed the wrong bin.
    lengths = np.array([1, 3, 3, 11, 11])
    for cap in (1, 2, 3, 4):
        bins = best_fit_decreasing(lengths, 17, cap)
        assert np.bincount(bins, weights=lengths).max() <= 17
        assert np.bincount(bins).max() <= cap
