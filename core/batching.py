"""Vectorized batching primitives shared by samplers and analysis, and integer dtypes.

Bucket edges are inclusive upper bounds: with edges ``(256, 1024)`` bucket 0
holds lengths ``<= 256``, bucket 1 lengths in ``(256, 1024]`` and bucket 2
(the overflow bucket) everything longer.

The narrowest-dtype choices live here, once: :func:`smallest_uint` (sort
keys, stored plan columns through :func:`narrowest`) and
:func:`smallest_int` (token columns: int32 unless a value needs int64).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = [
    "cut_descending",
    "narrowest",
    "padding_to_edges",
    "smallest_int",
    "smallest_uint",
    "suggest_bucket_edges",
]


def smallest_uint(max_value: int) -> type[np.unsignedinteger]:
    """The narrowest unsigned dtype holding ``max_value``: numpy radix-sorts <= 16 bits."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def smallest_int(*values: int) -> np.dtype[np.signedinteger]:
    """``int32`` when every value fits it, else ``int64``: the token columns' dtype.

    Narrower types are not offered: ``position_ids`` reach the row length and
    frameworks index embeddings with 32 or 64 bits.
    """
    info = np.iinfo(np.int32)
    if all(info.min <= v <= info.max for v in values):
        return np.dtype(np.int32)
    return np.dtype(np.int64)


def narrowest(values: np.ndarray) -> np.ndarray:
    """Non-negative integers in the narrowest unsigned dtype (smaller files).

    Values with a negative one are returned as int64 instead.
    """
    values = np.asarray(values)
    top = int(values.max(initial=0))
    if values.size and int(values.min()) < 0:
        return values.astype(np.int64)
    return values.astype(smallest_uint(top))


def padding_to_edges(lengths: np.ndarray, edges: np.ndarray | tuple[int, ...]) -> int:
    """Padding tokens if every sample is padded to its bucket's upper edge."""
    edges_array = np.asarray(edges, dtype=np.int64)
    buckets = np.searchsorted(edges_array, lengths, side="left")
    inside = buckets < edges_array.size
    return int((edges_array[buckets[inside]] - lengths[inside]).sum())


def suggest_bucket_edges(
    lengths: np.ndarray, num_buckets: int, *, max_bins: int = 4096
) -> np.ndarray:
    """Upper edges of ``num_buckets`` buckets that minimise padding to the bucket edge.

    Exact dynamic programming over the length histogram: with at most
    ``max_bins`` distinct lengths every distinct length is a candidate edge;
    with more, lengths are grouped into ``max_bins`` equal-width bins whose
    upper ends are the candidates (and the DP is exact over those). The last
    edge is always the longest length. Cost: O(num_buckets * bins * log(bins))
    (the padding cost is Monge: see :func:`_layer`).
    """
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        return np.zeros(0, dtype=np.int64)
    if int(lengths.min()) >= 0 and int(lengths.max()) < (1 << 24):
        dense = np.bincount(lengths)  # O(n), no sort
        values = np.flatnonzero(dense)
        counts = dense[values]
    else:
        values, counts = np.unique(lengths, return_counts=True)
    sums = values * counts
    if values.size > max_bins:
        lo, hi = int(values[0]), int(values[-1])
        width = -(-(hi - lo + 1) // max_bins)
        bin_of = (values - lo) // width
        uppers = np.minimum(lo + (np.arange(max_bins) + 1) * width - 1, hi)
        counts = np.bincount(bin_of, weights=counts, minlength=max_bins).astype(np.int64)
        sums = np.bincount(bin_of, weights=sums, minlength=max_bins).astype(np.int64)
        keep = counts > 0
        values, counts, sums = uppers[keep], counts[keep], sums[keep]
    v = values.size
    if num_buckets >= v:
        return values.astype(np.int64)
    cum_count = np.concatenate([[0], np.cumsum(counts)])
    cum_sum = np.concatenate([[0], np.cumsum(sums)])
    # best[j]: least padding covering candidates 0..j with m buckets, the last ending at j.
    # cost(i..j) = values[j] * count(i..j) - sum(i..j).
    best = values * cum_count[1:] - cum_sum[1:]
    choices = []
    cc = cum_count.astype(np.float64)
    cs = cum_sum.astype(np.float64)
    fv = values.astype(np.float64)
    for _ in range(1, num_buckets):
        prev = best.astype(np.float64)
        low, pick = _layer(prev, fv, cc, cs)
        better = low < prev
        best = np.where(better, low, prev)
        choices.append(np.where(better, pick, -1))
    edges = [v - 1]
    j = v - 1
    for arg in reversed(choices):
        if arg[j] < 0:
            continue
        j = int(arg[j])
        edges.append(j)
    return values[np.asarray(sorted(set(edges)), dtype=np.int64)].astype(np.int64)


def _layer(
    prev: np.ndarray, fv: np.ndarray, cc: np.ndarray, cs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One more bucket: ``min over k < j of prev[k] + cost(k+1..j)`` for every ``j``, and its k.

    The cost is Monge (``cost(a,d) + cost(b,c) - cost(a,c) - cost(b,d) =
    (values[d] - values[c]) * count(a..b-1) >= 0``), so the leftmost best
    ``k`` never decreases with ``j``: divide and conquer finds every row's in
    O(v log v) cells instead of O(v²), one vectorized step per level for all
    the rows of that level.
    """
    v = prev.size
    low = np.full(v, np.inf)
    pick = np.full(v, -1, dtype=np.int64)
    # Open problems: rows [jlo, jhi) whose best k lies in [klo, khi].
    jlo, jhi = np.array([1]), np.array([v])
    klo, khi = np.array([0]), np.array([v - 2])
    while jlo.size:
        mid = (jlo + jhi) // 2
        kmax = np.minimum(khi, mid - 1)
        counts = kmax - klo + 1
        starts = np.zeros(counts.size, dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        k = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts - klo, counts)
        j = np.repeat(mid, counts)
        cost = prev[k] + fv[j] * (cc[j + 1] - cc[k + 1]) - (cs[j + 1] - cs[k + 1])
        least = np.minimum.reduceat(cost, starts)
        hits = np.flatnonzero(cost == np.repeat(least, counts))
        best_k = k[hits[np.searchsorted(hits, starts)]]  # the leftmost best of each row
        low[mid], pick[mid] = least, best_k
        left = mid > jlo
        right = mid + 1 < jhi
        jlo, jhi = (
            np.concatenate([jlo[left], mid[right] + 1]),
            np.concatenate([mid[left], jhi[right]]),
        )
        klo = np.concatenate([klo[left], best_k[right]])
        khi = np.concatenate([best_k[left], khi[right]])
    return low, pick


def cut_descending(
    lengths_desc: np.ndarray,
    segment_bounds: np.ndarray,
    token_budget: int,
    *,
    quadratic: bool = False,
    max_batch_size: int | None = None,
    phase: np.ndarray | None = None,
    nearly: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy batch starts over lengths sorted descending inside segments.

    ``segment_bounds`` are the segment boundaries (``[0, ..., n]``); batches never
    cross them. A batch starting at ``i`` is padded to ``lengths_desc[i]`` (its
    longest) and takes as many following samples as the budget allows
    (``size * max_length <= budget``, or ``size * max_length**2`` when
    ``quadratic``). A sample over the budget alone still gets a batch of one.
    The loop runs once per batch, never per sample.

    :param phase: one number in ``[0, 1)`` per segment, shifting where its cuts
        fall: its first batch takes ``ceil(phase * size)`` samples, so every
        later cut moves. Random phases make batch composition vary across
        epochs even where the sorted order is the same.
    :param nearly: one bool per segment: its lengths are only nearly sorted
        (a sample may stand a few places below a shorter one), so a batch is
        padded to its longest sample wherever it stands, and takes fewer
        samples where that one needs it.
    """
    n = lengths_desc.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    longest = int(lengths_desc.max())
    sizes = _batch_sizes(longest, token_budget, quadratic, max_batch_size)
    size_of = sizes.tolist()
    lengths = np.ascontiguousarray(lengths_desc, dtype=np.int64)
    length_at = lengths.data  # memoryview: fast scalar reads in the loop
    starts: list[int] = []
    bounds = np.asarray(segment_bounds, dtype=np.int64).tolist()
    segments = len(bounds) - 1
    firsts = [0.0] * segments if phase is None else np.asarray(phase).tolist()
    unsorted = [False] * segments if nearly is None else np.asarray(nearly, dtype=bool).tolist()
    for (a, b), first, loose in zip(itertools.pairwise(bounds), firsts, unsorted, strict=True):
        if loose:
            _cut_nearly(lengths[a:b].tolist(), a, size_of, first, starts)
            continue
        i = a
        if first and i < b:  # a first batch of ceil(phase * size): every later cut moves
            starts.append(i)
            i += max(math.ceil(first * size_of[length_at[i]]), 1)
        while i < b:
            starts.append(i)
            i += size_of[length_at[i]]
    return np.asarray(starts, dtype=np.int64)


def _batch_sizes(
    longest: int, token_budget: int, quadratic: bool, max_batch_size: int | None
) -> np.ndarray:
    """The most samples a batch padded to each length ``0..longest`` holds within the budget."""
    cost = np.maximum(np.arange(longest + 1, dtype=np.int64), 1)
    if quadratic:
        cost = cost * cost
    sizes: np.ndarray = np.maximum(token_budget // cost, 1)
    if max_batch_size is not None:
        np.minimum(sizes, max_batch_size, out=sizes)
    return sizes


def _cut_nearly(
    lengths: list[int], offset: int, size_of: list[int], first: float, starts: list[int]
) -> None:
    """Greedy starts over nearly sorted ``lengths``: each batch padded to its own longest."""
    i, n = 0, len(lengths)
    while i < n:
        take = size_of[lengths[i]]
        if first:  # the phase's first batch: ceil(phase * size) samples
            take, first = max(math.ceil(first * take), 1), 0.0
        longest = max(lengths[i : i + take])
        while take > 1 and size_of[longest] < take:  # a longer sample stands inside
            take = size_of[longest]
            longest = max(lengths[i : i + take])
        starts.append(offset + i)
        i += take
