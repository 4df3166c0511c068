"""Batch layouts: where each segment of a batch goes (its row, sample, start, tokens)."""

from __future__ import annotations

import attrs
import numpy as np

from laden.records import BatchSpec, PackPlan, csr_take

__all__ = ["BatchLayout"]


@attrs.frozen(kw_only=True, eq=False)
class BatchLayout:
    """Where each segment of a batch goes: its row, sample, start in the sample, tokens.

    Segments are in row order and, inside a row, in the order they are laid
    down; each row is filled from position 0, padding after.
    """

    sample: np.ndarray
    start: np.ndarray
    length: np.ndarray
    row: np.ndarray
    num_rows: int
    row_length: int

    def __attrs_post_init__(self) -> None:
        for name in ("sample", "start", "length", "row"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        if self.row.size and (np.diff(self.row) < 0).any():
            raise ValueError("segments must be in row order")
        used = np.bincount(self.row, weights=self.length, minlength=self.num_rows)
        if used.size > self.num_rows or (used > self.row_length).any():
            raise ValueError(f"a row holds more than row_length={self.row_length} tokens")

    @classmethod
    def padded(
        cls, indices: np.ndarray, lengths: np.ndarray, max_length: int | None = None
    ) -> BatchLayout:
        """One sample per row, cut to ``max_length`` (default: the longest)."""
        indices = np.asarray(indices, dtype=np.int64)
        own = np.asarray(lengths, dtype=np.int64)[indices]
        if max_length is None:
            max_length = int(own.max(initial=0))
        return cls(
            sample=indices,
            start=np.zeros(indices.size, dtype=np.int64),
            length=np.minimum(own, max_length),
            row=np.arange(indices.size, dtype=np.int64),
            num_rows=int(indices.size),
            row_length=max_length,
        )

    @classmethod
    def packed(
        cls, plan: PackPlan, packs: np.ndarray, row_length: int | None = None
    ) -> BatchLayout:
        """The given packs of a pack plan, one per row (``row_length`` defaults to the plan's)."""
        packs = np.asarray(packs, dtype=np.int64)
        where, offsets = csr_take(plan.offsets, packs)
        return cls(
            sample=plan.order[where],
            start=plan.seg_start[where],
            length=plan.seg_length[where],
            row=np.repeat(np.arange(packs.size, dtype=np.int64), np.diff(offsets)),
            num_rows=int(packs.size),
            row_length=plan.max_length if row_length is None else row_length,
        )

    @classmethod
    def for_batch(
        cls, spec: BatchSpec, lengths: np.ndarray, pack_plan: PackPlan | None = None
    ) -> BatchLayout:
        """The layout of a sampler's batch: of samples, or of packs when ``pack_plan`` is given."""
        if pack_plan is None:
            return cls.padded(spec.indices, lengths, spec.max_length)
        return cls.packed(pack_plan, spec.indices, spec.max_length)

    @property
    def num_tokens(self) -> int:
        return int(self.length.sum())
