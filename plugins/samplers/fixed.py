"""``fixed``: a fixed number of samples per batch, optionally shuffled."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from laden.hookspecs import hookimpl
from laden.records import EpochPlan, LengthTable
from laden.registry import Registry
from laden.seeding import rng_for
from laden.validators import positive


@attrs.frozen(kw_only=True)
class FixedSampler:
    """``batch_size`` samples per batch, padded to the longest in the batch.

    :param batch_size: samples per batch.
    :param shuffle: a new seeded order every epoch; otherwise dataset order.
    :param drop_last: leave out a last, smaller batch (its samples are reported
        in ``plan.dropped``).
    """

    name: ClassVar[str] = "fixed"

    batch_size: int = attrs.field(validator=positive)
    shuffle: bool = True
    drop_last: bool = False

    def plan_epoch(self, table: LengthTable, *, epoch: int = 0, seed: int = 0) -> EpochPlan:
        n = len(table)
        order = rng_for(seed, epoch, "fixed.shuffle").permutation(n) if self.shuffle else None
        if order is None:
            order = np.arange(n, dtype=np.int64)
        dropped = np.zeros(0, dtype=np.int64)
        if self.drop_last and n % self.batch_size:
            keep = n - n % self.batch_size
            order, dropped = order[:keep], np.sort(order[keep:])
        offsets = np.append(np.arange(0, order.size, self.batch_size), order.size)
        if order.size == 0:
            offsets = np.zeros(1, dtype=np.int64)
        lengths = table.length[order]
        max_length = np.maximum.reduceat(lengths, offsets[:-1]) if order.size else lengths[:0]
        return EpochPlan(
            order=order,
            offsets=offsets,
            max_length=max_length,
            bucket=np.zeros(offsets.size - 1, dtype=np.int32),
            epoch=epoch,
            seed=seed,
            dropped=dropped,
            report={"sampler": self.name, "dropped": {"drop_last": int(dropped.size)}},
        )


@hookimpl
def laden_register_samplers(registry: Registry) -> None:
    registry.add(FixedSampler)
