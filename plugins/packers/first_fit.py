"""``first_fit``: first-fit decreasing packing of sequences into rows of ``max_length``."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.packing import SegmentPacker, open_bins, place_decreasing
from laden.registry import Registry

__all__ = ["FirstFitPacker", "first_fit_decreasing"]


class _BinsInOrder:
    """Open bins in bin order, with their room and free slots, as columns."""

    def __init__(self, capacity: int, num_items: int, max_segments: int | None) -> None:
        self.capacity = capacity
        self.cap = num_items if max_segments is None else max_segments
        self.room = np.empty(num_items, dtype=np.int64)
        self.slots = np.empty(num_items, dtype=np.int64)
        self.live = np.zeros(0, dtype=np.int64)  # bins that may still take an item, in bin order
        self.next_bin = 0

    def fill(self, length: int, count: int) -> np.ndarray:
        """Up to ``count`` items of ``length`` into the lowest-numbered bins that fit them.

        Scanning bins in order, each takes ``min(room // length, slots)``: one
        vector pass. Returns the bin of each item placed.
        """
        fits = self.live[self.room[self.live] >= length]
        if not fits.size:
            return fits
        fill = np.minimum(self.room[fits] // length, self.slots[fits])
        cum = np.cumsum(fill)
        k = int(np.searchsorted(cum, count))
        if k < fits.size:
            fill = fill[: k + 1]
            fill[-1] -= cum[k] - count
            fits = fits[: k + 1]
        self.room[fits] -= fill * length
        self.slots[fits] -= fill
        return np.repeat(fits, fill)

    def open(self, count: int, length: int) -> np.ndarray:
        """New bins for ``count`` items of ``length``: the bin of each item."""
        first = self.next_bin
        bins, opened, per, rem = open_bins(count, length, self.capacity, self.cap, first)
        last = first + opened - 1
        self.room[first : last + 1] = self.capacity - per * length
        self.slots[first : last + 1] = self.cap - per
        self.room[last] = self.capacity - rem * length
        self.slots[last] = self.cap - rem
        self.live = np.concatenate([self.live, np.arange(first, last + 1)])
        self.next_bin += opened
        return bins

    def prune(self, shortest: int) -> None:
        """Drop the bins no remaining item can go into."""
        live = self.live
        self.live = live[(self.room[live] >= shortest) & (self.slots[live] > 0)]


def first_fit_decreasing(
    seg_lengths: np.ndarray, capacity: int, max_segments: int | None = None
) -> np.ndarray:
    """The bin of each item under first-fit decreasing (exact), without a loop per item.

    Items are taken longest first; each goes to the lowest-numbered bin that
    still fits it (and has a free slot under ``max_segments``). Items of equal
    length are placed as a group: scanning bins in order, each takes
    ``min(room // L, slots)`` of them. The work is one vector pass over the
    live bins per distinct length. Every length must be in ``1..capacity``.
    """

    def place(lengths: list[int], bounds: list[int]) -> np.ndarray:
        bins_of_sorted = np.empty(seg_lengths.size, dtype=np.int64)
        bins = _BinsInOrder(capacity, seg_lengths.size, max_segments)
        shortest = lengths[-1]
        for g, length in enumerate(lengths):
            pos, end = bounds[g], bounds[g + 1]
            if bins.live.size:
                placed = bins.fill(length, end - pos)
                bins_of_sorted[pos : pos + placed.size] = placed
                pos += placed.size
            if pos < end:
                bins_of_sorted[pos:end] = bins.open(end - pos, length)
            if g % 32 == 31 or pos < end:
                bins.prune(shortest)
        return bins_of_sorted

    return place_decreasing(seg_lengths, place)


@attrs.frozen(kw_only=True)
class FirstFitPacker(SegmentPacker):
    """Longest first, each sequence into the first open row that fits it.

    Exact first-fit decreasing, grouped by length (one vector pass over the
    open rows per distinct length). Settings are those of
    :class:`laden.packing.SegmentPacker`.
    """

    name: ClassVar[str] = "first_fit"

    def assign(self, seg_lengths: np.ndarray) -> np.ndarray:
        return first_fit_decreasing(seg_lengths, self.max_length, self.max_segments_per_pack)


@hookimpl
def laden_register_packers(registry: Registry) -> None:
    registry.add(FirstFitPacker)
