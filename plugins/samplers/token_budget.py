"""``token_budget``: batches by token count, with length bucketing."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.batching import cut_descending, smallest_uint, suggest_bucket_edges
from laden.errors import ConfigError, DataError
from laden.hookspecs import hookimpl
from laden.records import EpochPlan, LengthTable, offsets_from_sizes
from laden.registry import Registry
from laden.seeding import rng_for
from laden.validators import increasing, one_of, optional, positive


def _gather_segments(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Indices ``starts[0]..+sizes[0], starts[1]..`` concatenated, without a Python loop."""
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    out_starts = np.cumsum(sizes) - sizes
    gathered: np.ndarray = np.arange(total, dtype=np.int64) - np.repeat(out_starts - starts, sizes)
    return gathered


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
        """The bucket edges used for these (effective) lengths."""
        if self.bucket_edges:
            return np.asarray(self.bucket_edges, dtype=np.int64)
        if self.num_buckets is not None:
            return suggest_bucket_edges(lengths, self.num_buckets)
        return np.zeros(0, dtype=np.int64)

    def _sorted_pools(
        self,
        eff: np.ndarray,
        bucket_of: np.ndarray,
        num_buckets: int,
        seed: int,
        epoch: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Order samples by (pool, length descending, random); pools are random inside buckets.

        Returns positions into ``eff`` in that order, the lengths in that order,
        the pool boundaries and each pool's bucket. The composite key and the
        position are packed into one uint64, so one SIMD value sort does the work
        of a lexsort with no gathers.
        """
        n = eff.size
        counts = np.bincount(bucket_of, minlength=num_buckets)
        if self.shuffle:
            rng = rng_for(seed, epoch, "token_budget.shuffle")
            pools_in = np.maximum(-(-counts // self.pool_size), 1).astype(np.uint64)
            pool_base = np.concatenate([[0], np.cumsum(pools_in)[:-1]]).astype(np.uint64)
            # pool = base[bucket] + floor(u32 * pools_in[bucket] / 2**32): uniform over the
            # bucket's pools, so each pool holds about pool_size random samples.
            key = rng.integers(0, 1 << 32, size=n, dtype=np.uint64)
            key *= np.take(pools_in, bucket_of)
            key >>= np.uint64(32)
            key += np.take(pool_base, bucket_of)
            num_pools = int(pools_in.sum())
            pool_bucket = np.repeat(np.arange(num_buckets), pools_in.astype(np.int64))
        else:
            rng = None
            key = bucket_of.astype(np.uint64)
            num_pools = num_buckets
            pool_bucket = np.arange(num_buckets)
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
            return position, eff[position], pool_bounds, pool_bucket
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
        return position, sorted_eff, pool_bounds, pool_bucket

    def plan_epoch(self, table: LengthTable, *, epoch: int = 0, seed: int = 0) -> EpochPlan:
        lengths = table.length
        n = lengths.size
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
        if dropped.size or alone.size:
            active = np.ones(n, dtype=bool)
            active[over] = False
            index = np.flatnonzero(active)
        else:
            index = np.arange(n, dtype=np.int64)

        # Buckets.
        active_eff = effective if index.size == n else effective[index]
        if self.bucket_by == "key":
            if table.key is None:
                raise ConfigError(
                    "bucket_by = 'key' needs a length table with a key column",
                    path=("bucket_by",),
                )
            keys = table.key if index.size == n else table.key[index]
            edges, bucket_of = np.unique(keys, return_inverse=True)
            bucket_of = bucket_of.reshape(-1)
            num_buckets = edges.size
        else:
            edges = self.edges_for(active_eff)
            # Bucket by lookup table: lengths are small integers.
            longest = int(active_eff.max(initial=0))
            lut = np.searchsorted(edges, np.arange(longest + 1), side="left")
            bucket_of = lut.astype(smallest_uint(edges.size))[active_eff]
            num_buckets = edges.size + 1
        position, eff, pool_bounds, pool_bucket = self._sorted_pools(
            active_eff, bucket_of, num_buckets, seed, epoch
        )
        order = position if index.size == n else index[position]
        starts = cut_descending(
            eff,
            pool_bounds,
            self.token_budget,
            quadratic=self.cost == "quadratic",
            max_batch_size=self.max_batch_size,
        )
        sizes = np.diff(np.append(starts, order.size))
        max_length = eff[starts]
        pool_of_start = np.searchsorted(pool_bounds, starts, side="right") - 1
        bucket = pool_bucket[pool_of_start].astype(np.int32)

        if alone.size:
            starts = np.append(starts, order.size + np.arange(alone.size))
            sizes = np.append(sizes, np.ones(alone.size, dtype=np.int64))
            max_length = np.append(max_length, lengths[alone])
            bucket = np.append(bucket, np.full(alone.size, -1, dtype=np.int32))
            order = np.append(order, alone)

        if self.shuffle and sizes.size:
            shuffle = rng_for(seed, epoch, "token_budget.batches").permutation(sizes.size)
            order = order[_gather_segments(starts[shuffle], sizes[shuffle])]
            sizes, max_length, bucket = sizes[shuffle], max_length[shuffle], bucket[shuffle]

        offsets = offsets_from_sizes(sizes)
        report: dict[str, Any] = {
            "sampler": self.name,
            "bucket_edges": edges.tolist() if self.bucket_by == "length" else [],
            "bucket_keys": edges.tolist() if self.bucket_by == "key" else [],
            "overflow": self.overflow,
            "dropped": {"overflow": int(dropped.size)},
            "truncated": int(truncated.size),
            "alone": int(alone.size),
        }
        return EpochPlan(
            order=order,
            offsets=offsets,
            max_length=max_length,
            bucket=bucket,
            epoch=epoch,
            seed=seed,
            dropped=dropped,
            truncated=truncated,
            report=report,
        )


@hookimpl
def laden_register_samplers(registry: Registry) -> None:
    registry.add(TokenBudgetSampler)
