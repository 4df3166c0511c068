"""What the packers share: segments under an overflow policy, bins, the pack plan.

A *segment* is a run of one sample's tokens: ``(sample, start, length)``. A
sample that fits ``max_length`` is one segment; the ``split`` policy cuts a
longer one into several, so no token is lost. The algorithms themselves live
in the plugins that own them: ``best_fit``, ``first_fit``, ``sequential``
(``laden.plugins.packers.*``); a packer built on :class:`SegmentPacker` gives
only ``assign`` (the bin of each segment) or, to cut segments itself, ``place``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import attrs
import numpy as np

from laden.errors import DataError
from laden.records import LengthTable, PackPlan, offsets_from_sizes
from laden.seeding import rng_for
from laden.validators import at_least, one_of, optional, positive

__all__ = [
    "SegmentPacker",
    "open_bins",
    "pack_plan_from_bins",
    "place_decreasing",
    "segments_for",
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
    longest = int(seg_lengths.max()) if seg_lengths.size else 0
    if int(seg_lengths.min(initial=0)) >= 0 and longest <= np.iinfo(np.uint16).max:
        # the same order: numpy sorts 16-bit keys stably by radix sort (5x faster at 1M)
        order = np.argsort((longest - seg_lengths).astype(np.uint16), kind="stable")
    else:
        order = np.argsort(-seg_lengths, kind="stable")
    sorted_lengths = seg_lengths[order]
    values, first = np.unique(-sorted_lengths, return_index=True)
    return order, (-values).tolist(), [*first.tolist(), seg_lengths.size]


def _unsort(order: np.ndarray, values_of_sorted: np.ndarray) -> np.ndarray:
    """Values in input order, given them in the order ``order`` sorted the input."""
    out = np.empty_like(values_of_sorted)
    out[order] = values_of_sorted
    return out


def place_decreasing(
    seg_lengths: np.ndarray, place: Callable[[list[int], list[int]], np.ndarray]
) -> np.ndarray:
    """The bin of each item under a placement that takes items longest first, by length group.

    The shared frame of the decreasing packers (best fit, first fit): items are
    sorted longest first (stable) and grouped by equal length, so a placement
    works per distinct length, never per item.

    :param place: ``place(lengths, bounds)`` gets the distinct lengths, longest
        first, and the bounds of each group in the sorted items (group ``g`` is
        ``bounds[g]:bounds[g + 1]``); it returns the bin of each sorted item.
    :returns: the bin of each item, in input order.
    """
    if seg_lengths.size == 0:
        return np.empty(0, dtype=np.int64)
    order, lengths, bounds = _sorted_groups(seg_lengths)
    return _unsort(order, place(lengths, bounds))


def open_bins(
    count: int, length: int, capacity: int, cap: int, next_bin: int
) -> tuple[np.ndarray, int, int, int]:
    """New bins, numbered from ``next_bin``, for ``count`` items of ``length``.

    Each new bin takes as many items as fit its ``capacity``, at most ``cap``.

    :returns: the bin of each item, bins opened, items per full bin, items in the last.
    """
    per = min(capacity // length, cap)
    opened = -(-count // per)
    ids = np.arange(next_bin, next_bin + opened, dtype=np.int64)
    return np.repeat(ids, per)[:count], opened, per, count - (opened - 1) * per


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
    short = max_length <= np.iinfo(np.uint16).max and seg.min() >= 0 and seg.max() <= max_length
    if longest_first and short:
        # (bin, longest first) in two stable sorts: by length (a 16-bit key, which numpy
        # sorts by radix), then by bin (runs, as best fit fills bins): half the time at 1M
        by_length = np.argsort((max_length - seg).astype(np.uint16), kind="stable")
        place = by_length[np.argsort(bins[by_length], kind="stable")]
    elif longest_first:  # one stable sort on (bin, longest first): cheaper than a lexsort
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
