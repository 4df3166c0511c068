"""Packing primitives: segments from an overflow policy, and best-fit decreasing.

A *segment* is a run of one sample's tokens: ``(sample, start, length)``. A
sample that fits ``max_length`` is one segment; the ``split`` policy cuts a
longer one into several, so no token is lost.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from laden.errors import DataError
from laden.records import LengthTable, PackPlan, offsets_from_sizes
from laden.seeding import rng_for
from laden.validators import at_least, one_of, optional, positive

__all__ = [
    "SegmentPacker",
    "best_fit_decreasing",
    "first_fit_decreasing",
    "pack_plan_from_bins",
    "segments_for",
    "sequential_bins",
]


def segments_for(
    lengths: np.ndarray, max_length: int, overflow: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Segments ``(sample, start, length)`` under an overflow policy, plus dropped samples.

    Policies for a sample longer than ``max_length``: ``error``, ``drop``
    (counted), ``truncate`` (keeps its first ``max_length`` tokens, the rest
    counted), ``split`` (consecutive segments of at most ``max_length``).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = lengths.size
    over = np.flatnonzero(lengths > max_length)
    report = {"dropped_samples": 0, "dropped_tokens": 0, "truncated_tokens": 0, "split_samples": 0}
    samples = np.arange(n, dtype=np.int64)
    if over.size == 0 or overflow == "truncate":
        seg = np.minimum(lengths, max_length)
        report["truncated_tokens"] = int((lengths - seg).sum())
        return samples, np.zeros(n, dtype=np.int64), seg, np.zeros(0, dtype=np.int64), report
    if overflow == "error":
        first = int(over[0])
        raise DataError(
            f"{over.size} sample(s) are longer than max_length {max_length}; the first is "
            f"sample {first} with {int(lengths[first])} tokens. Set the packer's overflow to "
            "'drop', 'truncate' or 'split'"
        )
    if overflow == "drop":
        keep = np.ones(n, dtype=bool)
        keep[over] = False
        report["dropped_samples"] = int(over.size)
        report["dropped_tokens"] = int(lengths[over].sum())
        kept = samples[keep]
        return kept, np.zeros(kept.size, dtype=np.int64), lengths[keep], over, report
    # split: ceil(length / max_length) segments per sample (zero-length samples keep one)
    pieces = np.maximum(-(-lengths // max_length), 1)
    sample = np.repeat(samples, pieces)
    first_of = np.cumsum(pieces) - pieces
    index_in = np.arange(sample.size, dtype=np.int64) - np.repeat(first_of, pieces)
    start = index_in * max_length
    seg = np.minimum(lengths[sample] - start, max_length)
    report["split_samples"] = int(over.size)
    return sample, start, seg, np.zeros(0, dtype=np.int64), report


def _sorted_groups(seg_lengths: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """Items longest first (stable), and each run of equal length as ``(length, start)``."""
    order = np.argsort(-seg_lengths, kind="stable")
    sorted_lengths = seg_lengths[order]
    values, first = np.unique(-sorted_lengths, return_index=True)
    return order, (-values).tolist(), [*first.tolist(), seg_lengths.size]


def _open_bins(
    count: int, length: int, capacity: int, cap: int, next_bin: int
) -> tuple[np.ndarray, int, int, int]:
    """New bins for ``count`` items of ``length``.

    :returns: the bin of each item, bins opened, items per full bin, items in the last.
    """
    per = min(capacity // length, cap)
    opened = -(-count // per)
    ids = np.arange(next_bin, next_bin + opened, dtype=np.int64)
    return np.repeat(ids, per)[:count], opened, per, count - (opened - 1) * per


def _unsort(order: np.ndarray, values_of_sorted: np.ndarray) -> np.ndarray:
    """Values in input order, given them in the order ``order`` sorted the input."""
    out = np.empty_like(values_of_sorted)
    out[order] = values_of_sorted
    return out


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
    n = seg_lengths.size
    bins_of_sorted = np.empty(n, dtype=np.int64)
    if n == 0:
        return bins_of_sorted
    cap = n if max_segments is None else max_segments
    order, lengths, bounds = _sorted_groups(seg_lengths)
    by_room: list[list[int]] = [[] for _ in range(capacity + 1)]
    nonempty = np.zeros(capacity + 1, dtype=bool)
    # Items per bin, only tracked under a cap (bins <= items).
    slots = np.full(n if max_segments is not None else 0, cap, dtype=np.int64)
    next_bin = 0

    def move(bins: list[int], room: int) -> None:
        if max_segments is not None:
            bins = [b for b in bins if slots[b] > 0]
        if bins:
            by_room[room].extend(bins)
            nonempty[room] = True

    for g, length in enumerate(lengths):
        pos, end = bounds[g], bounds[g + 1]
        while pos < end:
            count = end - pos
            hit = int(np.argmax(nonempty[length:]))
            room = length + hit
            if not nonempty[room]:  # no open bin fits: open new ones
                bins_of_sorted[pos:end], opened, per, rem = _open_bins(
                    count, length, capacity, cap, next_bin
                )
                if max_segments is not None:
                    slots[next_bin : next_bin + opened - 1] -= per
                    slots[next_bin + opened - 1] -= rem
                move(list(range(next_bin, next_bin + opened - 1)), capacity - per * length)
                move([next_bin + opened - 1], capacity - rem * length)
                next_bin += opened
                pos = end
                break
            bins = by_room[room]
            if max_segments is None:
                per = room // length
                take = min(count, len(bins) * per)
                full, rem = divmod(take, per)
                used = bins[len(bins) - full - (1 if rem else 0) :]
                each = np.full(len(used), per, dtype=np.int64)
                if rem:
                    each[-1] = rem
            else:  # bins of one room class may have different free slots
                # From the end of the list, which is where ``del`` below removes them.
                tail = np.asarray(bins[-min(len(bins), count) :][::-1], dtype=np.int64)
                fill = np.minimum(room // length, slots[tail])
                cum = np.cumsum(fill)
                k = int(np.searchsorted(cum, count))
                if k < tail.size:
                    fill = fill[: k + 1].copy()
                    fill[-1] -= cum[k] - count
                    tail = tail[: k + 1]
                used = tail.tolist()
                each = fill
                slots[tail] -= fill
            del bins[len(bins) - len(used) :]
            if not bins:
                nonempty[room] = False
            take = int(each.sum())
            bins_of_sorted[pos : pos + take] = np.repeat(np.asarray(used, dtype=np.int64), each)
            if max_segments is None:
                per = int(each[0])
                if each[-1] != per:
                    move(used[:-1], room - per * length)
                    move(used[-1:], room - int(each[-1]) * length)
                else:
                    move(used, room - per * length)
            else:
                lefts = room - each * length
                for left in np.unique(lefts).tolist():
                    move(np.asarray(used)[lefts == left].tolist(), left)
            pos += take
    return _unsort(order, bins_of_sorted)


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
    n = seg_lengths.size
    bins_of_sorted = np.empty(n, dtype=np.int64)
    if n == 0:
        return bins_of_sorted
    cap = n if max_segments is None else max_segments
    order, lengths, bounds = _sorted_groups(seg_lengths)
    room = np.empty(n, dtype=np.int64)
    slots = np.empty(n, dtype=np.int64)
    live = np.zeros(0, dtype=np.int64)  # bins that may still take an item, in bin order
    shortest = lengths[-1]
    next_bin = 0
    for g, length in enumerate(lengths):
        pos, end = bounds[g], bounds[g + 1]
        count = end - pos
        if live.size:
            fits = live[room[live] >= length]
            if fits.size:
                fill = np.minimum(room[fits] // length, slots[fits])
                cum = np.cumsum(fill)
                k = int(np.searchsorted(cum, count))
                if k < fits.size:
                    fill = fill[: k + 1]
                    fill[-1] -= cum[k] - count
                    fits = fits[: k + 1]
                take = int(fill.sum())
                bins_of_sorted[pos : pos + take] = np.repeat(fits, fill)
                room[fits] -= fill * length
                slots[fits] -= fill
                pos += take
                count -= take
        if count:
            bins_of_sorted[pos:end], opened, per, rem = _open_bins(
                count, length, capacity, cap, next_bin
            )
            new = slice(next_bin, next_bin + opened)
            room[new] = capacity - per * length
            slots[new] = cap - per
            room[next_bin + opened - 1] = capacity - rem * length
            slots[next_bin + opened - 1] = cap - rem
            live = np.concatenate([live, np.arange(next_bin, next_bin + opened)])
            next_bin += opened
        if g % 32 == 31 or count:  # drop bins no remaining item can go into
            live = live[(room[live] >= shortest) & (slots[live] > 0)]
    return _unsort(order, bins_of_sorted)


def sequential_bins(
    seg_lengths: np.ndarray, capacity: int, max_segments: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate segments in order and cut the stream every ``capacity`` tokens.

    A segment that crosses a cut is split there into continuation pieces.
    Returns ``(source, offset, length, bin)`` per piece: the index of the input
    segment, the offset inside it, the piece's tokens and its row. Zero-length
    segments stay as zero-length pieces in the row where the stream is. With
    ``max_segments`` a row also ends after that many pieces (a loop per row).
    """
    seg_lengths = np.asarray(seg_lengths, dtype=np.int64)
    n = seg_lengths.size
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    if max_segments is None:
        starts = np.cumsum(seg_lengths) - seg_lengths
        ends = starts + seg_lengths
        first_row = starts // capacity
        last_row = np.where(seg_lengths > 0, (ends - 1) // capacity, first_row)
        pieces = last_row - first_row + 1
        source = np.repeat(np.arange(n, dtype=np.int64), pieces)
        k = np.arange(source.size, dtype=np.int64) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        row = first_row[source] + k
        lo = np.maximum(starts[source], row * capacity)
        hi = np.minimum(ends[source], (row + 1) * capacity)
        return source, lo - starts[source], hi - lo, row
    return _sequential_capped(seg_lengths, capacity, max_segments)


def _sequential_capped(
    seg_lengths: np.ndarray, capacity: int, max_segments: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = seg_lengths.size
    source: list[int] = []
    offset: list[int] = []
    piece: list[int] = []
    row: list[int] = []
    i, done, r = 0, 0, 0  # segment, tokens of it already placed, row
    while i < n:
        room, used = capacity, 0
        while i < n and used < max_segments and (room > 0 or seg_lengths[i] == done == 0):
            take = min(int(seg_lengths[i]) - done, room)
            source.append(i)
            offset.append(done)
            piece.append(take)
            row.append(r)
            room -= take
            used += 1
            done += take
            if done == seg_lengths[i]:
                i, done = i + 1, 0
        r += 1
    return tuple(np.asarray(v, dtype=np.int64) for v in (source, offset, piece, row))  # type: ignore[return-value]


def pack_plan_from_bins(
    bins: np.ndarray,
    sample: np.ndarray,
    start: np.ndarray,
    seg: np.ndarray,
    *,
    max_length: int,
    dropped: np.ndarray,
    report: dict[str, object],
    longest_first: bool = True,
) -> PackPlan:
    """A PackPlan from each segment's bin: packs in bin order.

    Inside a pack, segments go longest first, or in the given order when
    ``longest_first`` is false (sequential packing keeps the stream order).
    """
    if bins.size == 0:
        return PackPlan(
            order=np.zeros(0, np.int64),
            offsets=np.zeros(1, np.int64),
            seg_length=seg,
            seg_start=start,
            max_length=max_length,
            dropped=dropped,
            report=report,
        )
    if longest_first:  # one stable sort on (bin, longest first): cheaper than a lexsort
        place = np.argsort(bins * (max_length + 1) + (max_length - seg), kind="stable")
    elif (np.diff(bins) >= 0).all():
        place = np.arange(bins.size)
    else:
        place = np.argsort(bins, kind="stable")
    offsets = offsets_from_sizes(np.bincount(bins))
    return PackPlan(
        order=sample[place],
        offsets=offsets,
        seg_length=seg[place],
        seg_start=start[place],
        max_length=max_length,
        dropped=dropped,
        report=report,
    )


@attrs.frozen(kw_only=True)
class SegmentPacker:
    """What the built-in packers share: overflow policy, segment cap, pack-order shuffle.

    Subclasses give ``name`` and ``assign(seg_lengths)`` (the bin of each
    segment). A third-party packer can subclass it the same way.

    :param max_length: tokens per packed row.
    :param overflow: a sequence longer than ``max_length``: ``error``, ``drop``,
        ``truncate`` or ``split`` (every token kept, as continuation segments).
        What is dropped or cut is counted in ``plan.report``.
    :param max_segments_per_pack: at most this many segments in one row.
    :param shuffle: shuffle the order of packs (seeded by ``seed``).
    :param seed: the seed of that shuffle.
    """

    name: ClassVar[str] = ""
    #: Keep each pack's segments in dataset order instead of longest first.
    keeps_order: ClassVar[bool] = False

    max_length: int = attrs.field(validator=positive)
    overflow: str = attrs.field(
        default="error", validator=one_of("error", "drop", "truncate", "split")
    )
    max_segments_per_pack: int | None = attrs.field(default=None, validator=optional(positive))
    shuffle: bool = False
    seed: int = attrs.field(default=0, validator=at_least(0))

    def assign(self, seg_lengths: np.ndarray) -> np.ndarray:
        """The bin of each segment (every length in ``1..max_length``)."""
        raise NotImplementedError

    def place(
        self, table: LengthTable
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
        """``(bin, sample, start, length, dropped, report)`` of every segment."""
        sample, start, seg, dropped, report = segments_for(
            table.length, self.max_length, self.overflow
        )
        # Zero-length segments take no room; give them a token's worth so they are placed.
        return self.assign(np.maximum(seg, 1)), sample, start, seg, dropped, report

    def pack(self, table: LengthTable) -> PackPlan:
        bins, sample, start, seg, dropped, report = self.place(table)
        if self.shuffle and bins.size:
            relabel = rng_for(self.seed, 0, f"{self.name}.shuffle").permutation(int(bins.max()) + 1)
            bins = relabel[bins]
        return pack_plan_from_bins(
            bins,
            sample,
            start,
            seg,
            max_length=self.max_length,
            dropped=dropped,
            report={"packer": self.name, **report},
            longest_first=not self.keeps_order,
        )
