"""``token_budget``: batches by token count, with length bucketing."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any, ClassVar, NamedTuple

import attrs
import numpy as np

from laden.batching import cut_descending, smallest_uint, suggest_bucket_edges
from laden.digest import array_digest
from laden.errors import ConfigError, DataError
from laden.hookspecs import hookimpl
from laden.records import EpochPlan, LengthTable, csr_take, offsets_from_sizes
from laden.registry import Registry
from laden.seeding import rng_for
from laden.validators import increasing, one_of, optional, positive


class _Overflow(NamedTuple):
    """What the overflow policy did: the samples it set apart, and what is batched."""

    dropped: np.ndarray
    truncated: np.ndarray
    alone: np.ndarray
    #: Lengths as batched (cut to the budget under ``truncate``), every sample.
    effective: np.ndarray
    #: The samples batched by bucket (all but the dropped and the alone ones); None: all.
    kept: np.ndarray | None


class _Batches(NamedTuple):
    """Batches under construction: ``order`` cut into runs of ``sizes``."""

    order: np.ndarray
    sizes: np.ndarray
    max_length: np.ndarray
    bucket: np.ndarray


@attrs.frozen(kw_only=True)
class TokenBudgetSampler:
    """Batches whose padded cost stays within ``token_budget``.

    A batch's cost is ``batch_size * max_length`` (padding counts), or
    ``batch_size * max_length**2`` with ``cost = "quadratic"`` for
    attention-bound models (then ``token_budget`` is in tokens²).

    Samples are grouped into buckets (by ``bucket_edges``, by ``num_buckets``
    edges chosen to minimise padding, or by the table's ``key`` column with
    ``bucket_by = "key"``). Inside a bucket the order is shuffled, then pools of
    ``pool_size`` samples are sorted by length and cut greedily, so batches are
    both random and tight; finally batch order is shuffled. All randomness
    derives from ``(seed, epoch)``.

    With ``vary_batches`` (the default) batch composition changes from epoch
    to epoch in small buckets too. A bucket held in one pool whose lengths
    seldom repeat (ties, broken at random, vary batches already) is sorted,
    then every sample's place gets a random addition of under 8 places, so
    neighbours trade batches while each batch stays padded to about its sorted
    length; and each pool's first cut falls at a random fraction of a batch,
    moving every later cut. On 73k long-tailed lengths 0.2-0.3% of an epoch's
    batches repeat a batch of another epoch (11% without) for under 0.001 of
    padding efficiency; on 3,000 to 5,000 samples, where every bucket is small,
    0.1-1% for 0.002 to 0.009. ``vary_batches = false`` gives the batches of
    the sorted cut.

    :param overflow: a sample whose cost alone exceeds the budget: ``error``,
        ``drop`` (reported in ``plan.dropped``), ``truncate`` (kept, cut to the
        budget, reported in ``plan.truncated``) or ``alone`` (a batch of its
        own, over budget, bucket ``-1``).
    """

    name: ClassVar[str] = "token_budget"

    token_budget: int = attrs.field(validator=positive)
    cost: str = attrs.field(default="linear", validator=one_of("linear", "quadratic"))
    bucket_edges: tuple[int, ...] = attrs.field(
        default=(), converter=tuple, validator=increasing(minimum=1)
    )
    num_buckets: int | None = attrs.field(default=None, validator=optional(positive))
    bucket_by: str = attrs.field(default="length", validator=one_of("length", "key"))
    max_batch_size: int | None = attrs.field(default=None, validator=optional(positive))
    shuffle: bool = True
    pool_size: int = attrs.field(default=16384, validator=positive)
    overflow: str = attrs.field(
        default="error", validator=one_of("error", "drop", "truncate", "alone")
    )
    vary_batches: bool = True

    def __attrs_post_init__(self) -> None:
        if self.bucket_edges and self.num_buckets is not None:
            raise ConfigError("give bucket_edges or num_buckets, not both", path=("num_buckets",))
        if self.bucket_by == "key" and (self.bucket_edges or self.num_buckets is not None):
            raise ConfigError(
                "bucket_by = 'key' takes its buckets from the key column; drop "
                "bucket_edges and num_buckets",
                path=("bucket_by",),
            )

    @property
    def max_sample_length(self) -> int:
        """The longest sample that fits the budget alone."""
        if self.cost == "quadratic":
            return math.isqrt(self.token_budget)
        return self.token_budget

    def edges_for(self, lengths: np.ndarray) -> np.ndarray:
        """The bucket edges used for these (effective) lengths.

        With ``num_buckets`` the edge search runs once per length column: the
        edges depend on the lengths alone, so every epoch of a plan reuses
        them (each epoch's report records them).
        """
        if self.bucket_edges:
            return np.asarray(self.bucket_edges, dtype=np.int64)
        if self.num_buckets is not None:
            return _cached_edges(lengths, self.num_buckets)
        return np.zeros(0, dtype=np.int64)

    def plan_epoch(self, table: LengthTable, *, epoch: int = 0, seed: int = 0) -> EpochPlan:
        over = self._apply_overflow(table.length)
        lengths = over.effective if over.kept is None else over.effective[over.kept]
        edges, bucket_of, num_buckets = self._buckets(table, over.kept, lengths)
        batches = self._cut_pools(lengths, over.kept, bucket_of, num_buckets, seed, epoch)
        batches = _add_alone(batches, over.alone, table.length)
        if self.shuffle:
            batches = _shuffle_batches(batches, seed, epoch)
        return EpochPlan(
            order=batches.order,
            offsets=offsets_from_sizes(batches.sizes),
            max_length=batches.max_length,
            bucket=batches.bucket,
            epoch=epoch,
            seed=seed,
            dropped=over.dropped,
            truncated=over.truncated,
            report=self._report(edges, over),
        )

    def _apply_overflow(self, lengths: np.ndarray) -> _Overflow:
        """Apply the overflow policy to the samples longer than the budget allows."""
        limit = self.max_sample_length
        over = np.flatnonzero(lengths > limit)
        dropped = truncated = alone = np.zeros(0, dtype=np.int64)
        effective = lengths
        if over.size:
            if self.overflow == "error":
                first = int(over[0])
                raise DataError(
                    f"{over.size} sample(s) are longer than the token budget allows "
                    f"({limit} tokens); the first is sample {first} with "
                    f"{int(lengths[first])} tokens. Set the sampler's overflow to "
                    "'drop', 'truncate' or 'alone'"
                )
            if self.overflow == "drop":
                dropped = over
            elif self.overflow == "alone":
                alone = over
            else:
                truncated = over
                effective = np.minimum(lengths, limit)
        kept = None
        if dropped.size or alone.size:
            active = np.ones(lengths.size, dtype=bool)
            active[over] = False
            kept = np.flatnonzero(active)
        return _Overflow(dropped, truncated, alone, effective, kept)

    def _buckets(
        self, table: LengthTable, kept: np.ndarray | None, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """``(edges or keys, bucket of each batched sample, number of buckets)``."""
        if self.bucket_by == "key":
            if table.key is None:
                raise ConfigError(
                    "bucket_by = 'key' needs a length table with a key column",
                    path=("bucket_by",),
                )
            keys = table.key if kept is None else table.key[kept]
            edges, bucket_of = np.unique(keys, return_inverse=True)
            return edges, bucket_of.reshape(-1), int(edges.size)
        edges = self.edges_for(lengths)
        # Bucket by lookup table: lengths are small integers.
        longest = int(lengths.max(initial=0))
        lut = np.searchsorted(edges, np.arange(longest + 1), side="left")
        return edges, lut.astype(smallest_uint(edges.size))[lengths], int(edges.size) + 1

    def _cut_pools(
        self,
        lengths: np.ndarray,
        kept: np.ndarray | None,
        bucket_of: np.ndarray,
        num_buckets: int,
        seed: int,
        epoch: int,
    ) -> _Batches:
        """Sort each pool by length and cut it greedily into batches within the budget."""
        position, eff, pool_bounds, pool_bucket, nearly = self._sorted_pools(
            lengths, bucket_of, num_buckets, seed, epoch
        )
        order = position if kept is None else kept[position]
        phase = None
        if self.shuffle and self.vary_batches:
            phase = rng_for(seed, epoch, "token_budget.cuts").random(pool_bounds.size - 1)
        starts = cut_descending(
            eff,
            pool_bounds,
            self.token_budget,
            quadratic=self.cost == "quadratic",
            max_batch_size=self.max_batch_size,
            phase=phase,
            nearly=nearly,
        )
        pool_of_start = np.searchsorted(pool_bounds, starts, side="right") - 1
        # A nearly sorted pool's batch is padded to its longest, wherever that stands.
        longest = eff[starts] if nearly is None else np.maximum.reduceat(eff, starts)
        return _Batches(
            order=order,
            sizes=np.diff(np.append(starts, order.size)),
            max_length=longest,
            bucket=pool_bucket[pool_of_start].astype(np.int32),
        )

    def _sorted_pools(
        self,
        eff: np.ndarray,
        bucket_of: np.ndarray,
        num_buckets: int,
        seed: int,
        epoch: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Order samples by (pool, length descending, random); pools are random inside buckets.

        Returns positions into ``eff`` in that order, the lengths in that order,
        the pool boundaries, each pool's bucket and which pools are only nearly
        sorted (None: none is; see :meth:`_jitter`).
        """
        rng = rng_for(seed, epoch, "token_budget.shuffle") if self.shuffle else None
        key, num_pools, pool_bucket, vary = self._pool_keys(eff, bucket_of, num_buckets, rng)
        position, sorted_eff, pool_bounds = self._sort_pools(eff, key, num_pools, rng)
        nearly = None
        if vary is not None and vary.any():
            nearly = vary
            jitter = rng_for(seed, epoch, "token_budget.jitter")
            self._jitter(position, sorted_eff, pool_bounds, vary, jitter)
        return position, sorted_eff, pool_bounds, pool_bucket, nearly

    def _sort_pools(
        self, eff: np.ndarray, key: np.ndarray, num_pools: int, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions into ``eff`` sorted by (pool, length descending, random), their lengths
        and the pool boundaries.

        The composite key and the position are packed into one uint64, so one
        SIMD value sort does the work of a lexsort with no gathers.
        """
        n = eff.size
        longest = int(eff.max(initial=0))
        idx_bits = max(int(n - 1).bit_length(), 1)
        len_bits = max(longest.bit_length(), 1)
        pool_bits = max(int(num_pools - 1).bit_length(), 1)
        rand_bits = 64 - idx_bits - len_bits - pool_bits
        if rand_bits < 0:  # too wide to pack: the same order through lexsort
            tiebreak = rng.random(n) if rng is not None else np.zeros(n)
            position = np.lexsort((tiebreak, longest - eff, key))
            sorted_pool = key[position]
            pool_bounds = np.searchsorted(sorted_pool, np.arange(num_pools + 1, dtype=np.uint64))
            return position, eff[position], pool_bounds
        key <<= np.uint64(len_bits)
        key |= (longest - eff).astype(np.uint64)
        if rand_bits:
            key <<= np.uint64(rand_bits)
            if rng is not None:
                key |= rng.integers(0, 1 << rand_bits, size=n, dtype=np.uint64)
        key <<= np.uint64(idx_bits)
        key |= np.arange(n, dtype=np.uint64)
        key.sort()
        position = (key & np.uint64((1 << idx_bits) - 1)).astype(np.int64)
        key >>= np.uint64(idx_bits + rand_bits)
        sorted_eff = np.int64(longest) - (key & np.uint64((1 << len_bits) - 1)).astype(np.int64)
        key >>= np.uint64(len_bits)
        pool_bounds = np.searchsorted(key, np.arange(num_pools + 1, dtype=np.uint64))
        return position, sorted_eff, pool_bounds

    def _jitter(
        self,
        position: np.ndarray,
        sorted_eff: np.ndarray,
        pool_bounds: np.ndarray,
        vary: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        """Move each sample of the ``vary`` pools a few random places down its sorted pool.

        The sample at place ``i`` gets the key ``i + u * _JITTER_PLACES``, ``u``
        uniform: neighbours trade batches, and a batch is still padded to about
        what the sorted cut pads it to (a sample ends fewer than
        ``_JITTER_PLACES`` places from where the sort put it). In place.
        """
        counts = np.diff(pool_bounds)
        slots = np.flatnonzero(np.repeat(vary, counts))
        key = slots + rng.random(slots.size) * _JITTER_PLACES
        pool = np.repeat(np.arange(counts.size), counts)[slots]
        moved = slots[np.lexsort((key, pool))]
        position[slots] = position[moved]
        sorted_eff[slots] = sorted_eff[moved]

    def _pool_keys(
        self,
        eff: np.ndarray,
        bucket_of: np.ndarray,
        num_buckets: int,
        rng: np.random.Generator | None,
    ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray | None]:
        """The pool of each sample (uint64), the number of pools, each pool's bucket,
        and which pools ``vary_batches`` jitters (None: no jitter).

        Shuffled, a bucket of ``c`` samples has ``ceil(c / pool_size)`` pools and
        each sample goes to one of them at random; unshuffled, a pool is a bucket.
        """
        if rng is None:
            return bucket_of.astype(np.uint64), num_buckets, np.arange(num_buckets), None
        counts = np.bincount(bucket_of, minlength=num_buckets)
        pools_in = np.maximum(-(-counts // self.pool_size), 1)
        vary = None
        if self.vary_batches:
            # One pool of a bucket, sorted, gives the same batches every epoch, unless
            # its lengths repeat more often than a batch holds samples (ties, broken at
            # random, vary the batches then). Several random pools vary them already.
            cost = eff.astype(np.float64)
            if self.cost == "quadratic":
                cost *= cost
            weight = np.bincount(bucket_of, weights=cost, minlength=num_buckets)
            batches = weight / self.token_budget  # about, by tokens
            few_ties = _distinct_lengths(eff, bucket_of, num_buckets) * _TIES > batches
            vary = np.repeat((pools_in == 1) & few_ties & (counts > 1), pools_in)
        pools_in = pools_in.astype(np.uint64)
        pool_base = np.concatenate([[0], np.cumsum(pools_in)[:-1]]).astype(np.uint64)
        # pool = base[bucket] + floor(u32 * pools_in[bucket] / 2**32): uniform over the
        # bucket's pools, so each pool holds about pool_size random samples.
        key = rng.integers(0, 1 << 32, size=bucket_of.size, dtype=np.uint64)
        key *= np.take(pools_in, bucket_of)
        key >>= np.uint64(32)
        key += np.take(pool_base, bucket_of)
        pool_bucket = np.repeat(np.arange(num_buckets), pools_in.astype(np.int64))
        return key, int(pools_in.sum()), pool_bucket, vary

    def _report(self, edges: np.ndarray, over: _Overflow) -> dict[str, Any]:
        return {
            "sampler": self.name,
            "bucket_edges": edges.tolist() if self.bucket_by == "length" else [],
            "bucket_keys": edges.tolist() if self.bucket_by == "key" else [],
            "overflow": self.overflow,
            "dropped": {"overflow": int(over.dropped.size)},
            "truncated": int(over.truncated.size),
            "alone": int(over.alone.size),
        }


#: vary_batches jitters a one-pool bucket with fewer than _TIES batches per distinct length.
_TIES = 1
#: How far vary_batches moves samples in a sorted pool: each one's place gets a uniform
#: random addition below this. A fixed number of places was tighter than a share of the
#: batch size (0.25 of it cost twice the efficiency on 5,000 samples for more repeats).
_JITTER_PLACES = 8


def _distinct_lengths(eff: np.ndarray, bucket_of: np.ndarray, num_buckets: int) -> np.ndarray:
    """The number of distinct lengths in each bucket."""
    width = int(eff.max(initial=0)) + 1
    if width * num_buckets <= 1 << 24:
        seen = np.bincount(bucket_of.astype(np.int64) * width + eff, minlength=width * num_buckets)
        distinct: np.ndarray = np.count_nonzero(seen.reshape(num_buckets, width), axis=1)
        return distinct
    pairs = np.unique(bucket_of.astype(np.int64) * width + eff)
    distinct = np.bincount(pairs // width, minlength=num_buckets)
    return distinct


#: Edges found by the search, by (digest of the lengths, num_buckets): the few last.
_EDGE_CACHE: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
_EDGE_CACHE_SIZE = 8


def _cached_edges(lengths: np.ndarray, num_buckets: int) -> np.ndarray:
    """:func:`suggest_bucket_edges`, computed once per length column and ``num_buckets``.

    The search (exact, O(num_buckets * v log v) over v distinct lengths) and
    the hash of the column each cost milliseconds per million lengths; the
    cache makes every epoch of a plan use the edges of the first, found once.
    """
    column = np.ascontiguousarray(lengths)
    key = (array_digest(column), num_buckets)
    with _EDGE_LOCK:
        cached = _EDGE_CACHE.get(key)
        if cached is not None:
            _EDGE_CACHE.move_to_end(key)
            hit: np.ndarray = cached.copy()
            return hit
    edges: np.ndarray = suggest_bucket_edges(column, num_buckets)
    with _EDGE_LOCK:
        _EDGE_CACHE[key] = edges
        while len(_EDGE_CACHE) > _EDGE_CACHE_SIZE:
            _EDGE_CACHE.popitem(last=False)
    out: np.ndarray = edges.copy()
    return out


_EDGE_LOCK = threading.Lock()


def _add_alone(batches: _Batches, alone: np.ndarray, lengths: np.ndarray) -> _Batches:
    """A batch of its own, in bucket ``-1``, for each sample over the budget."""
    if not alone.size:
        return batches
    return _Batches(
        order=np.append(batches.order, alone),
        sizes=np.append(batches.sizes, np.ones(alone.size, dtype=np.int64)),
        max_length=np.append(batches.max_length, lengths[alone]),
        bucket=np.append(batches.bucket, np.full(alone.size, -1, dtype=np.int32)),
    )


def _shuffle_batches(batches: _Batches, seed: int, epoch: int) -> _Batches:
    """The batches in a seeded random order (each batch's samples stay together)."""
    if not batches.sizes.size:
        return batches
    shuffle = rng_for(seed, epoch, "token_budget.batches").permutation(batches.sizes.size)
    where, _ = csr_take(offsets_from_sizes(batches.sizes), shuffle)
    return _Batches(
        order=batches.order[where],
        sizes=batches.sizes[shuffle],
        max_length=batches.max_length[shuffle],
        bucket=batches.bucket[shuffle],
    )


@hookimpl
def laden_register_samplers(registry: Registry) -> None:
    registry.add(TokenBudgetSampler)
