"""``best_fit``: best-fit decreasing packing of sequences into rows of ``max_length``."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.packing import SegmentPacker, open_bins, place_decreasing
from laden.registry import Registry

__all__ = ["BestFitPacker", "best_fit_decreasing"]


class _RoomClasses:
    """Open bins kept by remaining room, so the work is per (length, room class), not per item.

    ``by_room[r]`` lists the open bins with ``r`` tokens of room; best fit
    takes from the end of the list. Under a segment cap, ``slots`` counts the
    items each bin may still take, and a full bin is closed (never filed).
    """

    def __init__(self, capacity: int, num_items: int, max_segments: int | None) -> None:
        self.capacity = capacity
        self.capped = max_segments is not None
        self.cap = num_items if max_segments is None else max_segments
        self.by_room: list[list[int]] = [[] for _ in range(capacity + 1)]
        self.nonempty = np.zeros(capacity + 1, dtype=bool)
        # Items per bin, only tracked under a cap (bins <= items).
        self.slots = np.full(num_items if self.capped else 0, self.cap, dtype=np.int64)
        self.next_bin = 0

    def file(self, bins: list[int], room: int) -> None:
        """File bins under their remaining room (a bin with no free slot is closed)."""
        if self.capped:
            bins = [b for b in bins if self.slots[b] > 0]
        if bins:
            self.by_room[room].extend(bins)
            self.nonempty[room] = True

    def tightest(self, length: int) -> int | None:
        """The least room of an open bin that fits ``length``, or None when none does."""
        room = length + int(np.argmax(self.nonempty[length:]))
        return room if self.nonempty[room] else None

    def open(self, count: int, length: int) -> np.ndarray:
        """New bins for ``count`` items of ``length``: the bin of each item."""
        first = self.next_bin
        bins, opened, per, rem = open_bins(count, length, self.capacity, self.cap, first)
        last = first + opened - 1
        if self.capped:
            self.slots[first:last] -= per
            self.slots[last] -= rem
        self.file(list(range(first, last)), self.capacity - per * length)
        self.file([last], self.capacity - rem * length)
        self.next_bin += opened
        return bins

    def fill(self, room: int, length: int, count: int) -> np.ndarray:
        """Up to ``count`` items of ``length`` into bins of ``room``: the bin of each one placed."""
        bins = self.by_room[room]
        used, each = (self._take_capped if self.capped else self._take)(bins, room, length, count)
        del bins[len(bins) - len(used) :]
        if not bins:
            self.nonempty[room] = False
        self._refile(used, each, room, length)
        return np.repeat(np.asarray(used, dtype=np.int64), each)

    @staticmethod
    def _take(bins: list[int], room: int, length: int, count: int) -> tuple[list[int], np.ndarray]:
        """Without a cap every bin of a room class takes ``room // length`` items."""
        per = room // length
        take = min(count, len(bins) * per)
        full, rem = divmod(take, per)
        used = bins[len(bins) - full - (1 if rem else 0) :]
        each = np.full(len(used), per, dtype=np.int64)
        if rem:
            each[-1] = rem
        return used, each

    def _take_capped(
        self, bins: list[int], room: int, length: int, count: int
    ) -> tuple[list[int], np.ndarray]:
        """Under a cap, bins of one room class may have different free slots."""
        # From the end of the list, which is where ``fill`` removes them.
        tail = np.asarray(bins[-min(len(bins), count) :][::-1], dtype=np.int64)
        fill = np.minimum(room // length, self.slots[tail])
        cum = np.cumsum(fill)
        k = int(np.searchsorted(cum, count))
        if k < tail.size:
            fill = fill[: k + 1].copy()
            fill[-1] -= cum[k] - count
            tail = tail[: k + 1]
        self.slots[tail] -= fill
        return tail.tolist(), fill

    def _refile(self, used: list[int], each: np.ndarray, room: int, length: int) -> None:
        """File the bins just used under the room they have left."""
        if self.capped:
            lefts = room - each * length
            for left in np.unique(lefts).tolist():
                self.file(np.asarray(used)[lefts == left].tolist(), left)
            return
        per = int(each[0])
        if each[-1] != per:
            self.file(used[:-1], room - per * length)
            self.file(used[-1:], room - int(each[-1]) * length)
        else:
            self.file(used, room - per * length)


def best_fit_decreasing(
    seg_lengths: np.ndarray, capacity: int, max_segments: int | None = None
) -> np.ndarray:
    """The bin of each item under best-fit decreasing (exact), without a loop per item.

    Items are taken longest first; each goes to the bin with the least room
    that still fits it, a new bin if none does. Items of equal length are
    placed as a group: best fit keeps filling the bin it just used while it
    fits, so each bin of remaining room ``r`` takes ``r // L`` of them. Bins are
    kept by remaining room, so the work is per (length value, room class), not
    per item. Every length must be in ``1..capacity``.

    :param max_segments: at most this many items per bin; a full bin is closed.
    """

    def place(lengths: list[int], bounds: list[int]) -> np.ndarray:
        bins_of_sorted = np.empty(seg_lengths.size, dtype=np.int64)
        open_ = _RoomClasses(capacity, seg_lengths.size, max_segments)
        for g, length in enumerate(lengths):
            pos, end = bounds[g], bounds[g + 1]
            while pos < end:
                room = open_.tightest(length)
                if room is None:  # no open bin fits: open new ones for the rest
                    bins_of_sorted[pos:end] = open_.open(end - pos, length)
                    break
                placed = open_.fill(room, length, end - pos)
                bins_of_sorted[pos : pos + placed.size] = placed
                pos += placed.size
        return bins_of_sorted

    return place_decreasing(seg_lengths, place)


@attrs.frozen(kw_only=True)
class BestFitPacker(SegmentPacker):
    """Longest first, each sequence into the open row with the least room that fits it.

    Exact best-fit decreasing over the whole dataset (not in blocks), grouped by
    length so it runs in numpy time: 1M sequences in well under a second.
    Settings are those of :class:`laden.packing.SegmentPacker`.
    """

    name: ClassVar[str] = "best_fit"

    def assign(self, seg_lengths: np.ndarray) -> np.ndarray:
        return best_fit_decreasing(seg_lengths, self.max_length, self.max_segments_per_pack)


@hookimpl
def laden_register_packers(registry: Registry) -> None:
    registry.add(BestFitPacker)
