"""Collation: samples + a batch layout -> padded or packed rows with segment metadata.

A batch is a set of *segments* (a run of one sample's tokens) laid out in
rows of ``row_length``: one sample per row for a padded batch, several for a
packed one. :func:`collate` turns the layout and the samples' token ids into
host arrays, all in O(tokens) numpy with no Python loop per segment:

``input_ids``, ``attention_mask`` (1 on real tokens), ``labels``,
``position_ids`` (restart at 0 in every segment), ``segment_ids`` (1, 2, ...
per row, 0 on padding), ``cu_seqlens`` (int32, flash-attention varlen layout
over the real tokens in row-major order, i.e. ``input_ids[attention_mask ==
1]``), ``max_seqlen`` (an ``int``), ``sample_ids`` (the sample of each
segment, in ``cu_seqlens`` order) and, on request, ``attn_mask`` (a dense
``(rows, 1, L, L)`` boolean block-diagonal mask, optionally causal, in the
form ``torch.nn.functional.scaled_dot_product_attention`` takes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.batching import smallest_int
from laden.errors import ConfigError, DataError
from laden.records import BatchSpec, PackPlan, csr_take, offsets_from_sizes
from laden.validators import one_of, optional, positive

__all__ = [
    "IGNORE_INDEX",
    "BatchLayout",
    "CollatingBackend",
    "Ragged",
    "collate",
    "dense_segment_mask",
    "host_dtypes",
]

#: The label that losses skip (PyTorch's ``cross_entropy`` default ``ignore_index``).
IGNORE_INDEX = -100


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


def _fetch(
    tokens: Any, ids: np.ndarray, loss_mask: Ragged | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Where the given samples' tokens are: ``(values, start, length)`` per sample.

    Also the loss-mask ``(values, start)`` when there is one. A Ragged over the
    dataset is read in place (no copy); other inputs are gathered once.
    """
    mask_values = mask_base = None
    if isinstance(tokens, Ragged):
        values, base = tokens.values, tokens.offsets[ids]
        lengths = tokens.offsets[ids + 1] - base
    else:
        if hasattr(tokens, "fetch"):  # e.g. SourceSamples: one read for the whole batch
            fetched = tokens.fetch(ids)
            items = [fetched[int(i)] for i in ids]
        else:
            items = [tokens[int(i)] for i in ids]
        mapped = bool(items) and isinstance(items[0], Mapping)
        local = Ragged.from_sequences([item["input_ids"] for item in items] if mapped else items)
        values, base, lengths = local.values, local.offsets[:-1], local.lengths
        if mapped and any("loss_mask" in item for item in items):
            masks = Ragged.from_sequences(
                [item.get("loss_mask", np.ones(len(item["input_ids"]))) for item in items],
                dtype=bool,
            )
            mask_values, mask_base = masks.values, masks.offsets[:-1]
    if loss_mask is not None:
        mask_values, mask_base = loss_mask.values, loss_mask.offsets[ids]
    if mask_values is not None:
        mask_values = mask_values.astype(bool, copy=False)
    return values, base, lengths, mask_values, mask_base


def collate(
    layout: BatchLayout,
    tokens: Any,
    *,
    loss_mask: Ragged | None = None,
    pad_id: int = 0,
    ignore_index: int = IGNORE_INDEX,
    shift_labels: bool = False,
    pad_to_multiple_of: int | None = None,
    dense_mask: str | None = None,
    dtype: Any = np.int64,
) -> dict[str, Any]:
    """Host arrays of one batch (see the module docstring for the columns).

    :param layout: the rows and their segments.
    :param tokens: the samples' token ids, indexed by sample id: a
        :class:`Ragged` over the dataset, or any mapping/sequence whose items are
        arrays or mappings with ``input_ids`` (and optionally ``loss_mask``).
    :param loss_mask: a Ragged over the dataset, 1 where a token is a target.
    :param shift_labels: ``False`` (Hugging Face convention): ``labels[t]`` is
        ``input_ids[t]`` and the model shifts; the first token of every segment
        gets ``ignore_index``. ``True``: ``labels[t]`` is the next token,
        ``ignore_index`` on the last token of every segment.
    :param pad_to_multiple_of: round the row length up to a multiple of this.
    :param dense_mask: ``None``, ``"block"`` or ``"causal"``: also return the
        ``(rows, 1, L, L)`` mask ``attn_mask``. It costs O(L²) per row.
    :param dtype: the integer dtype of the token columns (``input_ids``,
        ``labels``, ``position_ids``, ``segment_ids``, ``attention_mask``); a
        token id it cannot hold is a DataError, never a silent wrap-around.
    """
    keep = layout.length > 0
    sample, start, length, row = (
        layout.sample[keep],
        layout.start[keep],
        layout.length[keep],
        layout.row[keep],
    )
    rows, width = layout.num_rows, layout.row_length
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    uniq, local_sample = np.unique(sample, return_inverse=True)
    values, base, have, mask_values, mask_base = _fetch(tokens, uniq, loss_mask)
    short = np.flatnonzero(have[local_sample] < start + length)
    if short.size:
        s = int(short[0])
        raise ValueError(
            f"sample {int(sample[s])} has {int(have[local_sample[s]])} tokens but the "
            f"layout reads {int(start[s] + length[s])}; the length table does not match the data"
        )

    # Per segment (cheap): where it starts in the batch's token stream, its number in its row.
    seg_first = offsets_from_sizes(length)[:-1]
    row_first_seg = np.searchsorted(row, np.arange(rows), side="left")
    number_in_row = np.arange(row.size, dtype=np.int64) - row_first_seg[row] + 1
    # Rows are filled from position 0, so real tokens are a prefix of each row and
    # the unpadded token stream is the row-major order of ``real``.
    used = np.bincount(row, weights=length, minlength=rows).astype(np.int64)
    real = np.arange(width)[None, :] < used[:, None]
    # Per token: one gather for the ids, the rest are repeats and prefix writes.
    total = int(length.sum())
    step = np.arange(total, dtype=np.int64)
    local = step - np.repeat(seg_first, length)
    src = np.repeat(base[local_sample] + start - seg_first, length) + step
    stream = values[src]
    dtype = np.dtype(dtype)
    if total and not np.can_cast(stream.dtype, dtype):
        _check_fits("input_ids", stream, dtype)

    input_ids = np.full((rows, width), pad_id, dtype=dtype)
    input_ids[real] = stream
    attention_mask = real.astype(dtype)
    position_ids = np.zeros((rows, width), dtype=dtype)
    position_ids[real] = local
    segment_ids = np.zeros((rows, width), dtype=dtype)
    segment_ids[real] = np.repeat(number_in_row, length)
    targets = stream.copy()
    if shift_labels:  # target of token t is token t+1 of the same segment
        targets[:-1] = stream[1:]
        no_target = np.zeros(total, dtype=bool)
        no_target[seg_first + length - 1] = True
        if mask_values is not None and mask_base is not None:
            keep_next = np.ones(total, dtype=bool)
            keep_next[:-1] = mask_values[
                np.repeat(mask_base[local_sample] + start - seg_first, length) + step
            ][1:]
            no_target |= ~keep_next
    else:  # the model shifts: a segment's first token is no target
        no_target = np.zeros(total, dtype=bool)
        no_target[seg_first] = True
        if mask_values is not None and mask_base is not None:
            no_target |= ~mask_values[
                np.repeat(mask_base[local_sample] + start - seg_first, length) + step
            ]
    targets[no_target] = ignore_index
    labels = np.full((rows, width), ignore_index, dtype=dtype)
    labels[real] = targets
    cu_seqlens = np.zeros(length.size + 1, dtype=np.int32)
    np.cumsum(length, out=cu_seqlens[1:])
    out: dict[str, Any] = {
        "input_ids": input_ids.reshape(rows, width),
        "attention_mask": attention_mask.reshape(rows, width),
        "labels": labels.reshape(rows, width),
        "position_ids": position_ids.reshape(rows, width),
        "segment_ids": segment_ids.reshape(rows, width),
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int(length.max(initial=0)),
        "sample_ids": sample.copy(),
    }
    if dense_mask is not None:
        out["attn_mask"] = dense_segment_mask(out["segment_ids"], causal=dense_mask == "causal")
    return out


def dense_segment_mask(segment_ids: np.ndarray, *, causal: bool = False) -> np.ndarray:
    """``(rows, 1, L, L)`` booleans: True where query ``i`` may attend to key ``j``.

    Same non-zero segment (and ``j <= i`` when causal). A padding query attends
    only to itself, so no row of the mask is all False (which would make
    softmax attention NaN); its output is padding anyway.
    """
    seg = np.asarray(segment_ids)
    same = seg[:, :, None] == seg[:, None, :]
    mask = same & (seg[:, :, None] > 0)
    width = seg.shape[1]
    if causal:
        mask &= np.tri(width, dtype=bool)[None]
    eye = np.eye(width, dtype=bool)[None]
    mask |= eye & (seg == 0)[:, :, None]
    out: np.ndarray = mask[:, None]
    return out


@attrs.frozen(kw_only=True)
class CollatingBackend:
    """What the built-in backends share: collation settings, then ``convert``.

    Subclasses give ``name``, ``convert(arrays)`` (host arrays -> framework
    arrays) and ``as_numpy(value)`` (back, for the conformance check).

    :param pad_id: the token id of padding.
    :param ignore_index: the label of positions that are no target.
    :param shift_labels: labels already shifted to the next token (see :func:`collate`).
    :param pad_to_multiple_of: round the row length up to a multiple of this
        (8 or 64 suits tensor cores).
    :param dense_mask: ``block`` or ``causal`` adds the dense ``attn_mask``;
        ``none`` (default) leaves it out, as it costs O(L²) per row.
    :param int_dtype: the dtype of the token columns (``input_ids``, ``labels``,
        ``position_ids``, ``segment_ids``, ``attention_mask``): ``auto``
        (default) picks the narrowest that holds the vocabulary, ``pad_id`` and
        ``ignore_index``, which is int32 for every real tokenizer; ``int32`` or
        ``int64`` force one. ``cu_seqlens`` is int32 (flash-attention's contract)
        and ``sample_ids`` int64 whatever this says; with ``auto`` a backend may
        keep columns its framework needs wide (``torch``: ``labels``). A token
        id that does not fit is a DataError naming the setting to widen.
    :param vocab_size: the vocabulary size, when known; with ``auto``, a
        vocabulary beyond int32 makes the token columns int64.
    """

    name: ClassVar[str] = ""
    #: Integer columns kept int64 under ``int_dtype = "auto"`` because this
    #: framework's consumers need them so (e.g. PyTorch losses take int64 targets).
    wide_columns: ClassVar[tuple[str, ...]] = ()

    pad_id: int = 0
    ignore_index: int = IGNORE_INDEX
    shift_labels: bool = False
    pad_to_multiple_of: int | None = attrs.field(default=None, validator=optional(positive))
    dense_mask: str = attrs.field(default="none", validator=one_of("none", "block", "causal"))
    int_dtype: str = attrs.field(default="auto", validator=one_of("auto", "int32", "int64"))
    vocab_size: int | None = attrs.field(default=None, validator=optional(positive))

    def __attrs_post_init__(self) -> None:
        if self.int_dtype == "int32":
            for name in ("pad_id", "ignore_index"):
                value = getattr(self, name)
                if smallest_int(value) != np.int32:
                    raise ConfigError(
                        f"{value} does not fit int_dtype 'int32'; use int_dtype 'int64'",
                        path=(name,),
                    )

    @property
    def token_dtype(self) -> np.dtype[Any]:
        """The dtype of the token columns: ``int_dtype``, with ``auto`` resolved."""
        if self.int_dtype != "auto":
            return np.dtype(self.int_dtype)
        top = self.vocab_size - 1 if self.vocab_size is not None else 0
        return smallest_int(top, self.pad_id, self.ignore_index)

    @property
    def wide(self) -> tuple[str, ...]:
        """The columns this backend hands over as int64 although ``token_dtype`` is narrower."""
        return self.wide_columns if self.int_dtype == "auto" else ()

    def host(
        self, layout: BatchLayout, tokens: Any, *, loss_mask: Ragged | None = None
    ) -> dict[str, Any]:
        """Collated host (numpy) arrays in this backend's dtypes."""
        arrays = collate(
            layout,
            tokens,
            loss_mask=loss_mask,
            pad_id=self.pad_id,
            ignore_index=self.ignore_index,
            shift_labels=self.shift_labels,
            pad_to_multiple_of=self.pad_to_multiple_of,
            dense_mask=None if self.dense_mask == "none" else self.dense_mask,
            dtype=self.token_dtype,
        )
        return host_dtypes(arrays, self.token_dtype, wide=self.wide)

    def collate(
        self, layout: BatchLayout, tokens: Any, *, loss_mask: Ragged | None = None
    ) -> Mapping[str, Any]:
        """Collate one batch and convert it to this backend's arrays."""
        return self.convert(self.host(layout, tokens, loss_mask=loss_mask))

    def convert(self, arrays: Mapping[str, Any]) -> Mapping[str, Any]:
        raise NotImplementedError

    def as_numpy(self, value: Any) -> Any:
        raise NotImplementedError


#: Columns whose dtype is fixed by the consumer's contract, whatever ``int_dtype`` says:
#: flash-attention's varlen kernels take int32 cumulative sequence lengths, and
#: sample ids index datasets that may hold more than 2**31 samples.
FIXED_DTYPES: Mapping[str, np.dtype[Any]] = {
    "cu_seqlens": np.dtype(np.int32),
    "sample_ids": np.dtype(np.int64),
}


def _check_fits(key: str, array: np.ndarray, dtype: np.dtype[Any]) -> None:
    """A DataError when ``array`` holds a value ``dtype`` cannot (instead of wrapping)."""
    info = np.iinfo(dtype)
    low, high = array.min(), array.max()
    if low < info.min or high > info.max:
        value = int(high) if high > info.max else int(low)
        raise DataError(
            f"{key!r} holds {value}, which does not fit {dtype.name}; set the backend's "
            f"int_dtype to 'int64' (or its vocab_size to the vocabulary's size)"
        )


def host_dtypes(
    arrays: Mapping[str, Any], int_dtype: Any, *, wide: Sequence[str] = ()
) -> dict[str, Any]:
    """C-contiguous numpy arrays, integer columns in ``int_dtype``; plain ints pass through.

    Columns in ``wide`` become int64 and those in :data:`FIXED_DTYPES` keep
    their fixed dtype. Narrowing checks the values: one that does not fit is a
    DataError, never a silent wrap-around.
    """
    target = np.dtype(int_dtype)
    out: dict[str, Any] = {}
    for key, value in arrays.items():
        if isinstance(value, int | np.integer):
            out[key] = int(value)
            continue
        array = np.asarray(value)
        want = None
        if key in FIXED_DTYPES:
            want = FIXED_DTYPES[key]
        elif array.dtype.kind in "iu":
            want = np.dtype(np.int64) if key in wide else target
        if want is not None and array.dtype != want:
            if array.size and not np.can_cast(array.dtype, want):
                _check_fits(key, array, want)
            array = array.astype(want)
        out[key] = np.ascontiguousarray(array)
    return out
