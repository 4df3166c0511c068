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

import itertools
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from laden.collate.layout import BatchLayout
from laden.errors import DataError
from laden.records import Ragged, offsets_from_sizes

__all__ = ["IGNORE_INDEX", "check_fits", "collate", "dense_segment_mask"]

#: The label that losses skip (PyTorch's ``cross_entropy`` default ``ignore_index``).
IGNORE_INDEX = -100


class _Segments(NamedTuple):
    """The non-empty segments of a layout, and where each starts in the batch's token stream."""

    sample: np.ndarray
    start: np.ndarray
    length: np.ndarray
    row: np.ndarray
    first: np.ndarray

    @classmethod
    def of(cls, layout: BatchLayout) -> _Segments:
        if layout.length.size and int(layout.length.min()) > 0:  # the usual case: no copies
            sample, start, length, row = layout.sample, layout.start, layout.length, layout.row
        else:
            keep = layout.length > 0
            sample, start = layout.sample[keep], layout.start[keep]
            length, row = layout.length[keep], layout.row[keep]
        first = np.zeros(length.size, dtype=np.int64)
        np.cumsum(length[:-1], out=first[1:])
        return cls(sample=sample, start=start, length=length, row=row, first=first)


class _Tokens(NamedTuple):
    """Where the batch's samples' tokens are (see :func:`_fetch`)."""

    values: np.ndarray
    base: np.ndarray  # per distinct sample: where its tokens start in ``values``
    length: np.ndarray  # per distinct sample: its tokens
    mask_values: np.ndarray | None
    mask_base: np.ndarray | None


def _fetch(tokens: Any, ids: np.ndarray, loss_mask: Ragged | None) -> _Tokens:
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
    return _Tokens(values, base, lengths, mask_values, mask_base)


def _check_lengths(segments: _Segments, have: np.ndarray) -> None:
    """A clear error when a segment reads past its sample's tokens (``have`` per segment)."""
    short = np.flatnonzero(have < segments.start + segments.length)
    if short.size:
        s = int(short[0])
        raise ValueError(
            f"sample {int(segments.sample[s])} has {int(have[s])} tokens but the layout "
            f"reads {int(segments.start[s] + segments.length[s])}; the length table does "
            "not match the data"
        )


def _runs(
    value: np.ndarray,
    segments: _Segments,
    total: int,
    *,
    step: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Per token of the stream: its segment's ``value``, plus ``step`` per token into it.

    One delta per segment at its first token, then a cumulative sum: two passes
    over the tokens, where a repeat and an add take three.

    :param out: an int64 buffer of ``total`` to write into (a fresh one saves
        nothing: each new token-sized array costs page faults).
    """
    if out is None:
        out = np.empty(total, dtype=np.int64)
    out.fill(step)
    if total:
        value = np.asarray(value, dtype=np.int64)
        delta = np.empty_like(value)
        delta[0] = value[0]
        # from the last token of the previous segment to the first of this one
        delta[1:] = value[1:] - (value[:-1] + step * (segments.length[:-1] - 1))
        out[segments.first] = delta
        np.cumsum(out, out=out)
    return out


def _targets(
    stream: np.ndarray,
    segments: _Segments,
    token_mask: np.ndarray | None,
    *,
    shift_labels: bool,
    ignore_index: int,
) -> np.ndarray:
    """The label of each token of the stream (``ignore_index`` where there is no target)."""
    ends = segments.first + segments.length - 1
    if shift_labels:  # target of token t is token t+1 of the same segment
        targets: np.ndarray = np.empty_like(stream)
        targets[:-1] = stream[1:]
        targets[ends] = ignore_index
        if token_mask is not None:
            targets[:-1][~token_mask[1:]] = ignore_index
    else:  # the model shifts: a segment's first token is no target
        targets = stream.copy()
        targets[segments.first] = ignore_index
        if token_mask is not None:
            targets[~token_mask] = ignore_index
    return targets


class _Placement:
    """Where the token stream goes in ``(rows, width)``: each row's real tokens are a prefix.

    Few rows are written by slices (one copy per row); many short rows by one
    boolean-mask scatter; full rows are the stream itself, reshaped.
    """

    #: Up to this many rows, a Python loop of row slices beats the mask scatter.
    SLICED_ROWS = 64

    def __init__(self, used: np.ndarray, width: int) -> None:
        self.used, self.width = used, width
        self.full = bool((used == width).all())
        self.bounds = offsets_from_sizes(used).tolist()
        self.sliced = used.size <= self.SLICED_ROWS
        self._real: np.ndarray | None = None

    @property
    def real(self) -> np.ndarray:
        """``(rows, width)`` booleans: True on real tokens."""
        if self._real is None:
            self._real = np.arange(self.width)[None, :] < self.used[:, None]
        return self._real

    def rows(self, values: np.ndarray, fill: int, dtype: np.dtype[Any]) -> np.ndarray:
        """A ``(rows, width)`` array of ``fill`` with ``values`` on the real tokens."""
        shape = (self.used.size, self.width)
        if self.full:
            return values.astype(dtype, copy=False).reshape(shape)  # values are ours
        if not self.sliced:
            out = np.full(shape, fill, dtype=dtype)
            out[self.real] = values
            return out
        out = np.empty(shape, dtype=dtype)
        for r, (a, b) in enumerate(itertools.pairwise(self.bounds)):
            out[r, : b - a] = values[a:b]
            out[r, b - a :] = fill
        return out

    def mask(self, dtype: np.dtype[Any]) -> np.ndarray:
        """``attention_mask``: 1 on real tokens, 0 on padding."""
        if self.full:
            return np.ones((self.used.size, self.width), dtype=dtype)
        if not self.sliced:
            return self.real.astype(dtype)
        out = np.zeros((self.used.size, self.width), dtype=dtype)
        for r, n in enumerate(self.used.tolist()):
            out[r, :n] = 1
        return out


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
        :class:`~laden.records.Ragged` over the dataset, or any mapping/sequence
        whose items are arrays or mappings with ``input_ids`` (and optionally
        ``loss_mask``).
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
    segments = _Segments.of(layout)
    rows, width = layout.num_rows, layout.row_length
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    if isinstance(tokens, Ragged):  # read in place: no need to fetch each sample once
        found = _fetch(tokens, segments.sample, loss_mask)
        have, base, mask_base = found.length, found.base, found.mask_base
    else:
        uniq, sample_of = np.unique(segments.sample, return_inverse=True)
        found = _fetch(tokens, uniq, loss_mask)
        have, base = found.length[sample_of], found.base[sample_of]
        mask_base = None if found.mask_base is None else found.mask_base[sample_of]
    _check_lengths(segments, have)

    # Rows are filled from position 0, so real tokens are a prefix of each row and
    # the unpadded token stream is the row-major order of those prefixes.
    used = np.bincount(segments.row, weights=segments.length, minlength=rows).astype(np.int64)
    place = _Placement(used, width)
    # Per token, each column is a run per segment (counting up by 1, or constant): a
    # delta at each segment's first token and one cumulative sum, no per-token repeat.
    total = int(segments.length.sum())
    num_segments = segments.length.size
    position = _runs(np.zeros(num_segments, dtype=np.int64), segments, total, step=1)
    index = _runs(base + segments.start, segments, total, step=1)
    stream = found.values[index]
    dtype = np.dtype(dtype)
    if stream.size and not np.can_cast(stream.dtype, dtype):
        check_fits("input_ids", stream, dtype)
    token_mask = None
    if found.mask_values is not None and mask_base is not None:
        mask_index = _runs(mask_base + segments.start, segments, total, step=1)
        token_mask = found.mask_values[mask_index]
    targets = _targets(
        stream, segments, token_mask, shift_labels=shift_labels, ignore_index=ignore_index
    )
    # Segments are numbered 1, 2, ... inside each row.
    row_first_seg = np.searchsorted(segments.row, np.arange(rows), side="left")
    number_in_row = np.arange(num_segments, dtype=np.int64) - row_first_seg[segments.row] + 1
    cu_seqlens = np.zeros(num_segments + 1, dtype=np.int32)
    np.cumsum(segments.length, out=cu_seqlens[1:])
    # The gather index is spent: its buffer takes the segment ids.
    segment = _runs(number_in_row, segments, total, step=0, out=index)
    out: dict[str, Any] = {
        "input_ids": place.rows(stream, pad_id, dtype),
        "attention_mask": place.mask(dtype),
        "labels": place.rows(targets, ignore_index, dtype),
        "position_ids": place.rows(position, 0, dtype),
        "segment_ids": place.rows(segment, 0, dtype),
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int(segments.length.max(initial=0)),
        "sample_ids": segments.sample.copy(),
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


def check_fits(key: str, array: np.ndarray, dtype: np.dtype[Any]) -> None:
    """A DataError when ``array`` holds a value ``dtype`` cannot (instead of wrapping)."""
    info = np.iinfo(dtype)
    low, high = array.min(), array.max()
    if low < info.min or high > info.max:
        value = int(high) if high > info.max else int(low)
        raise DataError(
            f"{key!r} holds {value}, which does not fit {dtype.name}; set the backend's "
            f"int_dtype to 'int64' (or its vocab_size to the vocabulary's size)"
        )
