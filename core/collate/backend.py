"""The base class of collating backends, and host arrays in the dtypes a backend hands over."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

from laden.batching import smallest_int
from laden.collate.hf import ATTN_IMPLEMENTATIONS, MASK_DTYPES, hf_columns, is_packed
from laden.collate.layout import BatchLayout
from laden.collate.tokens import IGNORE_INDEX, check_fits, collate
from laden.errors import ConfigError
from laden.records import Ragged
from laden.validators import one_of, optional, positive

__all__ = ["FIXED_DTYPES", "PROFILES", "CollatingBackend", "host_dtypes"]

#: Output profiles: ``laden`` (every column, safe for ``model(**batch)``) and ``hf``
#: (exactly the columns a Hugging Face transformers model takes).
PROFILES = ("laden", "hf")


@attrs.frozen(kw_only=True)
class CollatingBackend:
    """What the built-in backends share: collation settings, then ``convert``.

    Subclasses give ``name``, ``convert(arrays)`` (host arrays -> framework
    arrays) and ``as_numpy(value)`` (back, for the conformance check).

    :param pad_id: the token id of padding.
    :param ignore_index: the label of positions that are no target.
    :param shift_labels: labels already shifted to the next token (see
        :func:`laden.collate.collate`).
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
    :param profile: ``laden`` (default): every column above; on a packed batch
        (a row holding several segments) without the 2D ``attention_mask``,
        which transformers would read as "attend across the whole row", and,
        from :meth:`collate`, with ``use_cache = False`` so that
        ``model(**batch)`` on a transformers causal LM takes the segments from
        ``position_ids`` (eager and sdpa). ``hf``: exactly what transformers
        needs for ``attn_implementation`` (see :mod:`laden.collate.hf`).
    :param attn_implementation: with ``profile = "hf"``: ``sdpa`` (default),
        ``eager``, ``flash_attention_2`` or ``flash_attention_3``, as the
        model's ``attn_implementation``.
    :param mask_dtype: with ``profile = "hf"`` and ``eager``: the model's dtype
        (``float32``, ``bfloat16``, ``float16``), for the additive mask.
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
    profile: str = attrs.field(default="laden", validator=one_of(*PROFILES))
    attn_implementation: str = attrs.field(default="sdpa", validator=one_of(*ATTN_IMPLEMENTATIONS))
    mask_dtype: str = attrs.field(default="float32", validator=one_of(*MASK_DTYPES))

    def __attrs_post_init__(self) -> None:
        if self.profile != "hf":
            for name, default in (("attn_implementation", "sdpa"), ("mask_dtype", "float32")):
                if getattr(self, name) != default:
                    raise ConfigError(
                        f"applies only with profile 'hf' (profile is {self.profile!r})",
                        path=(name,),
                    )
        elif self.int_dtype == "int32":
            raise ConfigError(
                "profile 'hf' hands int64 token columns, as transformers' collators do; "
                "leave int_dtype at 'auto' (or 'int64')",
                path=("int_dtype",),
            )
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
        """The token columns' dtype: ``int_dtype``, ``auto`` resolved (int64 for ``hf``)."""
        if self.profile == "hf":
            return np.dtype(np.int64)
        if self.int_dtype != "auto":
            return np.dtype(self.int_dtype)
        top = self.vocab_size - 1 if self.vocab_size is not None else 0
        return smallest_int(top, self.pad_id, self.ignore_index)

    @property
    def wide(self) -> tuple[str, ...]:
        """The columns this backend hands over as int64 although ``token_dtype`` is narrower.

        Whatever ``int_dtype`` says: a framework whose losses need int64 targets
        (PyTorch, and so Hugging Face models) must never get narrower labels.
        """
        return self.wide_columns

    def host(
        self, layout: BatchLayout, tokens: Any, *, loss_mask: Ragged | None = None
    ) -> dict[str, Any]:
        """Collated host (numpy) arrays in this backend's dtypes and profile."""
        hf = self.profile == "hf"
        arrays = collate(
            layout,
            tokens,
            loss_mask=loss_mask,
            pad_id=self.pad_id,
            ignore_index=self.ignore_index,
            shift_labels=self.shift_labels and not hf,  # hf: both kinds of labels, below
            pad_to_multiple_of=self.pad_to_multiple_of,
            dense_mask=None if self.dense_mask == "none" or hf else self.dense_mask,
            dtype=self.token_dtype,
        )
        packed = is_packed(layout.row, layout.length)
        if hf:
            arrays = hf_columns(
                arrays,
                packed=packed,
                attn_implementation=self.attn_implementation,
                shift_labels=self.shift_labels,
                ignore_index=self.ignore_index,
                mask_dtype=self.mask_dtype,
            )
        elif packed:
            # A 2D mask on a packed row says "attend across the whole row" to
            # transformers; the real tokens are ``segment_ids > 0``.
            del arrays["attention_mask"]
        return host_dtypes(arrays, self.token_dtype, wide=self.wide)

    def collate(
        self, layout: BatchLayout, tokens: Any, *, loss_mask: Ragged | None = None
    ) -> Mapping[str, Any]:
        """Collate one batch and convert it to this backend's arrays.

        In the ``laden`` profile a packed batch also carries ``use_cache =
        False``: transformers takes packed rows from ``position_ids`` only
        without a cache, and creates one by default even in training.
        """
        out = self.convert(self.host(layout, tokens, loss_mask=loss_mask))
        if self.profile == "laden" and is_packed(layout.row, layout.length):
            out = {**out, "use_cache": False}
        return out

    def convert(self, arrays: Mapping[str, Any]) -> Mapping[str, Any]:
        raise NotImplementedError

    def as_numpy(self, value: Any) -> Any:
        raise NotImplementedError


#: Columns whose dtype is fixed by the consumer's contract, whatever ``int_dtype`` says:
#: flash-attention's varlen kernels take int32 cumulative sequence lengths, and
#: sample ids index datasets that may hold more than 2**31 samples.
FIXED_DTYPES: Mapping[str, np.dtype[Any]] = {
    "cu_seqlens": np.dtype(np.int32),
    "cu_seq_lens_q": np.dtype(np.int32),
    "cu_seq_lens_k": np.dtype(np.int32),
    "sample_ids": np.dtype(np.int64),
}


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
                check_fits(key, array, want)
            array = array.astype(want)
        out[key] = np.ascontiguousarray(array)
    return out
