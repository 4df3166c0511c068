"""``depth_buckets``: batches that never mix depths (CompressedAD's staged samples).

The depth of a sample is the length table's ``key`` column (the staged HDF5
source records it; a table without one is a single depth 0). Inside a depth,
batches hold ``batch_size`` samples, or as many as ``token_budget`` allows,
counted over all of a sample's stages (``length`` is its total steps). All
randomness comes from ``(seed, epoch)`` through :func:`laden.seeding.rng_for`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import numpy as np

from laden.batching import cut_descending
from laden.errors import ConfigError, DataError
from laden.hookspecs import hookimpl
from laden.records import EpochPlan, LengthTable, csr_take, offsets_from_sizes
from laden.registry import Registry
from laden.seeding import rng_for
from laden.validators import one_of, optional, positive

__all__ = ["DepthBucketSampler"]


@attrs.frozen(kw_only=True)
class DepthBucketSampler:
    """One depth per batch; shuffled within depths and across batches.

    Give ``batch_size`` (fixed batches) or ``token_budget`` (a batch's cost is
    its size times its longest sample's steps over all stages; samples are
    sorted by length inside random pools of ``pool_size`` so batches are tight).

    :param drop_last: with ``batch_size``, leave out each depth's last, smaller
        batch (its samples go to ``plan.dropped``, counted per depth in the
        report); otherwise that batch is kept and counted as ``small_batches``.
    :param max_batch_size: with ``token_budget``, at most this many samples.
    :param overflow: with ``token_budget``, a sample longer than the budget:
        ``error``, ``drop`` (counted) or ``alone`` (a batch of its own, bucket ``-1``).
    """

    name: ClassVar[str] = "depth_buckets"

    batch_size: int | None = attrs.field(default=None, validator=optional(positive))
    token_budget: int | None = attrs.field(default=None, validator=optional(positive))
    max_batch_size: int | None = attrs.field(default=None, validator=optional(positive))
    shuffle: bool = True
    drop_last: bool = False
    pool_size: int = attrs.field(default=16384, validator=positive)
    overflow: str = attrs.field(default="error", validator=one_of("error", "drop", "alone"))

    def __attrs_post_init__(self) -> None:
        if (self.batch_size is None) == (self.token_budget is None):
            raise ConfigError("give batch_size or token_budget, exactly one", path=("batch_size",))
        if self.max_batch_size is not None and self.token_budget is None:
            raise ConfigError(
                "max_batch_size goes with token_budget; with batch_size it is batch_size",
                path=("max_batch_size",),
            )
        if self.drop_last and self.token_budget is not None:
            raise ConfigError(
                "drop_last goes with batch_size: token_budget batches have no fixed size",
                path=("drop_last",),
            )

    @property
    def max_sample_length(self) -> int | None:
        """The longest sample that fits the budget alone (None: no budget)."""
        return self.token_budget

    def plan_epoch(self, table: LengthTable, *, epoch: int = 0, seed: int = 0) -> EpochPlan:
        n = len(table)
        depth = table.key if table.key is not None else np.zeros(n, dtype=np.int64)
        if n and int(depth.min()) < 0:
            first = int(np.flatnonzero(depth < 0)[0])
            raise DataError(f"sample {first} has depth {int(depth[first])}; depths are >= 0")
        rng = rng_for(seed, epoch, "depth_buckets.shuffle") if self.shuffle else None
        dropped = alone = np.zeros(0, dtype=np.int64)
        if self.token_budget is not None:
            dropped, alone, kept = self._overflow(table.length)
            order, sizes = self._budget_batches(table.length, depth, kept, rng)
        else:
            order, sizes, dropped = self._fixed_batches(depth, rng)
        bucket = depth[order[offsets_from_sizes(sizes)[:-1]]] if sizes.size else sizes
        if alone.size:
            order = np.append(order, alone)
            sizes = np.append(sizes, np.ones(alone.size, dtype=np.int64))
            bucket = np.append(bucket, np.full(alone.size, -1, dtype=np.int64))
        if self.shuffle and sizes.size:
            shuffle = rng_for(seed, epoch, "depth_buckets.batches").permutation(sizes.size)
            where, _ = csr_take(offsets_from_sizes(sizes), shuffle)
            order, sizes, bucket = order[where], sizes[shuffle], bucket[shuffle]
        offsets = offsets_from_sizes(sizes)
        lengths = table.length[order]
        max_length = np.maximum.reduceat(lengths, offsets[:-1]) if sizes.size else lengths[:0]
        return EpochPlan(
            order=order,
            offsets=offsets,
            max_length=max_length,
            bucket=bucket,
            epoch=epoch,
            seed=seed,
            dropped=np.sort(dropped),
            report=self._report(depth, order, offsets, bucket, dropped, alone),
        )

    def _overflow(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(dropped, alone, kept)`` under the overflow policy."""
        assert self.token_budget is not None
        over = lengths > self.token_budget
        none = np.zeros(0, dtype=np.int64)
        if not over.any():
            return none, none, np.arange(lengths.size, dtype=np.int64)
        first = int(np.flatnonzero(over)[0])
        if self.overflow == "error":
            raise DataError(
                f"{int(over.sum())} sample(s) have more steps than token_budget "
                f"({self.token_budget}); the first is sample {first} with "
                f"{int(lengths[first])}. Set the sampler's overflow to 'drop' or 'alone'"
            )
        out = np.flatnonzero(over)
        kept = np.flatnonzero(~over)
        return (out, none, kept) if self.overflow == "drop" else (none, out, kept)

    def _fixed_batches(
        self, depth: np.ndarray, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples grouped by depth (random inside), cut into ``batch_size`` runs."""
        assert self.batch_size is not None
        n, size = depth.size, self.batch_size
        start = rng.permutation(n) if rng is not None else np.arange(n, dtype=np.int64)
        order = start[np.argsort(depth[start], kind="stable")]
        _, counts = np.unique(depth[order], return_counts=True)
        full, rest = counts // size, counts % size
        dropped = np.zeros(0, dtype=np.int64)
        if self.drop_last and rest.any():
            bucket_end = offsets_from_sizes(counts)[1:]
            tail = np.repeat(bucket_end - rest, rest) + (
                np.arange(int(rest.sum())) - np.repeat(offsets_from_sizes(rest)[:-1], rest)
            )
            keep = np.ones(n, dtype=bool)
            keep[tail] = False
            dropped, order = order[tail], order[keep]
            rest = np.zeros_like(rest)
        per_bucket = full + (rest > 0)
        sizes = np.full(int(per_bucket.sum()), size, dtype=np.int64)
        # The last batch of a depth with a remainder holds the remainder.
        last = offsets_from_sizes(per_bucket)[1:] - 1
        sizes[last[rest > 0]] = rest[rest > 0]
        return order, sizes, dropped

    def _budget_batches(
        self,
        lengths: np.ndarray,
        depth: np.ndarray,
        kept: np.ndarray,
        rng: np.random.Generator | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inside each depth, random pools sorted by length descending, cut greedily."""
        assert self.token_budget is not None
        d, eff = depth[kept], lengths[kept]
        k = kept.size
        shuffled = rng.permutation(k) if rng is not None else np.arange(k, dtype=np.int64)
        by_depth = shuffled[np.argsort(d[shuffled], kind="stable")]
        # The rank of each sample inside its depth, in random order: its pool.
        _, first, counts = np.unique(d[by_depth], return_index=True, return_counts=True)
        rank = np.arange(k) - np.repeat(first, counts)
        pool = np.empty(k, dtype=np.int64)
        pool[by_depth] = rank // self.pool_size
        tiebreak = np.empty(k, dtype=np.int64)
        tiebreak[by_depth] = np.arange(k)
        position = np.lexsort((tiebreak, -eff, pool, d))
        keys = d[position] * (int(pool.max(initial=0)) + 1) + pool[position]
        bounds = np.flatnonzero(np.diff(keys)) + 1 if k else np.zeros(0, dtype=np.int64)
        segments = np.concatenate([[0], bounds, [k]]).astype(np.int64)
        starts = cut_descending(
            eff[position], segments, self.token_budget, max_batch_size=self.max_batch_size
        )
        sizes = np.diff(np.append(starts, k)).astype(np.int64)
        return kept[position], sizes

    def _report(
        self,
        depth: np.ndarray,
        order: np.ndarray,
        offsets: np.ndarray,
        bucket: np.ndarray,
        dropped: np.ndarray,
        alone: np.ndarray,
    ) -> dict[str, Any]:
        sizes = np.diff(offsets)
        depths: dict[str, Any] = {}
        for value in np.unique(depth).tolist():
            mine = bucket == value
            depths[str(value)] = {
                "samples": int((depth == value).sum()),
                "batches": int(mine.sum()),
                "dropped": int((depth[dropped] == value).sum()),
            }
        small = 0
        if self.batch_size is not None:
            small = int((sizes < self.batch_size).sum())
        policy = "drop_last" if self.batch_size is not None else "overflow"
        return {
            "sampler": self.name,
            "depths": depths,
            "small_batches": small,
            "alone": int(alone.size),
            "dropped": {policy: int(dropped.size)},
        }


@hookimpl
def laden_register_samplers(registry: Registry) -> None:
    registry.add(DepthBucketSampler)
