"""The ``hf`` output profile: packed batches in the form Hugging Face ``transformers`` models take.

A packed row holds several samples. transformers reads a 2D ``attention_mask``
as "every real token of the row may attend to every earlier one", so a packed
row needs, instead, one of:

- ``sdpa``: a 4D boolean block-causal ``attention_mask`` ``(rows, 1, L, L)``
  (True = attend), which transformers hands to ``scaled_dot_product_attention``
  as is;
- ``eager``: the same mask as an *additive* float mask (0 where a query may
  attend, a large negative number elsewhere, in the model's dtype), because the
  eager kernel adds the mask to the scores (a boolean mask added to scores
  masks nothing);
- ``flash_attention_2`` / ``flash_attention_3``: one flat row per batch (the
  real tokens, no padding) with ``cu_seq_lens_q/k`` and ``max_length_q/k``, as
  ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` emits them.

None of them depends on the caller passing ``use_cache=False``. A batch whose
rows hold one sample each keeps the ordinary 2D mask for ``sdpa``/``eager`` (it
is right there, and O(L) rather than O(L²)). Labels follow transformers'
convention (the model shifts); with ``shift_labels`` the shifted targets come
as ``shift_labels`` beside them, which transformers' loss uses instead of
shifting ``labels`` again. Every token column is int64, as transformers'
collators give them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from laden.collate.tokens import dense_segment_mask

__all__ = ["ATTN_IMPLEMENTATIONS", "MASK_DTYPES", "MASK_MIN", "hf_columns", "is_packed"]

#: The attention implementations the profile has a layout for.
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
#: Model dtypes an eager additive mask can be made for.
MASK_DTYPES = ("float32", "bfloat16", "float16")
#: The "masked" value of an additive mask per model dtype: the dtype's lowest
#: finite number, as transformers uses. numpy has no bfloat16: its mask is
#: float32 holding bfloat16's lowest value exactly, cast by the backend.
MASK_MIN: dict[str, float] = {
    "float32": float(np.finfo(np.float32).min),
    "float16": float(np.finfo(np.float16).min),
    "bfloat16": -3.3895313892515355e38,
}
_HOST_MASK_DTYPE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32}


def is_packed(row: np.ndarray, length: np.ndarray) -> bool:
    """Whether some row of a layout holds more than one (non-empty) segment."""
    rows = np.asarray(row)[np.asarray(length) > 0]
    return bool(rows.size) and bool((np.diff(rows) == 0).any())


def _shifted(labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """Per row, ``labels`` moved one token left: the target of token ``t`` is ``labels[t + 1]``.

    ``labels`` already hold ``ignore_index`` on every segment's first token, so
    a segment's last token gets no target and nothing crosses a boundary.
    """
    out = np.full_like(labels, ignore_index)
    out[..., :-1] = labels[..., 1:]
    return out


def hf_columns(
    arrays: dict[str, Any],
    *,
    packed: bool,
    attn_implementation: str,
    shift_labels: bool,
    ignore_index: int,
    mask_dtype: str = "float32",
) -> dict[str, Any]:
    """The columns a transformers model takes, from :func:`laden.collate.collate`'s output.

    :param arrays: collated with ``shift_labels=False`` (transformers' convention).
    :param packed: whether some row holds several segments (see :func:`is_packed`).
    :param attn_implementation: the model's ``config._attn_implementation``.
    :param shift_labels: also give ``shift_labels`` (targets already shifted).
    :param mask_dtype: the model's dtype, for the eager additive mask.
    """
    real = arrays["attention_mask"].astype(bool)
    out: dict[str, Any]
    if attn_implementation.startswith("flash_attention"):
        # One flat row of the real tokens, in row-major order: ``cu_seqlens`` already
        # counts exactly these tokens, so it is the row's ``cu_seq_lens``.
        out = {
            "input_ids": arrays["input_ids"][real][None],
            "labels": arrays["labels"][real][None],
            "position_ids": arrays["position_ids"][real][None],
            "cu_seq_lens_q": arrays["cu_seqlens"],
            "cu_seq_lens_k": arrays["cu_seqlens"],
            "max_length_q": int(arrays["max_seqlen"]),
            "max_length_k": int(arrays["max_seqlen"]),
        }
    else:
        out = {
            "input_ids": arrays["input_ids"],
            "labels": arrays["labels"],
            "position_ids": arrays["position_ids"],
        }
        if not packed:
            out["attention_mask"] = arrays["attention_mask"]
        else:
            allowed = dense_segment_mask(arrays["segment_ids"], causal=True)
            if attn_implementation == "eager":
                mask = np.zeros(allowed.shape, dtype=_HOST_MASK_DTYPE[mask_dtype])
                mask[~allowed] = MASK_MIN[mask_dtype]
                out["attention_mask"] = mask
            else:
                out["attention_mask"] = allowed
    if shift_labels:
        out["shift_labels"] = _shifted(out["labels"], ignore_index)
    return out
