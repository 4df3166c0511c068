"""Columnar records passed between strategies: nothing here is one object per sample.

- :class:`LengthTable`: per-sample columns (``length``, optional ``key``,
  ``offset``, ``ids``).
- :class:`ChunkMeasure`: the columns one byte range of an indexed source gave.
- :class:`PackPlan`: packs in CSR form (``order`` + ``offsets``).
- :class:`EpochPlan`: the batches of one epoch in CSR form, plus per-batch
  ``max_length`` and ``bucket``; :class:`BatchSpec` views are made on iteration.
- :class:`Ragged`: variable-length rows (token ids, loss masks) in CSR form.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from laden.digest import array_digest  # re-exported: its home is laden.digest
from laden.errors import ConfigError

__all__ = [
    "BatchSpec",
    "ChunkMeasure",
    "EpochPlan",
    "LengthTable",
    "PackPlan",
    "Ragged",
    "array_digest",
    "csr_take",
    "offsets_from_sizes",
]

_EMPTY = np.zeros(0, dtype=np.int64)


def _int_column(name: str, values: Any, size: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ConfigError(f"must be one-dimensional, got shape {array.shape}", path=(name,))
    if array.size and array.dtype.kind not in "iu":
        if array.dtype.kind == "f" and np.all(np.mod(array, 1) == 0):
            array = array.astype(np.int64)
        else:
            raise ConfigError(f"must hold integers, got dtype {array.dtype}", path=(name,))
    if size is not None and array.size != size:
        raise ConfigError(f"has {array.size} rows, expected {size}", path=(name,))
    return np.ascontiguousarray(array, dtype=np.int64)


def _stage_column(values: Any, length: np.ndarray) -> np.ndarray:
    """``[n, stages]`` non-negative integers whose rows sum to ``length``."""
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[0] != length.size:
        raise ConfigError(
            f"must be [{length.size}, stages], got shape {array.shape}", path=("stage_length",)
        )
    if array.size and array.dtype.kind not in "iu":
        raise ConfigError(f"must hold integers, got dtype {array.dtype}", path=("stage_length",))
    array = np.ascontiguousarray(array, dtype=np.int64)
    if array.size and int(array.min()) < 0:
        raise ConfigError("must be >= 0 for every stage", path=("stage_length",))
    wrong = np.flatnonzero(array.sum(axis=1) != length)
    if wrong.size:
        i = int(wrong[0])
        raise ConfigError(
            f"sample {i}: its stages sum to {int(array[i].sum())}, its length is {int(length[i])}",
            path=("stage_length",),
        )
    return array


def offsets_from_sizes(sizes: Any) -> np.ndarray:
    """CSR offsets (``n + 1``, starting at 0) of rows of the given sizes."""
    sizes = np.asarray(sizes, dtype=np.int64)
    offsets = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return offsets


def csr_take(offsets: np.ndarray, rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """Gather rows of a CSR layout, vectorized.

    :returns: ``(where, new_offsets)``: the positions in the values of the given
        rows, concatenated in the order given, and the offsets of the result.
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts = offsets[rows]
    sizes = offsets[rows + 1] - starts
    new = offsets_from_sizes(sizes)
    where = np.repeat(starts - new[:-1], sizes) + np.arange(new[-1], dtype=np.int64)
    return where, new


@attrs.frozen(kw_only=True, eq=False)
class Ragged:
    """Variable-length rows in CSR form: row ``i`` is ``values[offsets[i]:offsets[i+1]]``."""

    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_sequences(cls, sequences: Sequence[Any], dtype: Any = np.int64) -> Ragged:
        """Concatenate sequences (lists or arrays) into one buffer."""
        arrays = [np.asarray(s, dtype=dtype).reshape(-1) for s in sequences]
        offsets = offsets_from_sizes([a.size for a in arrays])
        values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
        return cls(values=values, offsets=offsets)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]


def _length_column(values: Any) -> np.ndarray:
    return _int_column("length", values)


@attrs.frozen(kw_only=True, eq=False)
class LengthTable:
    """Per-sample columns: every sample measured once.

    :param length: token count per sample (int64).
    :param key: optional bucket key per sample (e.g. a compression depth).
    :param offset: optional byte offset of each sample in its source file.
    :param ids: optional sample ids (integers or strings); default: the row index.
    :param meta: provenance: dataset digest, tokenizer hash, counts.
    :param stage_length: optional ``[n, stages]`` steps of each stage of a staged
        sample (0 past its last stage); each row sums to ``length``. Samplers
        that pad each stage apart (``depth_buckets``) cost batches by it.
    """

    length: np.ndarray = attrs.field(converter=_length_column)
    key: np.ndarray | None = None
    offset: np.ndarray | None = None
    ids: np.ndarray | None = None
    meta: Mapping[str, Any] = attrs.field(factory=dict)
    stage_length: np.ndarray | None = None

    def __attrs_post_init__(self) -> None:
        n = self.length.size
        if n and int(self.length.min()) < 0:
            raise ConfigError("must be >= 0 for every sample", path=("length",))
        for name in ("key", "offset"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _int_column(name, value, n))
        if self.ids is not None:
            ids = np.asarray(self.ids)
            if ids.dtype == object:
                raise ConfigError("must be integers or strings, not objects", path=("ids",))
            if ids.shape != (n,):
                raise ConfigError(f"has shape {ids.shape}, expected ({n},)", path=("ids",))
            object.__setattr__(self, "ids", ids)
        if self.stage_length is not None:
            object.__setattr__(self, "stage_length", _stage_column(self.stage_length, self.length))

    @classmethod
    def from_lengths(
        cls,
        lengths: Any,
        *,
        key: Any = None,
        ids: Any = None,
        meta: Mapping[str, Any] | None = None,
    ) -> LengthTable:
        """A table from lengths you already know (no dataset, no tokenizer)."""
        return cls(length=lengths, key=key, ids=ids, meta=dict(meta or {}))

    def __len__(self) -> int:
        return int(self.length.size)

    @property
    def num_tokens(self) -> int:
        return int(self.length.sum())

    def digest(self) -> str:
        """A digest of the columns (not ``meta``): equal tables give equal digests."""
        extra = () if self.stage_length is None else (self.stage_length,)
        return array_digest(self.length, self.key, self.offset, self.ids, *extra)

    def select(self, indices: np.ndarray) -> LengthTable:
        """The rows at ``indices``, in that order."""
        pick = np.asarray(indices, dtype=np.int64)
        return LengthTable(
            length=self.length[pick],
            key=None if self.key is None else self.key[pick],
            offset=None if self.offset is None else self.offset[pick],
            ids=None if self.ids is None else self.ids[pick],
            meta=dict(self.meta),
            stage_length=None if self.stage_length is None else self.stage_length[pick],
        )

    def __repr__(self) -> str:
        cols = [c for c in ("key", "offset", "ids") if getattr(self, c) is not None]
        return f"<LengthTable {len(self):,} samples, {self.num_tokens:,} tokens, +{cols}>"


@attrs.frozen(kw_only=True, eq=False)
class ChunkMeasure:
    """What measuring one byte range of an indexed source found: columns of its kept rows.

    Returned by :meth:`laden.kinds.IndexedSource.measure` (in a worker);
    :func:`laden.lengths.build_lengths` joins the ranges into a LengthTable.
    """

    start: int  # the range's first byte
    lines: int  # lines in the range, blank and bad ones included
    length: np.ndarray  # tokens per kept row
    offset: np.ndarray  # byte offset of each kept row in the file
    line: np.ndarray  # 0-based line within the range, per kept row
    key: np.ndarray | None  # bucket keys (-1: none), or None when no row has one
    ids: list[Any] | None  # sample ids (None: no id), or None when no row has one
    has_id: np.ndarray  # bool per kept row
    errors: list[tuple[int, str]]  # (line within the range, reason) per malformed row
    blank: int  # blank lines in the range
    stage_length: np.ndarray | None = None  # [rows, stages] of staged samples, or None


@attrs.frozen(kw_only=True, eq=False)
class PackPlan:
    """Packs in CSR form: pack ``p`` holds samples ``order[offsets[p]:offsets[p+1]]``.

    ``seg_length`` is the tokens each segment contributes (a sample cut by a
    ``truncate`` or ``split`` policy contributes less than its length);
    ``seg_start`` is where in its sample the segment begins (non-zero for
    continuation segments).
    """

    order: np.ndarray
    offsets: np.ndarray
    seg_length: np.ndarray
    seg_start: np.ndarray
    max_length: int
    dropped: np.ndarray = attrs.field(factory=lambda: _EMPTY.copy())
    report: Mapping[str, Any] = attrs.field(factory=dict)

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def pack_lengths(self) -> np.ndarray:
        """Tokens per pack."""
        if self.seg_length.size == 0:
            return np.zeros(len(self), dtype=np.int64)
        sums = np.add.reduceat(self.seg_length, self.offsets[:-1]) if len(self) else _EMPTY
        return np.where(np.diff(self.offsets) > 0, sums, 0).astype(np.int64)

    @property
    def efficiency(self) -> float:
        """Real tokens over ``packs * max_length``."""
        return float(self.seg_length.sum()) / max(len(self) * self.max_length, 1)

    def to_length_table(self) -> LengthTable:
        """The packs as units of a length table, so any sampler can batch them."""
        return LengthTable(
            length=self.pack_lengths, meta={"packed": True, "max_length": self.max_length}
        )


@attrs.frozen(kw_only=True, eq=False)
class BatchSpec:
    """One batch of an epoch plan: a view, made on iteration."""

    index: int
    indices: np.ndarray
    max_length: int
    bucket: int
    #: A repeat that only evens out shards (see ``BatchPlan.shard``): skip it in the loss.
    padding: bool = False

    @property
    def size(self) -> int:
        return int(self.indices.size)

    @property
    def padded_tokens(self) -> int:
        return self.size * self.max_length


@attrs.frozen(kw_only=True, eq=False)
class EpochPlan:
    """The batches of one epoch in CSR form over units (samples or packs).

    Batch ``b`` is ``order[offsets[b]:offsets[b+1]]``, padded to
    ``max_length[b]``. ``dropped`` and ``truncated`` list the units an overflow
    policy removed or cut: never silent.
    """

    order: np.ndarray
    offsets: np.ndarray
    max_length: np.ndarray
    bucket: np.ndarray
    epoch: int = 0
    seed: int = 0
    dropped: np.ndarray = attrs.field(factory=lambda: _EMPTY.copy())
    truncated: np.ndarray = attrs.field(factory=lambda: _EMPTY.copy())
    report: Mapping[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        for name in ("order", "offsets", "max_length", "dropped", "truncated"):
            object.__setattr__(
                self, name, np.ascontiguousarray(getattr(self, name), dtype=np.int64)
            )
        object.__setattr__(self, "bucket", np.ascontiguousarray(self.bucket, dtype=np.int32))
        nb = self.offsets.size - 1
        if nb < 0 or self.max_length.size != nb or self.bucket.size != nb:
            raise ValueError(
                f"inconsistent plan: {self.offsets.size} offsets, {self.max_length.size} "
                f"max_length, {self.bucket.size} bucket"
            )
        if self.offsets[0] != 0 or self.offsets[-1] != self.order.size:
            raise ValueError("offsets must start at 0 and end at len(order)")

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def num_batches(self) -> int:
        return len(self)

    @property
    def batch_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, b: int) -> BatchSpec:
        n = len(self)
        if not -n <= b < n:
            raise IndexError(f"batch {b} out of range for a plan of {n} batches")
        b %= n
        lo, hi = self.offsets[b], self.offsets[b + 1]
        return BatchSpec(
            index=b,
            indices=self.order[lo:hi],
            max_length=int(self.max_length[b]),
            bucket=int(self.bucket[b]),
        )

    def __iter__(self) -> Iterator[BatchSpec]:
        for b in range(len(self)):
            yield self[b]

    def padded_tokens(self) -> int:
        """Tokens including padding: sum over batches of size * max_length."""
        return int((self.batch_sizes * self.max_length).sum())

    def real_tokens(self, lengths: np.ndarray) -> int:
        """Tokens actually present (capped at each batch's max_length)."""
        per = np.minimum(lengths[self.order], np.repeat(self.max_length, self.batch_sizes))
        return int(per.sum())

    def efficiency(self, lengths: np.ndarray) -> float:
        """Real tokens over padded tokens (1.0 means no padding)."""
        return self.real_tokens(lengths) / max(self.padded_tokens(), 1)

    def digest(self) -> str:
        return array_digest(self.order, self.offsets, self.max_length, self.bucket, self.dropped)

    def __repr__(self) -> str:
        return (
            f"<EpochPlan epoch={self.epoch} {len(self):,} batches, {self.order.size:,} units,"
            f" {self.dropped.size} dropped>"
        )
