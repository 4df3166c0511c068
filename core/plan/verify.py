"""Verifying a plan: rebuild it from its recorded config and table, compare batch by batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import numpy as np

from laden.plan.build import BatchPlan
from laden.records import EpochPlan, LengthTable

if TYPE_CHECKING:
    from laden.kernel import Kernel

__all__ = ["PlanCheck", "verify_plan"]


@attrs.frozen(kw_only=True)
class PlanCheck:
    """The result of :meth:`BatchPlan.verify`: ``ok``, or where the first difference is."""

    ok: bool
    reason: str = ""
    epoch: int | None = None
    batch: int | None = None

    def __bool__(self) -> bool:
        return self.ok


def verify_plan(plan: BatchPlan, table: LengthTable, *, kernel: Kernel | None = None) -> PlanCheck:
    """Rebuild ``plan`` from its config and ``table`` and compare, batch by batch.

    :param kernel: creates the recorded sampler and packer (default: laden's
        builtins only, :func:`~laden.kernel.builtin_kernel`).
    """
    from laden.kernel import builtin_kernel

    digest = table.digest()
    if digest != plan.table_digest:
        return PlanCheck(
            ok=False,
            reason=f"the length table differs (digest {digest}, "
            f"the plan was built from {plan.table_digest})",
        )
    kernel = kernel or builtin_kernel()
    sampler = kernel.create("sampler", plan.config["sampler"], path=("sampler",))
    packer_config = plan.config.get("packer")
    packer = kernel.create("packer", packer_config, path=("packer",)) if packer_config else None
    rebuilt = BatchPlan.build(
        table,
        sampler,
        packer,
        epochs=int(plan.config["epochs"]),
        seed=int(plan.config["seed"]),
        memory_budget=plan.config.get("memory_budget"),  # as recorded: memory is not read again
    )
    if plan.world_size > 1:
        rebuilt = rebuilt.shard(
            plan.rank, plan.world_size, remainder=plan.shard_report.get("remainder", "pad")
        )
    if plan.pack is not None and rebuilt.pack is not None:
        names = ("order", "offsets", "seg_length", "seg_start")
        for name in names:
            if not np.array_equal(getattr(plan.pack, name), getattr(rebuilt.pack, name)):
                return PlanCheck(ok=False, reason=f"the pack plan differs ({name})")
    if rebuilt.num_epochs != plan.num_epochs:
        return PlanCheck(
            ok=False, reason=f"{plan.num_epochs} epochs, a rebuild has {rebuilt.num_epochs}"
        )
    for e, (mine, theirs) in enumerate(zip(plan.epochs, rebuilt.epochs, strict=True)):
        batch = _first_difference(mine, theirs, plan.padding[e], rebuilt.padding[e])
        if batch is not None:
            return PlanCheck(
                ok=False,
                reason=f"epoch {e}, batch {batch} differs from a rebuild",
                epoch=e,
                batch=batch,
            )
    if rebuilt.fingerprint != plan.fingerprint:
        return PlanCheck(ok=False, reason="the fingerprint differs from a rebuild")
    return PlanCheck(ok=True)


def _first_difference(
    a: EpochPlan, b: EpochPlan, pad_a: np.ndarray, pad_b: np.ndarray
) -> int | None:
    """The first batch where two epoch plans differ, or None."""
    n = min(len(a), len(b))
    sizes_a, sizes_b = a.batch_sizes[:n], b.batch_sizes[:n]
    differs = (
        (sizes_a != sizes_b)
        | (a.max_length[:n] != b.max_length[:n])
        | (a.bucket[:n] != b.bucket[:n])
        | (pad_a[:n] != pad_b[:n])
    )
    first = int(np.argmax(differs)) if differs.any() else n
    # Up to the first shape difference the offsets agree, so compare the units.
    end = int(a.offsets[first])
    unit = np.flatnonzero(a.order[:end] != b.order[:end])
    if unit.size:
        return int(np.searchsorted(a.offsets, unit[0], side="right") - 1)
    if first < n or len(a) != len(b):
        return first
    return None
