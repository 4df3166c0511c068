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
        keep = layout.length > 0
        length = layout.length[keep]
        return cls(
            sample=layout.sample[keep],
            start=layout.start[keep],
            length=length,
            row=layout.row[keep],
            first=offsets_from_sizes(length)[:-1],
        )


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


def _token_index(segments: _Segments, sample_base: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Per token of the batch's stream, its index in a buffer of samples.

    :param sample_base: per segment, where its sample starts in that buffer.
    :param step: ``0, 1, ...`` over the stream's tokens.
    """
    index: np.ndarray = np.repeat(sample_base + segments.start - segments.first, segments.length)
    index += step
    return index


def _targets(
    stream: np.ndarray,
    segments: _Segments,
    token_mask: np.ndarray | None,
    *,
    shift_labels: bool,
    ignore_index: int,
) -> np.ndarray:
    """The label of each token of the stream (``ignore_index`` where there is no target)."""
    targets: np.ndarray = stream.copy()
    no_target = np.zeros(stream.size, dtype=bool)
    if shift_labels:  # target of token t is token t+1 of the same segment
        targets[:-1] = stream[1:]
        no_target[segments.first + segments.length - 1] = True
        if token_mask is not None:
            keep_next = np.ones(stream.size, dtype=bool)
            keep_next[:-1] = token_mask[1:]
            no_target |= ~keep_next
    else:  # the model shifts: a segment's first token is no target
        no_target[segments.first] = True
        if token_mask is not None:
            no_target |= ~token_mask
    targets[no_target] = ignore_index
    return targets


def _rows(real: np.ndarray, values: np.ndarray, fill: int, dtype: np.dtype[Any]) -> np.ndarray:
    """A ``real.shape`` array of ``fill`` with ``values`` on the real tokens, row-major."""
    out: np.ndarray = np.full(real.shape, fill, dtype=dtype)
    out[real] = values
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
    uniq, sample_of = np.unique(segments.sample, return_inverse=True)
    found = _fetch(tokens, uniq, loss_mask)
    _check_lengths(segments, found.length[sample_of])

    # Rows are filled from position 0, so real tokens are a prefix of each row and
    # the unpadded token stream is the row-major order of ``real``.
    used = np.bincount(segments.row, weights=segments.length, minlength=rows).astype(np.int64)
    real = np.arange(width)[None, :] < used[:, None]
    # Per token: one gather for the ids, the rest are repeats and prefix writes.
    step = np.arange(int(segments.length.sum()), dtype=np.int64)
    stream = found.values[_token_index(segments, found.base[sample_of], step)]
    dtype = np.dtype(dtype)
    if stream.size and not np.can_cast(stream.dtype, dtype):
        check_fits("input_ids", stream, dtype)
    token_mask = None
    if found.mask_values is not None and found.mask_base is not None:
        token_mask = found.mask_values[_token_index(segments, found.mask_base[sample_of], step)]
    targets = _targets(
        stream, segments, token_mask, shift_labels=shift_labels, ignore_index=ignore_index
    )
    # Segments are numbered 1, 2, ... inside each row.
    row_first_seg = np.searchsorted(segments.row, np.arange(rows), side="left")
    number_in_row = np.arange(segments.row.size, dtype=np.int64) - row_first_seg[segments.row] + 1
    cu_seqlens = np.zeros(segments.length.size + 1, dtype=np.int32)
    np.cumsum(segments.length, out=cu_seqlens[1:])
    out: dict[str, Any] = {
        "input_ids": _rows(real, stream, pad_id, dtype),
        "attention_mask": real.astype(dtype),
        "labels": _rows(real, targets, ignore_index, dtype),
        "position_ids": _rows(real, step - np.repeat(segments.first, segments.length), 0, dtype),
        "segment_ids": _rows(real, np.repeat(number_in_row, segments.length), 0, dtype),
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
