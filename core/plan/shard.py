"""Sharding a plan per rank: disjoint batches, the same number of steps on every rank.

Per epoch, in named steps: :func:`_deal` sorts the batches by cost and deals
them out ``world_size`` at a time (topping the last step up with padding
repeats, or dropping the cheapest), the steps shuffled by
``(seed, epoch, "shard")``; :func:`_rank_epoch` takes this rank's column of
the deal; :func:`_epoch_report` counts what the deal padded, dropped, and how
unevenly the ranks' steps cost.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from laden.errors import ConfigError
from laden.plan.build import BatchPlan
from laden.records import EpochPlan, csr_take
from laden.seeding import rng_for

__all__ = ["shard_plan"]

#: The per-epoch lists of a shard report, in the order they are filled.
_REPORT_LISTS = (
    "padding_batches",
    "dropped_batches",
    "dropped_samples",
    "dropped_tokens",
    "step_imbalance",
)


def shard_plan(plan: BatchPlan, rank: int, world_size: int, *, remainder: str = "pad") -> BatchPlan:
    """Rank ``rank``'s shard of a full plan (see :meth:`BatchPlan.shard`)."""
    _check_arguments(plan, rank, world_size, remainder)
    seed = int(plan.config.get("seed", 0))
    epochs, tokens, padding = [], [], []
    report: dict[str, Any] = {"remainder": remainder, **{key: [] for key in _REPORT_LISTS}}
    for e, epoch in enumerate(plan.epochs):
        groups, pad = _deal(epoch, world_size, remainder, rng_for(seed, e, "shard"))
        mine, mine_pad = _column(groups, rank), _column(pad, rank)
        epochs.append(_rank_epoch(epoch, mine))
        tokens.append(plan.batch_tokens[e][mine])
        padding.append(mine_pad)
        for key, value in _epoch_report(epoch, plan.batch_tokens[e], groups, pad).items():
            report[key].append(value)
    return BatchPlan(
        config=plan.config,
        table_digest=plan.table_digest,
        num_samples=plan.num_samples,
        num_units=plan.num_units,
        epochs=tuple(epochs),
        batch_tokens=tuple(tokens),
        pack=plan.pack,
        rank=rank,
        world_size=world_size,
        padding=tuple(padding),
        shard_report=report,
        inputs=plan.inputs,
    )


def _check_arguments(plan: BatchPlan, rank: int, world_size: int, remainder: str) -> None:
    """A ConfigError naming the argument that cannot shard ``plan``."""
    if plan.world_size != 1:
        raise ConfigError(
            f"this plan is already a shard (rank {plan.rank} of {plan.world_size}); "
            "shard the full plan"
        )
    if world_size < 1:
        raise ConfigError(f"must be >= 1, got {world_size}", path=("world_size",))
    if not 0 <= rank < world_size:
        raise ConfigError(f"{rank} is not in 0..{world_size - 1}", path=("rank",))
    if remainder not in ("pad", "drop"):
        raise ConfigError(f"must be 'pad' or 'drop', got {remainder!r}", path=("remainder",))


def _deal(
    plan: EpochPlan, world_size: int, remainder: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Batches per (step, rank) and which are padding: similar costs share a step."""
    n = len(plan)
    cost = plan.batch_sizes * plan.max_length
    by_cost = np.argsort(-cost, kind="stable")
    steps, rem = divmod(n, world_size)
    if remainder == "drop" or rem == 0:
        groups = by_cost[: steps * world_size].reshape(steps, world_size)
        pad = np.zeros(groups.shape, dtype=bool)
    else:
        # The last step holds the cheapest batches, topped up with repeats marked as padding.
        tail = by_cost[steps * world_size :]
        last = np.resize(tail, world_size)
        groups = np.concatenate([by_cost[: steps * world_size], last]).reshape(
            steps + 1, world_size
        )
        pad = np.zeros(groups.shape, dtype=bool)
        pad[-1, rem:] = True
    order = rng.permutation(groups.shape[0])
    return groups[order], pad[order]


def _column(deal: np.ndarray, rank: int) -> np.ndarray:
    """Rank ``rank``'s entry of every step: the column rotates, so no rank always gets
    the costliest batch of a step."""
    at = np.arange(deal.shape[0])
    column: np.ndarray = deal[at, (rank + at) % deal.shape[1]]
    return column


def _rank_epoch(plan: EpochPlan, mine: np.ndarray) -> EpochPlan:
    """The epoch plan of the batches ``mine``, in that order (a vectorized CSR take)."""
    where, offsets = csr_take(plan.offsets, mine)
    return attrs.evolve(
        plan,
        order=plan.order[where],
        offsets=offsets,
        max_length=plan.max_length[mine],
        bucket=plan.bucket[mine],
    )


def _epoch_report(
    plan: EpochPlan, batch_tokens: np.ndarray, groups: np.ndarray, pad: np.ndarray
) -> dict[str, Any]:
    """What the deal of one epoch padded and dropped, and how evenly the steps cost."""
    used = np.zeros(len(plan), dtype=bool)
    used[groups[~pad]] = True
    cost = (plan.batch_sizes * plan.max_length)[groups]
    imbalance = 0.0
    if cost.size:  # how much of the slowest rank's step the fastest rank waits
        top = cost.max(axis=1)
        spread = (top - cost.min(axis=1)) / np.maximum(top, 1)
        imbalance = round(float(spread.mean()), 6)
    return {
        "padding_batches": int(pad.sum()),
        "dropped_batches": int((~used).sum()),
        "dropped_samples": int(plan.batch_sizes[~used].sum()),
        "dropped_tokens": int(batch_tokens[~used].sum()),
        "step_imbalance": imbalance,
    }
