"""Packing primitives: segments from an overflow policy, and best-fit decreasing.

A *segment* is a run of one sample's tokens: ``(sample, start, length)``. A
sample that fits ``max_length`` is one segment; the ``split`` policy cuts a
longer one into several, so no token is lost.
"""

from __future__ import annotations

import numpy as np

from laden.errors import DataError
from laden.records import PackPlan

__all__ = ["best_fit_decreasing", "pack_plan_from_bins", "segments_for"]


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


def best_fit_decreasing(seg_lengths: np.ndarray, capacity: int) -> np.ndarray:
    """The bin of each item under best-fit decreasing (exact), without a loop per item.

    Items are taken longest first; each goes to the bin with the least room
    that still fits it, a new bin if none does. Items of equal length are
    placed as a group: best fit keeps filling the bin it just used while it
    fits, so each bin of remaining room ``r`` takes ``r // L`` of them. Bins are
    kept by remaining room, so the work is per (length value, room class), not
    per item. Every length must be in ``1..capacity``.
    """
    n = seg_lengths.size
    bins_of_sorted = np.empty(n, dtype=np.int64)
    if n == 0:
        return bins_of_sorted
    order = np.argsort(-seg_lengths, kind="stable")
    sorted_lengths = seg_lengths[order]
    values, first = np.unique(-sorted_lengths, return_index=True)
    bounds = [*first.tolist(), n]
    by_room: list[list[int]] = [[] for _ in range(capacity + 1)]
    nonempty = np.zeros(capacity + 1, dtype=bool)
    next_bin = 0

    def move(bins: list[int], room: int) -> None:
        if bins:
            by_room[room].extend(bins)
            nonempty[room] = True

    for g, neg_length in enumerate(values.tolist()):
        length = -neg_length
        pos, end = bounds[g], bounds[g + 1]
        while pos < end:
            count = end - pos
            hit = int(np.argmax(nonempty[length:]))
            room = length + hit
            if not nonempty[room]:  # no open bin fits: open new ones
                per = capacity // length
                opened = -(-count // per)
                ids = np.arange(next_bin, next_bin + opened, dtype=np.int64)
                bins_of_sorted[pos:end] = np.repeat(ids, per)[:count]
                rem = count - (opened - 1) * per
                move(ids[:-1].tolist(), capacity - per * length)
                move([next_bin + opened - 1], capacity - rem * length)
                next_bin += opened
                pos = end
                break
            bins = by_room[room]
            per = room // length
            take = min(count, len(bins) * per)
            full, rem = divmod(take, per)
            used = bins[len(bins) - full - (1 if rem else 0) :]
            del bins[len(bins) - len(used) :]
            if not bins:
                nonempty[room] = False
            ids = np.asarray(used, dtype=np.int64)
            bins_of_sorted[pos : pos + take] = np.repeat(ids, per)[:take]
            if rem:
                move(used[:-1], room - per * length)
                move(used[-1:], room - rem * length)
            else:
                move(used, room - per * length)
            pos += take
    bin_of = np.empty(n, dtype=np.int64)
    bin_of[order] = bins_of_sorted
    return bin_of


def pack_plan_from_bins(
    bins: np.ndarray,
    sample: np.ndarray,
    start: np.ndarray,
    seg: np.ndarray,
    *,
    max_length: int,
    dropped: np.ndarray,
    report: dict[str, object],
) -> PackPlan:
    """A PackPlan from each segment's bin: packs in bin order, segments longest first."""
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
    place = np.lexsort((-seg, bins))
    counts = np.bincount(bins)
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return PackPlan(
        order=sample[place],
        offsets=offsets,
        seg_length=seg[place],
        seg_start=start[place],
        max_length=max_length,
        dropped=dropped,
        report=report,
    )
